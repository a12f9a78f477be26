"""2,000 mixed requests at concurrency 64 through real HAProxy 3.2 with the shipped files:
every verdict right, 0 SPOE errors, 0 agent errors, every transaction closed.

Reports timings; asserts only correctness (no timed assertions)."""

from __future__ import annotations

import random
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.waf_stack import final_counts, waf_stack
from tests.support.httpclient import request

pytestmark = pytest.mark.e2e

TOTAL = 2000
CONCURRENCY = 64
HEADERS = {"host": "localhost", "user-agent": "e2e-load/1.0", "accept": "*/*"}
FORM = {**HEADERS, "content-type": "application/x-www-form-urlencoded"}

# (kind, method, path, body, headers, expected status)
CASES = [
    ("clean", "GET", "/", None, HEADERS, 200),
    ("clean-post", "POST", "/form", b"name=alice&city=paris", FORM, 200),
    ("lfi", "GET", "/?p=/etc/passwd", None, HEADERS, 403),
    ("xss", "GET", "/?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E", None, HEADERS, 403),
    ("sqli-post", "POST", "/login", b"user=admin%27+OR+%271%27%3D%271%27--", FORM, 403),
    ("leak", "GET", "/leak", None, HEADERS, 403),
    ("redirect", "GET", "/e2e-redirect", None, HEADERS, 302),
]


def test_2000_mixed_requests_at_concurrency_64(tmp_path):
    rng = random.Random(2000)
    plan = [rng.choice(CASES) for _ in range(TOTAL)]

    with waf_stack("3.2", tmp_path) as stack:
        stack.haproxy.wait_for_server_status("coraza-spoa", "coraza-agent", "UP")

        def send(index: int) -> tuple[int, int, str]:
            kind, method, path, body, headers, _ = plan[index]
            sep = "&" if "?" in path else "?"
            response = request(
                stack.frontend_port, f"{path}{sep}load={index}", method=method, body=body,
                headers=headers, timeout=30,
            )  # fmt: skip
            return index, response.status, kind

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
            results = list(pool.map(send, range(TOTAL)))
        elapsed = time.monotonic() - started

        wrong = [(i, kind, status) for i, status, kind in results if status != plan[i][5]]
        assert wrong == [], f"{len(wrong)} wrong verdicts, first: {wrong[:10]}"

        # HAProxy logs one line per request; the `error` variable is set by HAProxy's SPOE
        # failures (timeouts, ...) and by our codes: none may appear
        deadline = time.monotonic() + 10
        while True:
            lines = [
                line
                for line in stack.haproxy.logs().splitlines()
                if "load=" in line and "] web " in line  # the frontend, not the demo app
            ]
            if len(lines) >= TOTAL or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        # HAProxy drops a log line now and then when its threads compete for the log output
        # (it counts them: DroppedLogs); a dropped line is not a lost request: every response
        # status was checked above, and an `error` would have made it a 500
        found = re.search(r"^DroppedLogs: (\d+)$", stack.haproxy.command("show info"), re.M)
        assert found, "no DroppedLogs in show info"
        dropped = int(found.group(1))
        assert len(lines) >= TOTAL - dropped, (len(lines), dropped)
        assert len(lines) > TOTAL * 0.95, len(lines)  # the check below has lines to look at
        errors = [line for line in lines if not re.search(r" error=-$", line)]
        assert errors == [], errors[:5]
        assert "answered with error" not in stack.agent.logs()

        assert stack.agent.terminate() == 0
        counts = final_counts(stack.agent)
        assert counts["opened"] == counts["closed"] == TOTAL, counts
        assert counts["shed"] == 0 and counts["open"] == 0, counts
        sys.stderr.write(
            f"\n{TOTAL} requests at concurrency {CONCURRENCY}: {elapsed:.1f} s,"
            f" {TOTAL / elapsed:.0f} req/s\n"
        )
