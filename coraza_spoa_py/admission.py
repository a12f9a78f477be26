"""Admission in front of the engine threads: two lanes, responses first, and the expected wait.

Pure bookkeeping, no I/O and no clock of its own: ``runtime`` drives it from the hub (one
waiter per message), ``application`` asks it for the expected wait before dispatching a request
(docs/performance.md "Overload"), and the unit tests drive it from a simulated clock.

Why two lanes: a ``coraza-res`` completes a transaction whose request already cost engine time;
shedding it throws that work away and answers 500 anyway, so responses (the *urgent* lane) are
served before new requests (the *normal* lane). Why an expected wait: a FIFO queue checked only
when a thread takes a message lets the queue grow past the budget, after which nearly every
message is late at the head. Knowing the wait on arrival lets the caller shed in microseconds
and keeps the queue about one budget long.

Must not block, sleep, import gevent, or know what a message is.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

W = TypeVar("W")

# weight of the newest service time in the moving average: ~20 messages of memory, enough to
# follow a change of traffic within a fraction of a second at a few hundred messages/s
SERVICE_AVERAGE_WEIGHT = 0.05


class Lanes(Generic[W]):
    """``threads`` slots, and two FIFO lanes of waiters for them; urgent waiters go first.

    A waiter is any object of the caller's (a gevent event in production). ``acquire`` either
    grants a slot at once or queues the waiter; ``release`` hands the freed slot to the next
    waiter (the caller wakes it) or keeps it free.
    """

    def __init__(self, threads: int, *, initial_service_s: float = 0.0) -> None:
        self._threads = max(1, threads)
        self._free = self._threads
        self._urgent: deque[W] = deque()
        self._normal: deque[W] = deque()
        self._service_s = initial_service_s

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def waiting(self) -> int:
        return len(self._urgent) + len(self._normal)

    @property
    def service_s(self) -> float:
        """Moving average of the engine time of one message."""
        return self._service_s

    def expected_wait_s(self, *, urgent: bool = False) -> float:
        """How long a message arriving now would wait for a thread: the messages ahead of it ×
        the average engine time per message / the threads (a response only waits behind the
        urgent lane)."""
        ahead = len(self._urgent) if urgent else self.waiting
        return ahead * self._service_s / self._threads

    def try_acquire(self) -> bool:
        """Take a free slot if nobody waits for one (the common case: no waiter needed)."""
        if self._free > 0 and not self._urgent and not self._normal:
            self._free -= 1
            return True
        return False

    def enqueue(self, waiter: W, *, urgent: bool = False) -> None:
        """Queue ``waiter`` until a ``release`` hands it a slot (or the caller cancels it)."""
        (self._urgent if urgent else self._normal).append(waiter)

    def acquire(self, waiter: W, *, urgent: bool = False) -> bool:
        """True: a slot is the caller's now. False: ``waiter`` is queued."""
        if self.try_acquire():
            return True
        self.enqueue(waiter, urgent=urgent)
        return False

    def cancel(self, waiter: W) -> bool:
        """Take a queued waiter out. False: it was already handed a slot, which the caller
        then owns and must ``release``."""
        for lane in (self._urgent, self._normal):
            try:
                lane.remove(waiter)
            except ValueError:
                continue
            return True
        return False

    def release(self) -> W | None:
        """A slot is free: the waiter it was handed to (wake it), or None if nobody waited."""
        if self._free < 0:
            # the pool shrank while this slot was busy: the slot disappears
            self._free += 1
            return None
        for lane in (self._urgent, self._normal):
            if lane:
                return lane.popleft()
        self._free += 1
        return None

    def record_service(self, seconds: float) -> None:
        if self._service_s <= 0.0:
            self._service_s = seconds
        else:
            self._service_s += SERVICE_AVERAGE_WEIGHT * (seconds - self._service_s)

    def resize(self, threads: int) -> list[W]:
        """Reload changed ``engine_threads``: the waiters that can start now (wake them)."""
        threads = max(1, threads)
        self._free += threads - self._threads
        self._threads = threads
        woken: list[W] = []
        while self._free > 0 and self.waiting:
            self._free -= 1
            woken.append((self._urgent or self._normal).popleft())
        return woken
