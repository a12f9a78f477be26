"""The agent as a subprocess: ``python -m coraza_spoa_py -config <file>`` (or any agent module),
waited for on its port, stopped with SIGTERM, output captured.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.haproxy import PROJECT_ROOT
from tests.support.httpclient import request
from tests.support.ports import wait_for_port, wait_for_unix_socket
from tests.support.process import ManagedProcess, python_module_argv


class AgentProcess(ManagedProcess):
    """An agent listening on ``host:port`` (TCP) or on ``unix_path``."""

    def __init__(
        self,
        argv: list[str],
        *,
        log_path: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        unix_path: Path | None = None,
        name: str = "agent",
        env: dict[str, str] | None = None,
    ) -> None:
        assert (port is None) != (unix_path is None), "give exactly one of port / unix_path"
        self.host = host
        self.port = port
        self.unix_path = unix_path
        super().__init__(name, argv, log_path=log_path, cwd=PROJECT_ROOT, env=env)

    @property
    def address(self) -> str:
        """For HAProxy's ``server`` line: "127.0.0.1:9000", "[::1]:9000" or the unix socket's
        absolute path (HAProxy reads an address starting with "/" as a unix socket)."""
        if self.unix_path is not None:
            return str(Path(self.unix_path).resolve())
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def wait_ready(self, timeout: float = 20.0) -> AgentProcess:
        """Wait until the agent accepts connections (fails at once if it exits)."""
        if self.unix_path is not None:
            wait_for_unix_socket(self.unix_path, timeout=timeout, process=self)
        else:
            assert self.port is not None
            wait_for_port(self.host, self.port, timeout=timeout, process=self)
        return self

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the graceful stop) and wait; returns the exit status."""
        return self.stop(timeout=timeout, sig=signal.SIGTERM)

    def restart(self, timeout: float = 20.0) -> AgentProcess:
        """Stop (SIGTERM) and start again with the same command, port and log file."""
        self.terminate()
        self.popen = None
        self.start()
        return self.wait_ready(timeout)


# the product's default is one worker per core (docs/operations.md "Workers")
ONE_PROCESS = ("-workers", "1")


def cli_agent(
    config_path: Path,
    *,
    port: int | None = None,
    unix_path: Path | None = None,
    log_path: Path,
    extra_args: tuple[str, ...] = (),
) -> AgentProcess:
    """The product: ``python -m coraza_spoa_py -config <config_path>`` (not started yet).

    ``port``/``unix_path`` must match the ``bind`` in the config; it is what ``wait_ready``
    polls. One process (``-workers 1``) unless ``extra_args`` says ``-workers``: the default
    is the core count, and a test must not depend on the machine it runs on.
    """
    workers = () if "-workers" in extra_args else ONE_PROCESS
    argv = python_module_argv("coraza_spoa_py", "-config", str(config_path), *workers, *extra_args)
    return AgentProcess(
        argv, log_path=log_path, port=port, unix_path=unix_path, name="coraza-spoa-py"
    )


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` in a /metrics text."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(port: int) -> str:
    response = request(port, "/metrics")
    assert response.status == 200
    return response.body.decode()


# every worker loads its rules itself, several at once on a shared machine
WORKERS_READY_TIMEOUT_S = 90.0


class WorkersAgent(AgentProcess):
    """The product with ``-workers N -metrics-addr``: ``wait_ready`` waits until every worker is
    ready (the master's ``coraza_spoa_py_workers{state="ready"}``: the first worker ready
    accepts every connection until the others serve), so ``running_stack`` starts HAProxy in
    front of all of them."""

    def __init__(self, argv: list[str], *, metrics_port: int, workers: int, **options: Any):
        super().__init__(argv, **options)
        self.metrics_port = metrics_port
        self.workers = workers

    def wait_ready(self, timeout: float = WORKERS_READY_TIMEOUT_S) -> WorkersAgent:
        deadline = time.monotonic() + timeout
        super().wait_ready(timeout=timeout)
        wait_for_port("127.0.0.1", self.metrics_port, timeout=timeout, process=self)
        ready = scrape(self.metrics_port)
        while metric_sum(ready, "coraza_spoa_py_workers", state="ready") != self.workers:
            assert time.monotonic() < deadline, f"{self.workers} workers not ready"
            self.raise_if_exited()
            time.sleep(0.1)
            ready = scrape(self.metrics_port)
        return self


def cli_workers_agent(
    config_path: Path, *, port: int, metrics_port: int, log_path: Path, workers: int = 2
) -> WorkersAgent:
    """``cli_agent`` with ``-workers N -metrics-addr`` (not started yet)."""
    args = ("-workers", str(workers), "-metrics-addr", f"127.0.0.1:{metrics_port}")
    argv = python_module_argv("coraza_spoa_py", "-config", str(config_path), *args)
    return WorkersAgent(
        argv,
        metrics_port=metrics_port,
        workers=workers,
        log_path=log_path,
        port=port,
        name="coraza-spoa-py",
    )


@contextmanager
def workers_agent(
    config_path: Path, *, port: int, metrics_port: int, log_path: Path, workers: int = 2
) -> Iterator[WorkersAgent]:
    """``cli_workers_agent`` started, yielded once every worker is ready."""
    agent = cli_workers_agent(
        config_path, port=port, metrics_port=metrics_port, log_path=log_path, workers=workers
    )
    with agent:
        yield agent.wait_ready()
