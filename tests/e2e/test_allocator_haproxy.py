"""The agent behind real HAProxy 2.6 runs on jemalloc (docs/operations.md "Memory allocator"):
started as users start it, it re-executes itself once with the library preloaded, keeps its
pid (HAProxy's server and the test's process handle still point at it), says so in its start
line, and judges requests as before. ``CORAZA_SPOA_ALLOCATOR=system`` keeps the C
library's allocator, with the same verdicts."""

from __future__ import annotations

from pathlib import Path

import pytest

from coraza_spoa_py.allocator import ALLOCATOR_ENV, PRELOADED_ENV, mapped_allocator
from tests.e2e.waf_stack import WafStack, nonce, waf_stack
from tests.support.httpclient import request

pytestmark = pytest.mark.e2e

HAPROXY_VERSION = "2.6"
HEADERS = {"host": "localhost", "user-agent": "e2e-test/1.0", "accept": "*/*"}


def _jemalloc_of(pid: int) -> str | None:
    return mapped_allocator(f"/proc/{pid}/maps")


def _environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {key.decode(): value.decode(errors="replace") for key, _, value in pairs}


def _start_line(stack: WafStack) -> str:
    (line,) = [
        line for line in stack.agent.logs().splitlines() if " starting coraza-spoa-py " in line
    ]
    return line


def _judges_requests(stack: WafStack) -> None:
    tag = nonce()
    assert request(stack.frontend_port, f"/?t={tag}", headers=HEADERS).status == 200
    assert stack.waf_log(tag)["error"] == "-"
    attack = f"/?p=/etc/passwd&t={nonce()}"
    assert request(stack.frontend_port, attack, headers=HEADERS).status == 403


def test_the_agent_reexecutes_with_jemalloc_and_keeps_its_pid(tmp_path, monkeypatch):
    """1. Start the agent as users do (no allocator variable) with HAProxy in front.
    Result: the very process the test started (same pid) has libjemalloc mapped and the
    preload in its environment, its start line says "memory allocator: jemalloc (...)".
    2. A clean GET and an attack through HAProxy. Result: 200 and 403."""
    monkeypatch.delenv(ALLOCATOR_ENV, raising=False)
    monkeypatch.delenv(PRELOADED_ENV, raising=False)
    with waf_stack(HAPROXY_VERSION, tmp_path) as stack:
        pid = stack.agent.pid
        jemalloc = _jemalloc_of(pid)
        assert jemalloc is not None, "the agent does not run on jemalloc"
        environment = _environment(pid)
        assert environment[PRELOADED_ENV] == jemalloc
        assert environment["LD_PRELOAD"].split(":")[0] == jemalloc
        assert _start_line(stack).endswith(f"; memory allocator: jemalloc ({jemalloc})")
        _judges_requests(stack)


def test_system_keeps_the_c_library_allocator(tmp_path, monkeypatch):
    """``CORAZA_SPOA_ALLOCATOR=system``: no jemalloc mapped, no preload, the start line says
    why; the same verdicts through HAProxy."""
    monkeypatch.setenv(ALLOCATOR_ENV, "system")
    monkeypatch.delenv(PRELOADED_ENV, raising=False)
    with waf_stack(HAPROXY_VERSION, tmp_path) as stack:
        pid = stack.agent.pid
        assert _jemalloc_of(pid) is None
        assert PRELOADED_ENV not in _environment(pid)
        assert _start_line(stack).endswith(
            f"; memory allocator: the C library's ({ALLOCATOR_ENV}=system)"
        )
        _judges_requests(stack)


def test_a_misspelled_choice_is_warned_about_and_the_agent_still_serves(tmp_path, monkeypatch):
    """``CORAZA_SPOA_ALLOCATOR=jemaloc``: the agent starts on the C library's allocator, its
    start line says why and a warning names the variable and its value; verdicts as ever."""
    monkeypatch.setenv(ALLOCATOR_ENV, "jemaloc")
    monkeypatch.delenv(PRELOADED_ENV, raising=False)
    with waf_stack(HAPROXY_VERSION, tmp_path) as stack:
        assert _jemalloc_of(stack.agent.pid) is None
        problem = f"{ALLOCATOR_ENV}='jemaloc' is not one of ('jemalloc', 'system')"
        assert _start_line(stack).endswith(f"; memory allocator: the C library's ({problem})")
        warnings = [line for line in stack.agent.logs().splitlines() if " WRN " in line]
        assert any(f"{problem}: running on the C library's allocator" in w for w in warnings)
        _judges_requests(stack)
