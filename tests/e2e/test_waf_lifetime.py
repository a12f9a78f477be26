"""No transaction leaks through real HAProxy (3.2): requests answered with and without a
response phase, TTL expiry and ``transaction_active_limit`` eviction; every transaction the
agent opened is closed, as its final "transactions opened=N closed=N ..." line says."""

from __future__ import annotations

import time

import pytest

from tests.e2e.waf_stack import final_counts, nonce, waf_stack
from tests.support.httpclient import request

pytestmark = pytest.mark.e2e

HEADERS = {"host": "localhost", "user-agent": "e2e-test/1.0", "accept": "*/*"}
DETECT_TTL_MS = 1000
DETECT_LIMIT = 5


def test_every_transaction_is_closed_by_response_expiry_eviction_or_shutdown(tmp_path):
    """1. 10 clean requests on sample_app: closed when their response is inspected
    2. 3 blocked requests: closed at once
    3. 12 requests on detect_app, which never gets a response message (limit 5): 7 evicted
    4. wait past the TTL: the 5 left expire (the sweeper runs every second)
    5. 3 more on detect_app, still open at SIGTERM: closed by the shutdown
    Result: opened == closed == 28, evicted + expired == 12, both > 0, nothing open."""
    with waf_stack(
        "3.2",
        tmp_path,
        detect_app={"transaction_ttl_ms": DETECT_TTL_MS, "transaction_active_limit": DETECT_LIMIT},
    ) as stack:
        stack.haproxy.wait_for_server_status("coraza-spoa", "coraza-agent", "UP")
        for _ in range(10):
            tag = nonce()
            assert request(stack.frontend_port, f"/?t={tag}", headers=HEADERS).status == 200
            assert stack.waf_log(tag)["error"] == "-"
        for _ in range(3):
            path = f"/?p=/etc/passwd&t={nonce()}"
            assert request(stack.frontend_port, path, headers=HEADERS).status == 403
        for _ in range(12):
            assert request(stack.detect_port, f"/?t={nonce()}", headers=HEADERS).status == 200
        time.sleep(DETECT_TTL_MS / 1000 + 1.5)
        for _ in range(3):
            assert request(stack.detect_port, f"/?t={nonce()}", headers=HEADERS).status == 200
        assert stack.agent.terminate() == 0
        counts = final_counts(stack.agent)
        assert counts["opened"] == counts["closed"] == 28, counts
        assert counts["evicted"] + counts["expired"] == 12, counts
        assert counts["evicted"] >= 1 and counts["expired"] >= 1, counts
        assert counts["open"] == 0 and counts["shed"] == 0, counts
        assert "transaction_active_limit reached" in stack.agent.logs()
