"""Reusable greenlets: a bounded set that runs one connection's NOTIFYs, and a writer that
flushes on demand, without a new greenlet per message.

Why (docs/performance.md, change 9): on CPython 3.11 a greenlet's first Python frame
maps a fresh 16 KiB frame stack and its end unmaps it (``_PyThreadState_BumpFramePointerSlow``
→ ``mmap``/``munmap``, plus the page faults of touching it). With a greenlet per NOTIFY and
one per ACK flush that was about four map/unmap pairs per HTTP request, the hub's costliest
system calls (``strace -c`` on the hub, 32 connections). Long-lived greenlets keep their stack.

gevent-only plumbing: nothing here knows SPOP.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.queue

Task = tuple[Callable[..., Any], tuple[Any, ...]]


class Workers:
    """Runs ``spawn(fn, *args)`` calls concurrently, at most ``limit`` at once, on greenlets
    that stay alive between calls. ``spawn`` blocks while ``limit`` calls run (back-pressure,
    as ``gevent.pool.Pool.spawn``). ``len()`` counts the calls running or queued."""

    def __init__(self, limit: int) -> None:
        self._slots = gevent.lock.BoundedSemaphore(limit)
        self._tasks: gevent.queue.SimpleQueue[Task] = gevent.queue.SimpleQueue()
        self._greenlets: set[gevent.Greenlet[Any, Any]] = set()
        # workers waiting for a task, minus the tasks queued for them (negative only while
        # workers just started have not reached their first wait)
        self._idle = 0
        self._pending = 0
        self._all_done = gevent.event.Event()
        self._all_done.set()

    def __len__(self) -> int:
        return self._pending

    def spawn(self, fn: Callable[..., Any], *args: Any) -> None:
        self._slots.acquire()
        self._pending += 1
        self._all_done.clear()
        self._idle -= 1  # this task takes a waiting worker...
        if self._idle < 0:  # ...or a new one, whose first wait counts it back
            self._greenlets.add(gevent.spawn(self._work))
        self._tasks.put((fn, args))

    def join(self) -> None:
        """Wait until no call runs or waits."""
        self._all_done.wait()

    def kill(self, block: bool = False) -> None:
        """End every worker now (a running call gets ``GreenletExit``), and with them the
        queued calls."""
        greenlets = list(self._greenlets)
        self._greenlets.clear()
        for g in greenlets:
            g.kill(block=block)
        self._pending = 0
        self._all_done.set()

    def _work(self) -> None:
        current = gevent.getcurrent()
        try:
            while True:
                self._idle += 1
                fn, args = self._tasks.get()
                try:
                    fn(*args)
                finally:
                    self._pending -= 1
                    self._slots.release()
                    if self._pending == 0:
                        self._all_done.set()
        finally:
            self._greenlets.discard(current)


def read_when_ready(sock: Any, size: int, *, try_first: bool) -> bytes:
    """``sock.recv(size)`` for a gevent socket, waiting for readability first unless
    ``try_first`` (the last read filled its buffer, so more is likely there).

    gevent's ``recv`` tries the socket first and waits only after ``EAGAIN``: when the peer
    sends one small frame at a time (HAProxy, one NOTIFY per connection), the bytes are nearly
    never there yet, so every message cost a failed ``recvfrom`` system call and a Python
    exception before the wait (docs/performance.md change 40). This waits on the socket's own
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
    """One long-lived greenlet that calls ``flush()`` after ``request()``; requests made
    before it runs share one call."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush
        self._wanted = gevent.event.Event()
        self._greenlet: gevent.Greenlet[Any, Any] | None = None

    def request(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)
        self._wanted.set()

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            self._flush()
