"""The bench's floor agent, run for real: it speaks SPOP to the bench's load generator, answers
every NOTIFY with the agent's clean verdict, and ``hub_cost`` refuses a measurement whose answers
were wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import floor
from bench.scenarios import SCENARIOS
from tests.support.ports import free_port


def test_floor_agent_answers_every_transaction_and_is_measured(tmp_path: Path):
    """1. Start `python -m bench.floor_agent` and run 3,000 clean GET transactions (request and
       response) through `hub_cost`: enough for /proc's 10 ms CPU clock to tick several times
       (with the C decoder a floor transaction costs the hub ~40 us; 300 could read 0).
    2. Every ACK carried the clean verdict (else `hub_cost` raises), and the hub's CPU per
       transaction and the rate are measured, not zero."""
    port = free_port()
    process = floor.start_floor_agent(tmp_path, port)
    try:
        cost = floor.hub_cost(process.pid, port, 3000)
    finally:
        process.stop()
    assert cost["hub_us_per_tx"] > 0
    assert cost["process_us_per_tx"] >= cost["hub_us_per_tx"] * 0.5
    assert cost["tx_per_s"] > 0


def test_hub_cost_refuses_wrong_verdicts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """1. Make the load send attacks, which the floor agent (it inspects nothing) answers
       with fail=0.
    2. `hub_cost` raises instead of returning a figure measured on wrong answers."""
    monkeypatch.setattr(floor, "clean_get_plan", lambda _n: (SCENARIOS["attack_get"], False))
    port = free_port()
    process = floor.start_floor_agent(tmp_path, port)
    try:
        with pytest.raises(RuntimeError, match="bad answers"):
            floor.hub_cost(process.pid, port, 50)
    finally:
        process.stop()
