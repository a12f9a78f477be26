"""sweeper.Sweeper: every sweep expires transactions and flushes the logs, and every
HEAP_TRIM_EVERY_SWEEPS-th one gives the freed heap back (waf.trim_heap) on a pool thread,
never two trims at once. A stub agent and a fast clock; the trim itself is tested in
tests/integration/test_waf_threads.py."""

from __future__ import annotations

import time
from typing import Any

import gevent
import gevent.threadpool
import pytest

from coraza_spoa_py import engine as waf
from coraza_spoa_py import sweeper as sweeper_module


class _SweepCounter:
    def __init__(self) -> None:
        self.sweeps = 0

    def sweep(self) -> int:
        self.sweeps += 1
        return 0


def _run_sweeper(
    monkeypatch: pytest.MonkeyPatch, trim: Any, sweeps: int
) -> tuple[_SweepCounter, list[float]]:
    monkeypatch.setattr(sweeper_module, "SWEEP_INTERVAL_S", 0.005)
    trims: list[float] = []

    def counted_trim() -> bool:
        trims.append(time.monotonic())
        trim()
        return True

    monkeypatch.setattr(waf, "trim_heap", counted_trim)
    agent = _SweepCounter()
    pool = gevent.threadpool.ThreadPool(1)
    sweeper = sweeper_module.Sweeper(agent, pool)
    running = gevent.spawn(sweeper.run)
    try:
        deadline = time.monotonic() + 10
        while agent.sweeps < sweeps:
            assert time.monotonic() < deadline, "the sweeper stopped sweeping"
            gevent.sleep(0.005)
        if sweeper.heap_trim is not None:
            sweeper.heap_trim.join(timeout=5)
    finally:
        running.kill()
        pool.kill()
    return agent, trims


def test_the_heap_is_trimmed_every_other_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    agent, trims = _run_sweeper(monkeypatch, lambda: None, sweeps=20)
    assert sweeper_module.HEAP_TRIM_EVERY_SWEEPS == 2
    assert agent.sweeps // 2 - 1 <= len(trims) <= agent.sweeps // 2


def test_a_slow_trim_is_not_doubled_and_does_not_hold_up_the_sweeps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trim that takes 30 sweep intervals (it waits for malloc's locks on a pool thread):
    the sweeps go on meanwhile, and no second trim starts until it is done."""
    agent, trims = _run_sweeper(monkeypatch, lambda: time.sleep(0.15), sweeps=30)
    assert agent.sweeps >= 30
    assert 1 <= len(trims) <= 2
    assert all(later - earlier >= 0.15 for earlier, later in zip(trims, trims[1:], strict=False))
