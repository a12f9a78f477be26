"""runtime.EngineScheduler with real native engine threads (unpatched interpreter): at most
``threads`` calls run at once, responses (urgent) overtake queued requests, errors reach the
caller, the moving average of engine time is kept, and threads stop on close."""

from __future__ import annotations

import threading

import gevent
import pytest

from coraza_spoa_py.runtime import EngineScheduler


@pytest.fixture
def one_thread():
    scheduler = EngineScheduler(1)
    yield scheduler
    scheduler.close()


def test_urgent_work_overtakes_queued_work_and_returns_results(one_thread):
    """1. one engine thread, blocked  2. queue two requests, then a response  3. unblock.
    Result: the response runs before both requests; every caller gets its own result."""
    scheduler = one_thread
    gate = threading.Event()  # unpatched here: the engine thread blocks without the hub
    order: list[str] = []

    def work(name: str):
        def run() -> str:
            if name == "blocker":
                gate.wait(10)
            order.append(name)
            return name.upper()

        return run

    blocker = gevent.spawn(scheduler, work("blocker"))
    gevent.sleep(0.05)
    req1 = gevent.spawn(scheduler, work("req1"))
    req2 = gevent.spawn(scheduler, work("req2"))
    res = gevent.spawn(scheduler.urgent, work("res"))
    gevent.sleep(0.05)
    assert scheduler.waiting == 3
    gate.set()
    gevent.joinall([blocker, req1, req2, res], timeout=10, raise_error=True)
    assert order == ["blocker", "res", "req1", "req2"]
    assert [g.value for g in (blocker, req1, req2, res)] == ["BLOCKER", "REQ1", "REQ2", "RES"]
    assert scheduler.waiting == 0


def peak_concurrency(scheduler: EngineScheduler, jobs: int) -> tuple[int, set[int]]:
    lock = threading.Lock()
    running, peak, idents = [0], [0], set()

    def work() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            idents.add(threading.get_ident())
        threading.Event().wait(0.03)
        with lock:
            running[0] -= 1

    greenlets = [gevent.spawn(scheduler, work) for _ in range(jobs)]
    gevent.joinall(greenlets, timeout=10, raise_error=True)
    return peak[0], idents


def test_work_runs_on_native_threads_at_most_threads_at_once_and_resize_changes_it():
    scheduler = EngineScheduler(2)
    try:
        peak, idents = peak_concurrency(scheduler, 8)
        assert peak == 2 and len(idents) == 2 and threading.get_ident() not in idents
        scheduler.resize(3)
        assert peak_concurrency(scheduler, 9)[0] == 3
        scheduler.resize(1)
        assert peak_concurrency(scheduler, 4)[0] == 1
    finally:
        scheduler.close()


def test_failing_work_raises_in_the_caller_and_frees_the_thread(one_thread):
    def boom() -> None:
        raise ValueError("engine")

    with pytest.raises(ValueError, match="engine"):
        one_thread(boom)
    assert one_thread(lambda: 7) == 7


def test_expected_wait_uses_the_measured_time_between_completions():
    ticks = iter(range(1000))
    scheduler = EngineScheduler(1, clock=lambda: next(ticks) * 0.01)  # 10 ms per reading
    try:
        gate = threading.Event()
        blocker = gevent.spawn(scheduler, lambda: gate.wait(10))
        gevent.sleep(0.05)
        queued = [gevent.spawn(scheduler, lambda: None) for _ in range(3)]
        gevent.sleep(0.05)
        assert scheduler.expected_wait_s() == 0.0  # nothing measured yet
        gate.set()
        gevent.joinall([blocker, *queued], timeout=10, raise_error=True)
        # completions at 0, 10, 20, 30 ms with work waiting: 10 ms apart
        gate.clear()
        blocker = gevent.spawn(scheduler, lambda: gate.wait(10))
        gevent.sleep(0.05)
        queued = [gevent.spawn(scheduler, lambda: None) for _ in range(3)]
        gevent.sleep(0.05)
        # the last item taken (the blocker) waited one clock step: the cap
        assert scheduler.expected_wait_s() == pytest.approx(0.01)
        assert scheduler.expected_wait_s(urgent=True) == 0.0
        gate.set()
        gevent.joinall([blocker, *queued], timeout=10, raise_error=True)
    finally:
        scheduler.close()
