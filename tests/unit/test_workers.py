"""workers.Workers, workers.GreenletPool, workers.Flusher, workers.FrameWriter and
workers.read_when_ready: bounded concurrency with back-pressure, greenlets reused between calls
and shared between connections, join and kill; one flush for requests made before it runs;
frames whole and in order when the socket is full; a read that waits for its bytes."""

from __future__ import annotations

import socket as stdlib_socket
import time
from typing import Any

import gevent
import gevent.event
import pytest
from gevent import socket

from coraza_spoa_py.workers import Flusher, FrameWriter, GreenletPool, Workers, read_when_ready


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


def _burst(workers: Workers, size: int, ran: list[int]) -> None:
    """``size`` calls that all run at once (each waits for the last to start), from a
    spawner greenlet, as a pipelined batch of NOTIFYs arrives; returns when all ran."""
    started = gevent.event.Event()
    release = gevent.event.Event()
    count = [0]

    def call(index: int) -> None:
        count[0] += 1
        if count[0] == size:
            started.set()
        release.wait()
        ran.append(index)

    for i in range(size):
        workers.spawn(call, i)
    started.wait(timeout=5)
    release.set()
    workers.join()


def test_after_a_burst_the_extra_greenlets_end_once_idle_for_linger_s():
    """1. limit 16, keep 2, linger 0.05 s; a burst of 10 concurrent calls. Result: 10 greenlets
    ran them, every call ran. 2. Right after: they are still there (lingering). 3. After the
    linger (at most two): 2 are left (the floor), and no reaper timer runs; another burst of 10
    runs in full on new ones."""
    pool = GreenletPool(keep_idle=2, linger_s=0.05)
    workers = Workers(16, pool=pool)
    ran: list[int] = []
    _burst(workers, 10, ran)
    assert sorted(ran) == list(range(10))
    assert pool.greenlets == 10
    gevent.sleep(0.01)
    assert pool.greenlets == 10  # lingering, not gone yet
    gevent.sleep(0.2)
    assert pool.greenlets == 2
    assert pool._idle == 2
    assert pool._reaper is None
    ran.clear()
    _burst(workers, 10, ran)
    assert sorted(ran) == list(range(10))
    gevent.sleep(0.2)
    assert pool.greenlets == 2
    pool.kill()


def test_a_burst_within_the_linger_reuses_the_lingering_greenlets():
    """1. A burst of 6 (keep 2, linger 5 s). 2. A second burst of 6 right after. Result: the
    second ran on the same 6 greenlets, no new one."""
    pool = GreenletPool(keep_idle=2, linger_s=5.0)
    workers = Workers(16, pool=pool)
    ran: list[int] = []
    _burst(workers, 6, ran)
    first = set(pool._greenlets)
    _burst(workers, 6, ran)
    assert set(pool._greenlets) == first
    assert len(ran) == 12
    pool.kill()


def test_a_call_queued_in_the_turn_the_linger_ends_still_runs():
    """1. keep 0, linger 0.05 s: every idle greenlet lingers and then ends. 2. After a burst
    of 3, a call is spawned by a timer due before the linger ends, and the hub is held (no
    switch) past both: the call is queued in the loop turn in which the reaper looks, before
    its wake-up reaches any worker. Result: the call runs (the reaper ends only the workers
    beyond it), nothing is left in the queue, and the rest end."""
    pool = GreenletPool(keep_idle=0, linger_s=0.05)
    workers = Workers(16, pool=pool)
    ran: list[int] = []
    _burst(workers, 3, ran)
    assert pool.greenlets == 3
    spawner = gevent.spawn_later(0.01, workers.spawn, ran.append, 99)
    time.sleep(0.1)  # the hub's clock passes both deadlines without a switch
    with gevent.Timeout(2):
        spawner.join()
        workers.join()
    assert ran[-1] == 99
    gevent.sleep(0.2)
    assert pool.greenlets == 0
    assert pool._idle == 0
    assert pool._tasks == []
    ran.clear()
    workers.spawn(ran.append, 1)  # and the next call starts a greenlet again
    with gevent.Timeout(2):
        workers.join()
    assert ran == [1]
    pool.kill()


def test_linger_must_be_positive():
    """The reaper's timer repeats every ``linger_s``: 0 would be a one-shot timer."""
    with pytest.raises(ValueError):
        GreenletPool(linger_s=0)


def test_calls_arriving_around_the_linger_are_all_run():
    """A burst of 8 (keep 2, linger 0.02 s), then single calls every 2 ms for 0.1 s, through
    the lingering greenlets' timeouts. Result: every call ran once; 2 greenlets are left."""
    pool = GreenletPool(keep_idle=2, linger_s=0.02)
    workers = Workers(16, pool=pool)
    ran: list[int] = []
    _burst(workers, 8, ran)
    for i in range(50):
        workers.spawn(ran.append, 100 + i)
        gevent.sleep(0.002)
    with gevent.Timeout(2):
        workers.join()
    assert sorted(ran) == list(range(8)) + [100 + i for i in range(50)]
    gevent.sleep(0.1)
    assert pool.greenlets == 2
    pool.kill()


def test_connections_share_the_pools_idle_greenlets():
    """1. One pool (keep 4), three Workers (three connections); each runs a burst of 4 in turn.
    Result: every call ran, and the 4 greenlets of the first burst ran all three: the idle
    greenlets belong to the pool, not to a connection, so they do not grow with them."""
    pool = GreenletPool(keep_idle=4, linger_s=5.0)
    connections = [Workers(8, pool=pool) for _ in range(3)]
    ran: list[int] = []
    seen: list[set[Any]] = []
    for workers in connections:
        ran.clear()
        _burst(workers, 4, ran)
        assert sorted(ran) == [0, 1, 2, 3]
        seen.append(set(pool._greenlets))
    assert pool.greenlets == 4
    assert seen[0] == seen[1] == seen[2]
    pool.kill()
    assert pool.greenlets == 0


def test_killing_one_connections_calls_leaves_the_others_running():
    """1. Two Workers on one pool, each with a call blocked on a gate; a third call of the
    first is queued behind its limit (1). 2. kill() the first. Result: its running call got
    GreenletExit, its queued call never runs, join() returns; the second's call still runs
    and finishes when its gate opens."""
    pool = GreenletPool(keep_idle=4, linger_s=5.0)
    first, second = Workers(1, pool=pool), Workers(1, pool=pool)
    gate = gevent.event.Event()
    events: list[str] = []

    def call(name: str) -> None:
        try:
            events.append(f"{name} started")
            gate.wait()
            events.append(f"{name} finished")
        except gevent.GreenletExit:
            events.append(f"{name} killed")
            raise

    first.spawn(call, "a1")
    second.spawn(call, "b1")
    queued = gevent.spawn(first.spawn, call, "a2")  # waits for first's only slot
    gevent.sleep(0.01)
    assert events == ["a1 started", "b1 started"]
    first.kill(block=True)
    with gevent.Timeout(1):
        first.join()
    assert len(first) == 0
    gate.set()
    with gevent.Timeout(2):
        queued.join()
        second.join()
    gevent.sleep(0.01)
    assert sorted(events) == ["a1 killed", "a1 started", "b1 finished", "b1 started"]
    assert len(second) == 0
    pool.kill()


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


class _Log:
    def debug(self, *args: object) -> None:
        pass


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    received = bytearray()
    while len(received) < size:
        chunk = sock.recv(size - len(received))
        assert chunk, "closed early"
        received += chunk
    return bytes(received)


def test_frame_writer_batches_a_turn_and_keeps_order_when_the_socket_is_full():
    """1. Three frames queued in one loop turn: one send, from the hub (no flusher greenlet).
    2. A frame far larger than the socket's buffer, then a small one, queued together: the
    hub's send takes only part, the flusher's greenlet waits for the socket and sends the
    rest; the peer reads every byte in order and the writer is not closed."""
    ours, peer = socket.socketpair()
    ours.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, 4096)
    touched: list[int] = []
    writer = FrameWriter(ours, _Log(), lambda: touched.append(1))
    try:
        for frame in (b"a" * 10, b"b" * 10, b"c" * 10):
            writer.queue(frame)
        gevent.sleep(0.01)
        assert _read_exactly(peer, 30) == b"a" * 10 + b"b" * 10 + b"c" * 10
        assert touched == [1]  # one send for the three
        assert writer.flusher._greenlet is None  # sent from the hub
        big = bytes(range(256)) * 8192  # 2 MiB
        writer.queue(big)
        writer.queue(b"tail")
        received = gevent.spawn(_read_exactly, peer, len(big) + 4)
        with gevent.Timeout(10):
            assert received.get() == big + b"tail"
        assert writer.flusher._greenlet is not None  # the socket was full: the greenlet waited
        assert not writer.closed
    finally:
        writer.stop()
        ours.close()
        peer.close()


def test_read_when_ready_waits_for_bytes_and_reads_them():
    """A read with nothing there yet parks until the peer writes, then returns the bytes; an
    exception thrown into the parked reader comes out of it (graceful stop, deadlines)."""
    ours, peer = socket.socketpair()
    try:
        reader = gevent.spawn(read_when_ready, ours, 1024, try_first=False)
        gevent.sleep(0.01)
        assert not reader.ready()
        peer.sendall(b"hello")
        with gevent.Timeout(1):
            assert reader.get() == b"hello"
        peer.sendall(b"more")
        gevent.sleep(0.01)
        assert read_when_ready(ours, 1024, try_first=True) == b"more"
        parked = gevent.spawn(read_when_ready, ours, 1024, try_first=True)
        gevent.sleep(0.01)
        # thrown from the hub, as the connection does (``_interrupt_recv``)
        gevent.get_hub().loop.run_callback(parked.throw, KeyError("stop"))
        with gevent.Timeout(1):
            parked.join()
        assert isinstance(parked.exception, KeyError)
    finally:
        ours.close()
        peer.close()
