"""Reusable greenlets: a bounded set that runs one connection's NOTIFYs, and a writer that
flushes on demand, without a new greenlet per message.

Why (docs/performance.md, change 9): on CPython 3.11 a greenlet's first Python frame
maps a fresh 16 KiB frame stack and its end unmaps it (``_PyThreadState_BumpFramePointerSlow``
→ ``mmap``/``munmap``, plus the page faults of touching it). With a greenlet per NOTIFY and
one per ACK flush that was about four map/unmap pairs per HTTP request, the hub's costliest
system calls (``strace -c`` on the hub, 32 connections). Long-lived greenlets keep their stack.
But not forever (docs/performance.md change 37): HAProxy pipelines bursts of NOTIFYs on one
connection, and every greenlet a burst started used to stay parked with its stacks. A
``GreenletPool`` keeps ``keep_idle`` idle greenlets; those above that which stayed idle through
a whole ``linger_s`` (so a steady burst pattern finds them again) are then ended. One timer per
pool looks, only while more than ``keep_idle`` are idle: a timed wait per idle greenlet cost a
gevent ``Timeout`` (a libev timer started and stopped) per call above the floor, on the hub.
The pool is the server's, shared by its connections' ``Workers`` (docs/performance.md change
51): HAProxy keeps hundreds of idle SPOE connections open after a burst, and idle greenlets
kept per connection made the agent's RSS grow with them.

gevent-only plumbing: nothing here knows SPOP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.lock

# idle greenlets a server keeps for good, shared by all its connections (docs/performance.md
# changes 37 and 51): enough for a burst of HAProxy's 20 pipelined NOTIFYs on a few connections
# at once without starting greenlets; a parked greenlet costs ~10-15 KiB (its stacks)
KEEP_IDLE = 64
# how long greenlets above those stay unneeded before they are ended: the reaper looks every
# LINGER_S, so a greenlet goes between one and two of them after its last call (0.5 to 1 s);
# with 1 s (1 to 2 s) POST runs kept ~5 MiB more at their peak (docs/performance.md change 37)
LINGER_S = 0.5


class GreenletPool:
    """Greenlets that run ``Workers``' calls and wait for the next one between calls, shared by
    every ``Workers`` of a server: an idle greenlet belongs to no connection, so the idle ones
    do not grow with the number of connections HAProxy keeps open (docs/performance.md
    change 51: HAProxy 2.6 opens ~a connection per concurrent stream in a burst and keeps each
    idle for its ``timeout idle``).

    At most ``keep_idle`` greenlets wait for calls indefinitely; the others a burst started end
    once they were not needed for ``linger_s`` (between one and two ``linger_s`` after they went
    idle)."""

    def __init__(self, *, keep_idle: int = KEEP_IDLE, linger_s: float = LINGER_S) -> None:
        if linger_s <= 0:
            raise ValueError("linger_s must be > 0")  # the reaper's timer repeats every linger_s
        self._keep_idle = keep_idle
        self._linger_s = linger_s
        # the queued calls, counted by ``_queued``: a list and a semaphore, not a
        # gevent.queue.SimpleQueue (docs/performance.md change 34); an owner None ends a worker
        self._tasks: list[tuple[Workers | None, Callable[..., Any], tuple[Any, ...]]] = []
        self._queued = gevent.lock.Semaphore(0)
        self._greenlets: set[gevent.Greenlet[Any, Any]] = set()
        # the greenlets in a call -> whose call (``Workers.kill``); one for the pool rather than
        # a set per ``Workers``, which would stay as large as its biggest burst (~2 KiB)
        self._running: dict[Any, Workers] = {}
        # workers waiting for a task, minus the tasks queued for them (negative only while
        # workers just started have not reached their first wait)
        self._idle = 0
        self._fewest_idle = 0  # the lowest ``_idle`` since the reaper last looked
        self._reaper: Any = None  # a libev timer, running while more than keep_idle are idle

    @property
    def greenlets(self) -> int:
        """Greenlets alive, running a call or idle."""
        return len(self._greenlets)

    def submit(self, owner: Workers, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """Run ``fn(*args)`` for ``owner`` on a waiting greenlet, or a new one."""
        self._idle -= 1  # this task takes a waiting worker...
        if self._idle < self._fewest_idle:
            self._fewest_idle = self._idle
        if self._idle < 0:  # ...or a new one, whose first wait counts it back
            self._greenlets.add(gevent.spawn(self._work))
        self._tasks.append((owner, fn, args))
        self._queued.release()

    def running_for(self, owner: Workers) -> list[Any]:
        """The greenlets in one of ``owner``'s calls now."""
        return [g for g, running_for in self._running.items() if running_for is owner]

    def kill(self, block: bool = False) -> None:
        """End every greenlet now, idle or running a call (which gets ``GreenletExit``)."""
        self._stop_reaper()
        greenlets = list(self._greenlets)
        self._greenlets.clear()
        for g in greenlets:
            g.kill(block=block)

    def _work(self) -> None:
        current = gevent.getcurrent()
        try:
            while True:
                self._idle += 1
                if self._idle > self._keep_idle and self._reaper is None:
                    self._start_reaper()
                self._queued.acquire()
                owner, fn, args = self._tasks.pop(0)
                if owner is None:
                    return  # ``_reap`` already counted it out of ``_idle``
                try:
                    if not owner._killed:
                        self._running[current] = owner
                        fn(*args)
                finally:
                    self._running.pop(current, None)
                    owner._finished()
                # an idle worker holds nothing of its last call (its message, its answer, its
                # connection)
                del owner, fn, args
        finally:
            self._greenlets.discard(current)

    def _start_reaper(self) -> None:
        self._fewest_idle = self._idle
        # not ref'd: idle workers never keep the hub's loop alive
        self._reaper = gevent.get_hub().loop.timer(self._linger_s, self._linger_s, ref=False)
        self._reaper.start(self._reap)

    def _stop_reaper(self) -> None:
        if self._reaper is not None:
            self._reaper.stop()
            self._reaper.close()
            self._reaper = None

    def _reap(self) -> None:
        """Every ``linger_s`` while more than ``keep_idle`` are idle (a hub callback: never
        waits): end the workers that were idle through the whole period, beyond the floor."""
        # ``_idle`` counts waiting workers minus queued calls, and only ``submit`` lowers it,
        # so ``_fewest_idle`` workers waited with nothing for them since the last look
        surplus = min(self._fewest_idle, self._idle) - self._keep_idle
        for _ in range(surplus):
            # a task like any other, so the semaphore wakes exactly one waiting worker for
            # it; queued behind any real call, each of which has its own waiting worker
            self._idle -= 1
            self._tasks.append((None, _end_worker, ()))
            self._queued.release()
        self._fewest_idle = self._idle
        if self._idle <= self._keep_idle:
            self._stop_reaper()


def _end_worker() -> None:
    """Not called: a worker that takes this task ends (``GreenletPool._reap``)."""


class Workers:
    """Runs ``spawn(fn, *args)`` calls concurrently, at most ``limit`` at once, on the
    greenlets of ``pool`` (its own one when not given), which stay alive between calls.
    ``spawn`` blocks while ``limit`` calls run (back-pressure, as ``gevent.pool.Pool.spawn``).
    ``len()`` counts the calls running or queued; ``join`` waits for them, ``kill`` ends them
    (and drops the queued ones), leaving the pool's other calls alone."""

    def __init__(self, limit: int, *, pool: GreenletPool | None = None) -> None:
        self._pool = GreenletPool() if pool is None else pool
        self._slots = gevent.lock.BoundedSemaphore(limit)
        self._killed = False  # the queued calls are dropped, not run
        self._pending = 0
        self._all_done = gevent.event.Event()
        self._all_done.set()

    def __len__(self) -> int:
        return self._pending

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        self._slots.acquire()
        self._pending += 1
        self._all_done.clear()
        self._pool.submit(self, fn, args)

    def join(self) -> None:
        """Wait until no call runs or waits."""
        self._all_done.wait()

    def kill(self, block: bool = False) -> None:
        """End the calls running now (they get ``GreenletExit``; their greenlets end) and drop
        the queued ones."""
        self._killed = True
        for g in self._pool.running_for(self):
            g.kill(block=block)
        self._pending = 0
        self._all_done.set()

    def _finished(self) -> None:
        """A call of ours ended (or was dropped): its slot back."""
        self._slots.release()
        if self._pending:  # ``kill`` already counted the calls it ended
            self._pending -= 1
            if self._pending == 0:
                self._all_done.set()


def read_when_ready(sock: Any, size: int, *, try_first: bool) -> bytes:
    """``sock.recv(size)`` for a gevent socket, waiting for readability first unless
    ``try_first`` (the last read filled its buffer, so more is likely there).

    gevent's ``recv`` tries the socket first and waits only after ``EAGAIN``: when the peer
    sends one small frame at a time (HAProxy, one NOTIFY per connection), the bytes are nearly
    never there yet, so every message cost a failed ``recvfrom`` system call and a Python
    exception before the wait (docs/performance.md change 32). This waits on the socket's own
    read watcher, as gevent's ``recv`` does after its first try, then reads the non-blocking
    socket: an exception thrown into a greenlet parked here lands in the same wait as in
    ``recv``, and a socket closed meanwhile raises the same ``OSError``."""
    if try_first:
        try:
            chunk: bytes = sock._sock.recv(size)
        except BlockingIOError:
            pass
        else:
            return chunk
    while True:
        sock._wait(sock._read_event)
        try:
            chunk = sock._sock.recv(size)
        except BlockingIOError:  # a readiness without bytes: wait again, as gevent's recv
            continue
        return chunk


class Flusher:
    """Calls a flush after ``request()``; the requests made before it runs share one call.

    With ``try_flush``, the flush is first tried in a hub callback, which must not wait: no
    greenlet switch per flush (docs/performance.md change 33). When it returns False (it would
    have to wait), or without it, one long-lived greenlet calls ``flush()``, which may."""

    def __init__(
        self, flush: Callable[[], None], try_flush: Callable[[], bool] | None = None
    ) -> None:
        self._flush = flush
        self._try_flush = try_flush
        self._scheduled = False
        self._wanted: gevent.event.Event | None = None  # with the greenlet, rarely needed
        self._greenlet: gevent.Greenlet[Any, Any] | None = None

    def request(self) -> None:
        if self._try_flush is None:
            self._request_greenlet()
        elif not self._scheduled:
            self._scheduled = True
            gevent.get_hub().loop.run_callback(self._from_hub)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _from_hub(self) -> None:
        self._scheduled = False
        assert self._try_flush is not None
        if not self._try_flush():
            self._request_greenlet()

    def _request_greenlet(self) -> None:
        if self._wanted is None:
            self._wanted = gevent.event.Event()
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run, self._wanted)
        self._wanted.set()

    def _run(self, wanted: gevent.event.Event) -> None:
        while True:
            wanted.wait()
            wanted.clear()
            self._flush()


class FrameWriter:
    """Writes whole frames to a gevent socket, never interleaved or split: only the holder of
    ``lock`` writes. ``write(frame)`` sends the queued frames, then ``frame``, in one send and
    waits for the socket if it must; ``queue(frame)`` leaves it to the flusher, so the frames
    queued in the same loop turn (a pipelined batch's ACKs) leave in ONE send. The flusher
    tries from the hub first (``Flusher``'s ``try_flush``), where nothing may wait: what the
    socket does not take at once is left to its greenlet. ``touch()`` is called on every write
    (the connection's idle clock)."""

    def __init__(self, sock: Any, log: Any, touch: Callable[[], None]) -> None:
        self.sock = sock
        self.log = log
        self._touch = touch
        self.lock = gevent.lock.Semaphore()
        self.outbox: list[bytes] = []  # whole frames waiting for the flusher
        self.closed = False  # no more frames may be written
        self.flusher = Flusher(lambda: self.write(b""), self._flush_from_hub)

    def queue(self, frame: bytes) -> None:
        if not self.closed:
            self.outbox.append(frame)
            self.flusher.request()

    def write(self, frame: bytes) -> None:
        """Send the queued frames, then ``frame``, waiting for the socket if it must."""
        with self.lock:
            self._send(self._take(frame), may_wait=True)

    def stop(self) -> None:
        self.flusher.stop()

    def _flush_from_hub(self) -> bool:
        if self.lock.locked():  # a write is waiting for the socket: queued behind it
            return False
        return self._send(self._take(b""), may_wait=False)

    def _take(self, frame: bytes) -> bytes:
        """The queued frames, then ``frame``, as one buffer; empty once closed."""
        if self.closed:
            self.outbox.clear()
            return b""
        if self.outbox:
            self.outbox.append(frame)
            frame = b"".join(self.outbox)
            self.outbox.clear()
        return frame

    def _send(self, data: bytes, *, may_wait: bool) -> bool:
        """False when the socket did not take all of ``data`` and ``may_wait`` is not set:
        the rest goes back to the head of the outbox, before any frame queued later."""
        if not data:
            return True
        self._touch()
        try:
            # one send() is nearly always enough; gevent's sendall() would also ask the
            # socket's buffer size (a getsockopt system call) on every call
            sent = self.sock.send(data) if may_wait else _send_now(self.sock, data)
            if sent < len(data):
                if not may_wait:
                    self.outbox.insert(0, data[sent:])
                    return False
                self.sock.sendall(memoryview(data)[sent:])
        except OSError as exc:
            # The peer went away while we answered; the reader sees it too.
            self.closed = True
            self.log.debug("write failed: {}", exc)
        return True


def _send_now(sock: Any, data: bytes) -> int:
    """One ``send`` on a gevent socket's non-blocking socket: the bytes it took, 0 when its
    buffer is full (where gevent's ``send`` would wait for it)."""
    try:
        sent: int = sock._sock.send(data)
    except BlockingIOError:
        return 0
    return sent
