"""The SPOP server through REAL HAProxy 2.6, 2.8, 3.0 and 3.2 (issue 2).

The agent is ``tests/e2e/spop_test_agent.py`` (``AgentServer`` + a toy handler: ``fail`` = 1
when the path contains "attack") run as a subprocess; HAProxy runs ``haproxy-spop.cfg`` and
``spoe-spop.cfg`` from this folder, which copy every SPOE variable into a response header.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess
from tests.support.backend import BackendProcess
from tests.support.haproxy import HAPROXY_VERSIONS, HAProxy, start_haproxy
from tests.support.httpclient import concurrent_requests, request
from tests.support.ports import free_port
from tests.support.process import python_module_argv
from tests.support.stack import running_stack

pytestmark = pytest.mark.e2e

E2E_DIR = Path(__file__).parent
AGENT_BACKEND, AGENT_SERVER = "spoa-agents", "spoa1"


@dataclass
class Stack:
    haproxy: HAProxy
    agent: AgentProcess
    frontend_port: int


def test_agent(port: int, log_path: Path, unix_path: Path | None = None) -> AgentProcess:
    if unix_path is not None:
        argv = python_module_argv("tests.e2e.spop_test_agent", "--bind", f"unix://{unix_path}")
        return AgentProcess(argv, log_path=log_path, unix_path=unix_path, name="spop-test-agent")
    argv = python_module_argv("tests.e2e.spop_test_agent", "--bind", f"127.0.0.1:{port}")
    return AgentProcess(argv, log_path=log_path, port=port, name="spop-test-agent")


test_agent.__test__ = False  # type: ignore[attr-defined]  # a factory, not a test


@contextmanager
def spop_stack(
    version: str,
    workdir: Path,
    backend: BackendProcess,
    *,
    idle_timeout: str = "2m",
    agent_server_timeout: str = "3m",
    unix_socket: bool = False,
    agent: AgentProcess | None = None,
) -> Iterator[Stack]:
    """The test agent, then HAProxy ``version`` in front of ``backend``; both stopped after.
    ``idle_timeout`` is the SPOE `timeout idle` (≤3.0), ``agent_server_timeout`` the agents
    backend's `timeout server` (the idle lifetime in 3.1+, docs/protocol.md "HAProxy settings by
    version"). ``unix_socket``: the agent listens on a unix socket in ``workdir`` instead of TCP.
    ``agent``: another agent (built, not started) in place of the test agent, e.g. the CLI."""
    frontend_port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    if agent is None:
        unix_path = workdir / "agent.sock" if unix_socket else None
        agent = test_agent(free_port(), workdir / "agent.log", unix_path)
    haproxy = partial(
        start_haproxy,
        version,
        E2E_DIR / "haproxy-spop.cfg",
        workdir,
        substitutions={
            "FE_PORT": frontend_port,
            "BACKEND_PORT": backend.port,
            "AGENT_ADDR": agent.address,
            "PROCESSING_TIMEOUT": "3s",
            "IDLE_TIMEOUT": idle_timeout,
            "AGENT_SERVER_TIMEOUT": agent_server_timeout,
        },
        extra_files={"SPOE_CFG": E2E_DIR / "spoe-spop.cfg"},
        wait_ports=[frontend_port],
    )
    with running_stack([agent], haproxy) as running:
        yield Stack(running.haproxy, agent, frontend_port)


@pytest.fixture(
    scope="module", params=HAPROXY_VERSIONS, ids=[f"haproxy-{v}" for v in HAPROXY_VERSIONS]
)
def stack(request, http_backend, tmp_path_factory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp(f"spop-{request.param}")
    with spop_stack(request.param, workdir, http_backend) as running:
        running.haproxy.wait_for_server_status(AGENT_BACKEND, AGENT_SERVER, "UP")
        yield running


@pytest.fixture
def dump_on_failure(request, stack) -> Iterator[Stack]:
    """The module's stack; its configs and logs go to stderr if the test fails."""
    yield stack
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        stack.haproxy.dump()
        stack.agent.dump()


def test_clean_request_passes_and_attack_is_denied(dump_on_failure: Stack) -> None:
    """1. GET / → the agent answers fail=0 → 200 from the backend.
    2. GET /attack, /a/attack/b → fail=1 → 403; /foo?x=attack → 200 (path only).
    3. GET /crash → the handler raises → the server ACKs error=1003 → 500."""
    port = dump_on_failure.frontend_port
    ok = request(port, "/")
    assert (ok.status, ok.body) == (200, b"backend ok\n")
    assert ok.header("X-Coraza-Fail") == "0"
    assert ok.header("X-Coraza-Seen") == "coraza-req"
    assert ok.header("X-Coraza-Error") is None
    assert request(port, "/attack").status == 403
    assert request(port, "/a/attack/b").status == 403
    assert request(port, "/foo?x=attack").status == 200
    crashed = request(port, "/crash")
    assert crashed.status == 500
    assert crashed.header("X-Coraza-Error") == "1003"


def test_200_concurrent_requests_have_no_spoe_error(dump_on_failure: Stack) -> None:
    """1. 200 requests at once (every 5th an attack) with pipelining negotiated.
    2. Every answer is right (200 / 403), none carries X-Coraza-Error (set-on-error never
       fired), and HAProxy logged no `err=<n>` (the lines it did not drop, see below).
    3. Several NOTIFYs were in the handler at the same time (pipelining really happened)."""
    port = dump_on_failure.frontend_port
    paths = [f"/attack/{i}" if i % 5 == 0 else f"/ok/{i}" for i in range(200)]
    responses = concurrent_requests(port, paths)
    assert [r.status for r in responses] == [403 if "attack" in p else 200 for p in paths]
    assert [r.header("X-Coraza-Error") for r in responses] == [None] * 200
    concurrency = [int(r.header("X-Coraza-Concurrent") or 0) for r in responses]
    assert max(concurrency) > 1
    assert "pipelining=True" in dump_on_failure.agent.logs()
    lines = _wait_for_log_lines(dump_on_failure.haproxy, r'"GET /(ok|attack)/\d+ ', 200)
    assert [line for line in lines if re.search(r"err=\d", line)] == []


def test_spop_check_marks_agent_up(dump_on_failure: Stack) -> None:
    """`option spop-check`: HAProxy's health-check HELLO gets an AGENT-HELLO, so the stats
    socket shows the agent server UP with a passed layer-7 check, and the agent logged the
    healthcheck HELLO."""
    row = dump_on_failure.haproxy.wait_for_server_status(AGENT_BACKEND, AGENT_SERVER, "UP")
    # "* L7OK" while the next check runs
    assert row["check_status"].lstrip("* ") == "L7OK", row
    assert "healthcheck=True" in dump_on_failure.agent.logs()


@pytest.mark.parametrize("version", HAPROXY_VERSIONS)
def test_agent_down_fires_error_path_and_recovers_after_restart(
    version: str, http_backend: BackendProcess, tmp_path: Path
) -> None:
    """1. Agent up: / → 200.
    2. Agent stopped (SIGTERM, exit 0): the check marks it DOWN and / → 500 through
       HAProxy's set-on-error path (X-Coraza-Error set by HAProxy, not by us).
    3. Agent restarted on the same port: the check marks it UP; / → 200, /attack → 403."""
    with spop_stack(version, tmp_path, http_backend) as running:
        haproxy, agent, port = running.haproxy, running.agent, running.frontend_port
        haproxy.wait_for_server_status(AGENT_BACKEND, AGENT_SERVER, "UP")
        assert request(port, "/").status == 200
        assert agent.terminate() == 0
        haproxy.wait_for_server_status(AGENT_BACKEND, AGENT_SERVER, "DOWN")
        down = request(port, "/")
        assert down.status == 500
        assert int(down.header("X-Coraza-Error") or 0) > 0
        assert int(down.header("X-Coraza-Error") or 0) != 1003  # HAProxy's code, not ours
        agent.start()
        agent.wait_ready()
        haproxy.wait_for_server_status(AGENT_BACKEND, AGENT_SERVER, "UP")
        assert _eventually_status(port, "/", 200) == 200
        assert request(port, "/attack").status == 403


@pytest.mark.parametrize("version", ["2.6", "3.2"])
def test_agent_on_a_unix_socket(version: str, http_backend: BackendProcess, tmp_path: Path) -> None:
    """`bind: unix:///path` on the agent and the path on HAProxy's server line: the health check
    passes and verdicts arrive (/ → 200, /attack → 403)."""
    with spop_stack(version, tmp_path, http_backend, unix_socket=True) as running:
        running.haproxy.wait_for_server_status(AGENT_BACKEND, AGENT_SERVER, "UP")
        assert request(running.frontend_port, "/").status == 200
        assert request(running.frontend_port, "/attack").status == 403
        assert f"unix:{tmp_path / 'agent.sock'}" in running.agent.logs()


# ≤3.0 only: 3.2 keeps an idle SPOP connection in the server's idle pool well past `timeout
# server` (it leaves with the pool purge or a RST; the RST case is an integration test).
@pytest.mark.parametrize("version", ["2.6", "3.0"])
def test_haproxy_closing_idle_connections_is_routine(
    version: str, http_backend: BackendProcess, tmp_path: Path
) -> None:
    """1. `timeout idle 1s` in the SPOE agent section.
    2. After one request the agent connection idles: HAProxy closes it with
       HAPROXY-DISCONNECT 2 (docs/protocol.md "Disconnect"), which the agent answers.
    3. The agent logs that close at debug level only (no WARNING/ERROR line), and the next
       request opens a new connection and passes."""
    with spop_stack(
        version, tmp_path, http_backend, idle_timeout="1s", agent_server_timeout="1s"
    ) as running:
        agent, port = running.agent, running.frontend_port
        assert request(port, "/").status == 200
        deadline = time.monotonic() + 10
        closes = r"connection closed \(haproxy disconnect 2\)"
        while not re.search(closes, _stream_connection_lines(agent.logs())):
            assert time.monotonic() < deadline, agent.logs()
            time.sleep(0.2)
        assert not re.search(r" (WARNING|ERROR) ", agent.logs())
        assert request(port, "/again").status == 200


@pytest.mark.parametrize("version", ["2.6", "3.2"])
def test_sigterm_lets_the_inflight_request_finish(
    version: str, http_backend: BackendProcess, tmp_path: Path
) -> None:
    """1. GET /slow: its NOTIFY stays in the agent's handler for a second.
    2. SIGTERM meanwhile: the agent stops accepting, finishes that NOTIFY, ACKs it, sends
       AGENT-DISCONNECT 0 and exits 0.
    3. The slow request gets its verdict (200, fail=0), not HAProxy's error path."""
    with spop_stack(version, tmp_path, http_backend) as running:
        agent, port = running.agent, running.frontend_port
        with ThreadPoolExecutor(max_workers=1) as pool:
            slow = pool.submit(request, port, "/slow")
            deadline = time.monotonic() + 10
            while "/slow" not in _notified_paths(agent.logs()):
                assert time.monotonic() < deadline, agent.logs()
                time.sleep(0.05)
            agent.send_signal(signal.SIGTERM)
            response = slow.result(timeout=10)
        assert agent.wait(10) == 0
        assert (response.status, response.header("X-Coraza-Fail")) == (200, "0")
        assert "stopped listening" in agent.logs()


def _notified_paths(logs: str) -> str:
    # the toy agent logs "slow notify path=..." when a slow NOTIFY enters its handler
    return "\n".join(line for line in logs.splitlines() if "notify path=" in line)


def _stream_connection_lines(logs: str) -> str:
    # only the connections that carried traffic: their HELLO was not a health check (those
    # open and close every 500 ms) and they had one (wait_ready's probe has none)
    streams = {m.group(1) for m in re.finditer(r"'peer': '([^']+)'.*healthcheck=False", logs)}
    return "\n".join(
        line for line in logs.splitlines() if any(f"'peer': '{peer}'" in line for peer in streams)
    )


def _wait_for_log_lines(haproxy: HAProxy, pattern: str, count: int) -> list[str]:
    """The log lines matching ``pattern`` once ``count`` of them were written or dropped.

    HAProxy writes a request's log line after the response (so poll), and drops a line rather
    than wait when threads contend for the log output: its `show info` DroppedLogs counts
    those (any line), so between ``count`` - dropped and ``count`` lines must be there."""
    deadline = time.monotonic() + 10.0
    while True:
        lines = [line for line in haproxy.logs().splitlines() if re.search(pattern, line)]
        dropped = _dropped_logs(haproxy)
        if len(lines) + dropped >= count or time.monotonic() > deadline:
            # dropped also counts other lines (≤3.0 logs one SPOE line per event)
            assert count - dropped <= len(lines) <= count, f"{len(lines)} lines, {dropped} dropped"
            return lines
        time.sleep(0.05)


def _dropped_logs(haproxy: HAProxy) -> int:
    match = re.search(r"^DroppedLogs: (\d+)", haproxy.command("show info"), re.MULTILINE)
    return int(match.group(1)) if match else 0


def _eventually_status(port: int, path: str, wanted: int, timeout: float = 10.0) -> int:
    # Right after an agent restart the first request may still fail (docs/protocol.md "What HAProxy
    # sends").
    deadline = time.monotonic() + timeout
    status = request(port, path).status
    while status != wanted and time.monotonic() < deadline:
        time.sleep(0.2)
        status = request(port, path).status
    return status
