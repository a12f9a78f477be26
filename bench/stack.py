"""Start and always stop what a bench run needs: the agent (the real CLI on a bench config) and
HAProxy on the rendered shipped configuration, with HAProxy itself as the web server.

The start-up is the test harness's (``tests.support.stack.running_stack``, docs/development.md
"One stack start-up"): the same order, waits, teardown and failure dumps as the e2e tests, and
processes that are killed at exit even if the bench crashes. What is the bench's own is what it
runs: its agent config (``agent_config``) and its rendering of the shipped HAProxy files
(``haproxy_config``). This module measures nothing.
"""

from __future__ import annotations

import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench.agent_config import BENCH_DIRECTIVES, write_agent_config
from bench.haproxy_config import Ports, render_haproxy
from bench.scenarios import BROWSER_HEADERS, LEAK_PAGE, SCENARIOS, SMALL_PAGE
from tests.support.agent import AgentProcess
from tests.support.haproxy import PROJECT_ROOT, HAProxy, start_haproxy
from tests.support.ports import free_port
from tests.support.process import python_module_argv
from tests.support.shipped import SHIPPED_DIR
from tests.support.stack import running_stack as shared_running_stack

ROOT = PROJECT_ROOT
SHIPPED_HAPROXY_DIR = SHIPPED_DIR  # haproxy.cfg + coraza.cfg, what users run
# 2.6 from Debian 12: the CI baseline (docs/development.md "HAProxy versions")
DEFAULT_HAPROXY = "/usr/sbin/haproxy"
# loading CRS takes a few seconds, more while other work shares the two cores
AGENT_START_TIMEOUT_S = 120.0


@dataclass
class Stack:
    workdir: Path
    ports: Ports
    agent: AgentProcess
    haproxy: HAProxy

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.frontend}"

    def log_offset(self) -> int:
        """Where HAProxy's output ends now: pass it to ``log_lines_since`` after a run."""
        self.haproxy.logs()  # flushes our side of the file
        return self.haproxy.log_path.stat().st_size

    def log_lines_since(self, offset: int, settle_s: float = 0.5) -> list[str]:
        time.sleep(settle_s)  # HAProxy writes the log line after the response is sent
        with open(self.haproxy.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("latin-1").splitlines()


def probe_status(stack: Stack, path: str) -> int:
    """Status of one GET with the browser headers (used to prove response bodies are seen)."""
    request = urllib.request.Request(
        stack.url + path,
        headers={k.decode(): v.decode() for k, v in BROWSER_HEADERS if k != b"connection"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def write_pages(folder: Path) -> Path:
    """The two bodies the bench web server answers with (see ``haproxy_config``)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "small.html").write_bytes(SMALL_PAGE)
    (folder / "big.html").write_bytes(SCENARIOS["response_50k"].response_body)
    (folder / "leak.html").write_bytes(LEAK_PAGE)
    return folder


def bench_agent(
    workdir: Path,
    port: int,
    *,
    directives: str,
    extra_config: dict[str, object] | None = None,
    transaction_ttl_ms: int = 60_000,
    log_level: str = "info",
    switch_interval_s: float | None = None,
    app_log_level: str | None = None,
    agent_args: tuple[str, ...] = (),
) -> AgentProcess:
    """The agent on a bench config, not started yet. No ``-workers``: the config's ``workers``
    (or the product's default) decides, as for a user."""
    config = write_agent_config(
        workdir,
        port=port,
        directives=directives,
        transaction_ttl_ms=transaction_ttl_ms,
        log_level=log_level,
        app_log_level=app_log_level,
        extra=extra_config,
    )
    argv = python_module_argv("coraza_spoa_py", "-config", str(config), *agent_args)
    if switch_interval_s is not None:
        # an experiment knob, not a product setting: the GIL switch interval decides how long
        # an engine thread returning from a cffi call waits while the hub runs Python. cffi is
        # imported before gevent patches _thread, so that its internal lock is a real one: with
        # a gevent lock an engine thread can hang in cffi's type cache (docs/performance.md)
        argv = [
            sys.executable,
            "-c",
            f"import runpy, sys, cffi; sys.setswitchinterval({switch_interval_s!r}); "
            f"sys.argv = ['coraza_spoa_py', '-config', {str(config)!r}]; "
            "runpy.run_module('coraza_spoa_py', run_name='__main__', alter_sys=True)",
        ]
    return AgentProcess(argv, log_path=workdir / "agent.out", port=port)


def start_agent(workdir: Path, port: int, cwd: Path | None = None, **options: Any) -> AgentProcess:
    """``bench_agent`` started and ready, for the modes without HAProxy; the caller stops it.
    ``cwd``: the tree whose code runs (``python -m`` puts it first on sys.path)."""
    agent = bench_agent(workdir, port, **options)
    if cwd is not None:
        agent.cwd = cwd
    agent.start()
    try:
        agent.wait_ready(timeout=AGENT_START_TIMEOUT_S)
    except BaseException:
        agent.dump()
        agent.stop()
        raise
    return agent


def bench_haproxy(
    workdir: Path, ports: Ports, binary: str, haproxy_dir: Path = SHIPPED_HAPROXY_DIR
) -> AbstractContextManager[HAProxy]:
    """HAProxy ``binary`` (a version, a path or a command on PATH: ``find_haproxy``) on the
    shipped config rendered for the bench (``haproxy_config``), started by the test harness's
    ``start_haproxy`` when entered."""
    spoe_path = workdir / "coraza.cfg"
    rendered = render_haproxy(
        (haproxy_dir / "haproxy.cfg").read_text(),
        (haproxy_dir / "coraza.cfg").read_text(),
        ports=ports,
        spoe_path=spoe_path,
        pages_dir=write_pages(workdir / "pages"),
    )
    spoe_path.write_text(rendered.spoe_cfg)
    template = workdir / "bench-haproxy.cfg"
    template.write_text(rendered.haproxy_cfg)
    return start_haproxy(binary, template, workdir, wait_ports=[ports.frontend])


@contextmanager
def running_stack(
    *,
    haproxy_binary: str = DEFAULT_HAPROXY,
    haproxy_dir: Path = SHIPPED_HAPROXY_DIR,
    directives: str = BENCH_DIRECTIVES,
    extra_config: dict[str, object] | None = None,
    log_level: str = "info",
    keep_dir: Path | None = None,
    switch_interval_s: float | None = None,
    agent_args: tuple[str, ...] = (),
    agent_cwd: Path | None = None,
) -> Iterator[Stack]:
    """Agent + HAProxy up for the block (``tests.support.stack.running_stack``); both stopped
    after it, whatever happens. ``agent_cwd``: the tree whose agent code runs (``start_agent``),
    this one by default."""
    with ExitStack() as stack:
        if keep_dir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        else:
            keep_dir.mkdir(parents=True, exist_ok=True)
            workdir = keep_dir
        ports = Ports(frontend=free_port(), agent=free_port(), backend=free_port())
        agent = bench_agent(
            workdir,
            ports.agent,
            directives=directives,
            extra_config=extra_config,
            log_level=log_level,
            switch_interval_s=switch_interval_s,
            agent_args=agent_args,
        )
        if agent_cwd is not None:
            agent.cwd = agent_cwd.resolve()
        running = stack.enter_context(
            shared_running_stack(
                [agent],
                partial(bench_haproxy, workdir, ports, haproxy_binary, haproxy_dir),
                agent_ready_timeout=AGENT_START_TIMEOUT_S,
            )
        )
        yield Stack(workdir, ports, agent, running.haproxy)
