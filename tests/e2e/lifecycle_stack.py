"""The reload and shutdown e2e stack: the agent (``python -m coraza_spoa_py -config``), a real
HAProxy running the SHIPPED etc/haproxy/haproxy.cfg + coraza.cfg (only its fixed ports, the
agent's check interval and the coraza.cfg path rewritten by ``tests.support.shipped``, so drift
in the shipped files shows up here, docs/development.md "Shipped files, not copies"), and a slow
backend (``python -m tests.e2e.lifecycle_stack --port N``) whose responses can be delayed
(``?delay_ms=N``) and can carry ``X-Leak: yes`` (``?leak=1``) for a response-phase rule.

Rule files are tiny and deterministic: v1 blocks paths with "old-attack" and responses with
``X-Leak: yes``; v2 blocks "new-attack" and has no response rule, so a 403 on a leaking response
after a reload proves the pre-reload transaction (old rules) inspected it.
"""

from __future__ import annotations

import argparse
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.support.agent import AgentProcess, cli_agent
from tests.support.haproxy import PROJECT_ROOT, HAProxy
from tests.support.httpclient import Response, request
from tests.support.ports import free_port, wait_for_port
from tests.support.process import ManagedProcess, python_module_argv
from tests.support.stack import shipped_stack

# the harness talks to HAProxy through this socket (server states)
STATS_SOCKET_LINE = "    stats socket ${STATS_SOCKET} mode 600 level admin"
# the shipped health check every 5 s would mark the agent DOWN only slowly; 500 ms is faster
AGENT_CHECK_INTERVAL = "500ms"

APP = "sample_app"  # what the shipped haproxy.cfg sets in txn.coraza.app

# the last line of every process that served (agent.Agent.close_all), and how the console log
# names a worker of several (runtime.Runtime.start: "worker=N")
FINAL_COUNTS = re.compile(r"transactions opened=(\d+) closed=(\d+) .* open=(\d+)")
CLOSED_AT_SHUTDOWN = re.compile(r"closed (\d+) open transaction\(s\) at shutdown")
WORKER_TAG = re.compile(r" worker=(\S+)$")

RULES_V1 = """\
SecRuleEngine On
SecRule REQUEST_URI "@contains old-attack" "id:10001,phase:1,deny,status:403,log,msg:'v1 rule'"
SecRule RESPONSE_HEADERS:X-Leak "@streq yes" "id:10002,phase:3,deny,status:403,log,msg:'leak'"
"""
RULES_V2 = """\
SecRuleEngine On
SecRule REQUEST_URI "@contains new-attack" "id:10003,phase:1,deny,status:403,log,msg:'v2 rule'"
"""
# line 2 has an action the engine does not know
RULES_BROKEN = """\
SecRuleEngine On
SecRule REQUEST_URI "@contains broken" "id:10004,phase:1,deny,no_such_action"
"""


def agent_config_text(port: int, *, rules_file: str = "rules.conf", extra: str = "") -> str:
    return (
        f"bind: 127.0.0.1:{port}\n"
        "log_level: info\n"
        "log_file: /dev/stdout\n"
        "log_format: console\n"
        f"default_application: {APP}\n"
        "graceful_timeout_s: 5\n"
        f"{extra}"
        "applications:\n"
        f"  - name: {APP}\n"
        "    directives: |\n"
        f"      Include {rules_file}\n"
        "    response_check: true\n"
        "    transaction_ttl_ms: 30000\n"
    )


class _SlowHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        query = parse_qs(urlsplit(self.path).query)
        delay_ms = int(query.get("delay_ms", ["0"])[0])
        if delay_ms:
            time.sleep(delay_ms / 1000)
        body = b"backend ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if query.get("leak") == ["1"]:
            self.send_header("X-Leak", "yes")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class SlowBackend(ManagedProcess):
    def __init__(self, port: int, log_path: Path) -> None:
        argv = python_module_argv("tests.e2e.lifecycle_stack", "--port", str(port))
        super().__init__("slow-backend", argv, log_path=log_path, cwd=PROJECT_ROOT)
        self.port = port


@dataclass
class Stack:
    workdir: Path
    agent: AgentProcess
    haproxy: HAProxy
    frontend_port: int
    config_path: Path
    rules_path: Path

    def get(self, path: str, timeout: float = 15.0) -> Response:
        return request(self.frontend_port, path, timeout=timeout)

    def agent_log(self) -> str:
        return self.agent.logs()

    def wait_for_log(self, text: str, *, count: int = 1, timeout: float = 30.0) -> str:
        """Poll the agent's output until ``text`` appears ``count`` times."""
        return self.agent.wait_for_log(text, count=count, timeout=timeout)

    def sighup(self) -> None:
        self.agent.send_signal(signal.SIGHUP)


@contextmanager
def lifecycle_stack(
    workdir: Path,
    *,
    version: str = "2.6",
    agent_args: tuple[str, ...] = (),
    config_path: Path | None = None,
    rules: str = RULES_V1,
    workers: int = 1,
) -> Iterator[Stack]:
    """Slow backend + agent + HAProxy ``version``; everything stopped on exit, logs dumped on
    failure. ``config_path`` (default workdir/config.yml) may be a symlink the test swaps.
    ``workers``: the agent's ``-workers`` (1, one process, unless the test says otherwise:
    the default is the core count, which differs between machines)."""
    workdir.mkdir(parents=True, exist_ok=True)
    agent_port, frontend_port, backend_port = free_port(), free_port(), free_port()
    rules_path = workdir / "rules.conf"
    rules_path.write_text(rules)
    if config_path is None:
        config_path = workdir / "config.yml"
        config_path.write_text(agent_config_text(agent_port))
    else:
        # the caller wrote it with a placeholder port
        text = config_path.read_text().replace("AGENT_PORT", str(agent_port))
        Path(config_path).resolve().write_text(text)
    with ExitStack() as stack:
        backend = stack.enter_context(SlowBackend(backend_port, workdir / "backend.log"))
        wait_for_port("127.0.0.1", backend_port, process=backend)
        agent = cli_agent(
            config_path,
            port=agent_port,
            log_path=workdir / "agent.log",
            extra_args=("-workers", str(workers), *agent_args),
        )
        running = stack.enter_context(
            shipped_stack(
                version,
                workdir,
                [agent],
                frontend_port=frontend_port,
                backend_port=backend_port,  # the demo app inside HAProxy is not used here
                agent_check_interval=AGENT_CHECK_INTERVAL,
                global_lines=[STATS_SOCKET_LINE],
            )
        )
        haproxy = running.haproxy
        haproxy.wait_for_server_status("coraza-spoa", "coraza-agent", "UP")
        yield Stack(workdir, agent, haproxy, frontend_port, config_path, rules_path)


def per_process(logs: str, pattern: re.Pattern[str]) -> dict[str, tuple[int, ...]]:
    """The numbers of ``pattern``'s last match in each process's lines: "" for the only
    process, "1", "2"... for the workers of a master (docs/architecture.md "Process model")."""
    found: dict[str, tuple[int, ...]] = {}
    for line in logs.splitlines():
        match = pattern.search(line)
        if match:
            tag = WORKER_TAG.search(line)
            found[tag.group(1) if tag else ""] = tuple(map(int, match.groups()))
    return found


def final_counts(logs: str) -> tuple[int, int, int]:
    """Transactions opened, closed and still open, summed over every process that served."""
    lines = per_process(logs, FINAL_COUNTS).values()
    opened, closed, still_open = (sum(values) for values in zip(*lines, strict=True))
    return opened, closed, still_open


@dataclass
class Outcome:
    path: str
    sent_at: float
    done_at: float
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""


def traffic(
    port: int,
    paths: list[str],
    *,
    duration_s: float,
    workers: int = 4,
    max_requests: int = 20_000,
) -> tuple[list[Outcome], threading.Thread]:
    """Start ``workers`` threads cycling through ``paths`` for ``duration_s`` (bounded in time
    and count); returns the shared outcome list and a thread to ``join()``."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    deadline = time.monotonic() + duration_s

    def worker(offset: int) -> None:
        index = offset
        while time.monotonic() < deadline and len(outcomes) < max_requests:
            path = paths[index % len(paths)]
            index += 1
            sent = time.monotonic()
            try:
                response = request(port, path, timeout=15)
                outcome = Outcome(path, sent, time.monotonic(), response.status, response.headers)
            except OSError as exc:
                outcome = Outcome(path, sent, time.monotonic(), error=repr(exc))
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(workers)]
    for thread in threads:
        thread.start()

    def join_all() -> None:
        for thread in threads:
            thread.join(duration_s + 30)

    joiner = threading.Thread(target=join_all, daemon=True)
    joiner.start()
    return outcomes, joiner


def main() -> None:
    parser = argparse.ArgumentParser(description="slow HTTP backend of the lifecycle e2e tests")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _SlowHandler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
