"""runtime.EngineScheduler on a real gevent thread pool (unpatched interpreter): at most
``threads`` calls run at once, responses (urgent) overtake queued requests, a greenlet killed
while waiting gives its place back, and the moving average of engine time is kept."""

from __future__ import annotations

import threading

import gevent
import pytest
from gevent.threadpool import ThreadPool

from coraza_spoa_py.runtime import EngineScheduler


@pytest.fixture
def pool():
    threads = ThreadPool(1)
    yield threads
    threads.kill()


def test_urgent_work_overtakes_queued_work_and_returns_results(pool):
    """1. one engine thread, blocked  2. queue two requests, then a response  3. unblock.
    Result: the response runs before both requests; every caller gets its own result."""
    scheduler = EngineScheduler(pool, 1)
    gate = threading.Event()  # a native event: the engine thread blocks without the hub
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
    assert scheduler.expected_wait_s() >= 0.0
    gate.set()
    gevent.joinall([blocker, req1, req2, res], timeout=10, raise_error=True)
    assert order == ["blocker", "res", "req1", "req2"]
    assert [g.value for g in (blocker, req1, req2, res)] == ["BLOCKER", "REQ1", "REQ2", "RES"]
    assert scheduler.waiting == 0


def test_a_killed_waiter_gives_its_place_back(pool):
    scheduler = EngineScheduler(pool, 1)
    gate = threading.Event()
    blocker = gevent.spawn(scheduler, lambda: gate.wait(10))
    gevent.sleep(0.05)
    doomed = gevent.spawn(scheduler, lambda: "never")
    gevent.sleep(0.05)
    doomed.kill()
    assert scheduler.waiting == 0
    gate.set()
    blocker.join(10)
    assert gevent.spawn(scheduler, lambda: "after").get(timeout=10) == "after"


def test_failing_work_raises_in_the_caller_and_frees_the_thread(pool):
    scheduler = EngineScheduler(pool, 1)

    def boom() -> None:
        raise ValueError("engine")

    with pytest.raises(ValueError, match="engine"):
        scheduler(boom)
    assert scheduler(lambda: 7) == 7


def test_expected_wait_uses_the_measured_engine_time(pool):
    ticks = iter(range(1000))
    scheduler = EngineScheduler(pool, 1, clock=lambda: next(ticks) * 0.01)
    scheduler(lambda: None)  # one clock step inside: 10 ms of engine time
    gate = threading.Event()
    blocker = gevent.spawn(scheduler, lambda: gate.wait(10))
    gevent.sleep(0.05)
    queued = [gevent.spawn(scheduler, lambda: None) for _ in range(3)]
    gevent.sleep(0.05)
    assert scheduler.expected_wait_s() == pytest.approx(3 * 0.01)
    assert scheduler.expected_wait_s(urgent=True) == 0.0
    gate.set()
    gevent.joinall([blocker, *queued], timeout=10, raise_error=True)
