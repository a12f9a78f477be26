"""workers.Workers and workers.Flusher: bounded concurrency with back-pressure, greenlets
reused between calls, join and kill; one flush for requests made before it runs."""

from __future__ import annotations

import gevent
import gevent.event

from coraza_spoa_py.workers import Flusher, Workers


def test_at_most_limit_calls_run_and_spawn_blocks_until_a_slot_frees():
    """1. limit 2; a spawner greenlet spawns four gated calls. Result: two run, the spawner
    waits; opening the gates lets the other two run; every call ran once."""
    workers = Workers(2)
    gates = [gevent.event.Event() for _ in range(4)]
    running: list[int] = []
    finished: list[int] = []

    def call(index: int) -> None:
        running.append(index)
        gates[index].wait()
        finished.append(index)

    def spawn_all() -> None:
        for i in range(4):
            workers.spawn(call, i)

    spawner = gevent.spawn(spawn_all)
    gevent.sleep(0.01)
    assert running == [0, 1]
    assert not spawner.dead
    assert len(workers) == 2
    for gate in gates:
        gate.set()
    spawner.join(timeout=5)
    workers.join()
    assert sorted(finished) == [0, 1, 2, 3]
    assert len(workers) == 0
    workers.kill()


def test_sequential_calls_reuse_one_greenlet():
    """1. 50 calls, each spawned after the previous one finished. Result: all ran on the same
    greenlet (no greenlet per call)."""
    workers = Workers(8)
    seen: set[int] = set()
    for _ in range(50):
        workers.spawn(lambda: seen.add(id(gevent.getcurrent())))
        workers.join()
    assert len(seen) == 1
    workers.kill()


def test_concurrent_calls_get_their_own_greenlets_up_to_the_limit():
    """1. limit 3; five calls spawned at once, each blocking until released. Result: three
    distinct greenlets ran them all."""
    workers = Workers(3)
    release = gevent.event.Event()
    seen: list[int] = []

    def call() -> None:
        seen.append(id(gevent.getcurrent()))
        release.wait()

    def spawn_all() -> None:
        for _ in range(5):
            workers.spawn(call)

    spawner = gevent.spawn(spawn_all)
    gevent.sleep(0.01)
    release.set()
    spawner.join(timeout=5)
    workers.join()
    assert len(seen) == 5
    assert len(set(seen)) == 3
    workers.kill()


def test_kill_ends_running_calls_and_join_returns():
    """1. A call blocks forever. 2. kill(). Result: the call got GreenletExit (its cleanup ran)
    and join() returns at once."""
    workers = Workers(2)
    cleaned: list[str] = []

    def call() -> None:
        try:
            gevent.event.Event().wait()
        finally:
            cleaned.append("done")

    workers.spawn(call)
    gevent.sleep(0.01)
    workers.kill(block=True)
    with gevent.Timeout(1):
        workers.join()
    assert cleaned == ["done"]
    assert len(workers) == 0


def test_flusher_serves_requests_made_before_it_runs_with_one_flush():
    flushes: list[int] = []
    flusher = Flusher(lambda: flushes.append(1))
    for _ in range(5):
        flusher.request()
    gevent.sleep(0.01)
    assert flushes == [1]
    flusher.request()
    gevent.sleep(0.01)
    assert flushes == [1, 1]
    flusher.stop()
    flusher.request()  # a stopped flusher starts again on demand
    gevent.sleep(0.01)
    assert flushes == [1, 1, 1]
    flusher.stop()
