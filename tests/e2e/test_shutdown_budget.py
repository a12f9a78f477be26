"""Shutdown keeps to ``graceful_timeout_s`` however long the open transactions take to close
(issue 15: SIGTERM with 100 k open transactions took 18.6 s against a 10 s budget).

Each open transaction's close runs its logging phase, where a phase-5 rule blocks in
tests/data/rules/wait_for_fifo.sh until nobody writes its FIFO (20 s): without the budget the
agent would need minutes to exit. With ``graceful_timeout_s: 2`` it must exit 0 within the
budget plus the process's own start-up of shutdown, saying how many closes it left undone."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.support.agent import cli_agent
from tests.support.ports import free_port
from tests.support.spop_client import SpopClient, message

pytestmark = pytest.mark.e2e

RULES_DIR = Path(__file__).resolve().parents[1] / "data" / "rules"
OPEN = 6
BUDGET_S = 2


def test_sigterm_with_slow_closes_exits_within_graceful_timeout(tmp_path: Path) -> None:
    fifo = tmp_path / "gate.fifo"
    os.mkfifo(fifo)
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(
        f"bind: 127.0.0.1:{port}\n"
        f"graceful_timeout_s: {BUDGET_S}\n"
        "engine_threads: 2\n"
        "applications:\n"
        "  - name: app\n"
        "    response_check: true\n"
        "    directives: |\n"
        "      SecRuleEngine On\n"
        f'      SecRule ARGS:fifo "@inspectFile {RULES_DIR / "wait_for_fifo.sh"}" '
        '"id:1,phase:5,pass,log"\n'
    )
    with cli_agent(config, port=port, log_path=tmp_path / "agent.log") as agent:
        agent.wait_ready(timeout=30)
        client = SpopClient.connect(("127.0.0.1", port), green=False, timeout=10)
        client.hello()
        for number in range(1, OPEN + 1):
            request = message(
                "coraza-req", app="app", id=f"open-{number}", method="GET", path="/",
                query=f"fifo={fifo}", version="1.1", headers="host: x\r\n\r\n", body=b"",
            )  # fmt: skip
            client.notify(number, 1, [request])
            assert client.read_ack()[0] == number  # its transaction stays open
        client.close()
        started = time.monotonic()
        assert agent.terminate(timeout=30) == 0
        took = time.monotonic() - started
        logs = agent.logs()
    assert took < BUDGET_S + 3, logs
    assert f"closed {OPEN} open transaction(s) at shutdown" in logs
    assert "graceful_timeout_s (2.0s) reached:" in logs and "not run" in logs
