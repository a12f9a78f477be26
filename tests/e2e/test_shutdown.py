"""Shutdown through a real HAProxy running the shipped etc/haproxy files (issue 4): SIGTERM under
load exits 0 after draining, logs every open transaction and the final counters; SIGINT too.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.lifecycle_stack import (
    CLOSED_AT_SHUTDOWN,
    FINAL_COUNTS,
    RULES_V1,
    final_counts,
    lifecycle_stack,
    per_process,
    traffic,
)

pytestmark = pytest.mark.e2e


# 2.6: the applet SPOE engine; 3.2: the SPOP multiplexer (docs/protocol.md "What HAProxy sends");
# 2 workers: the master forwards the signal, each worker drains and logs its own counters
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("version", ["2.6", "3.2"])
def test_sigterm_under_load_drains_logs_every_open_transaction_and_exits_0(
    tmp_path: Path, version: str, workers: int
) -> None:
    """1. Traffic from 4 clients: fast clean and blocked requests, and slow ones whose
    response comes 1.5 s later (their transactions stay open, waiting for the response).
    2. SIGTERM after 3 s. Result: the agent exits 0 within its grace period; every HTTP
    request got an HTTP answer (HAProxy fails closed with 500 once the agent is gone, never
    a hang or a reset); everything finished before the signal was judged right; the final
    line says opened == closed with nothing open, and the slow requests' open transactions
    were closed (logging phase) at shutdown."""
    audit_log = tmp_path / "audit.log"
    # every transaction writes its audit entry in the logging phase (phase 5): the audit log
    # shows which transactions were really closed, not just counted
    audit = "SecAuditEngine On\nSecAuditLogParts ABZ\nSecAuditLogType Serial\n"
    audit += f"SecAuditLog {audit_log}\n"
    rules = RULES_V1 + audit
    with lifecycle_stack(tmp_path, version=version, rules=rules, workers=workers) as stack:
        paths = ["/", "/old-attack", "/page?delay_ms=1500", "/about"]
        outcomes, joiner = traffic(stack.frontend_port, paths, duration_s=6.0)
        time.sleep(3.0)
        signalled = time.monotonic()
        stack.agent.send_signal(signal.SIGTERM)
        code = stack.agent.wait(timeout=15)
        stopped_in = time.monotonic() - signalled
        joiner.join()

        assert code == 0, stack.agent_log()
        assert stopped_in < 5 + 2, "longer than graceful_timeout_s"  # the config says 5 s
        assert outcomes, "no traffic"
        assert [o for o in outcomes if o.error] == []
        assert {o.status for o in outcomes} <= {200, 403, 500}
        expected = {"/": 200, "/about": 200, "/old-attack": 403, "/page?delay_ms=1500": 200}
        finished_before = [o for o in outcomes if o.done_at < signalled]
        assert len(finished_before) > 20
        for outcome in finished_before:
            assert outcome.status == expected[outcome.path], outcome

        logs = stack.agent_log()
        assert logs.count("received SIGTERM, shutting down") == workers
        # each process's last counters: every worker drained and closed what it held
        assert len(per_process(logs, FINAL_COUNTS)) == workers, logs[-3000:]
        opened, closed, still_open = final_counts(logs)
        assert opened == closed and still_open == 0, logs[-3000:]
        assert opened >= len(finished_before)
        closed_at_shutdown = sum(n for (n,) in per_process(logs, CLOSED_AT_SHUTDOWN).values())
        assert closed_at_shutdown >= 1, "slow requests were waiting for their response"
        assert logs.count("coraza-spoa-py stopped (SIGTERM)") == workers
        last_line = logs.rstrip().splitlines()[-1]
        if workers > 1:
            assert f"master: stopped ({workers} worker(s) clean)" in last_line
        else:
            assert last_line.endswith("coraza-spoa-py stopped (SIGTERM)")
        # one audit entry (section A header) per transaction opened, pre-signal ones included
        entries = re.findall(r"(?m)^---\w+---A--$", audit_log.read_text())
        assert len(entries) == opened


def test_sigint_exits_0_and_haproxy_then_fails_closed(tmp_path: Path) -> None:
    """1. One request. 2. SIGINT (Ctrl+C). Result: exit 0 with the final counters; HAProxy
    marks the agent DOWN and answers 500 (fail closed), never lets a request through."""
    with lifecycle_stack(tmp_path) as stack:
        assert stack.get("/").status == 200
        stack.agent.send_signal(signal.SIGINT)
        assert stack.agent.wait(timeout=15) == 0
        logs = stack.agent_log()
        assert "received SIGINT, shutting down" in logs
        assert final_counts(logs) == (1, 1, 0)
        stack.haproxy.wait_for_server_status("coraza-spoa", "coraza-agent", "DOWN")
        assert stack.get("/").status == 500
