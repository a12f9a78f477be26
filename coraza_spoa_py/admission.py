"""Admission in front of the engine threads: two lanes, responses first, and the expected wait.

Pure bookkeeping, no I/O and no clock of its own: ``runtime`` pushes work on the hub and its
engine threads pop it, ``application`` asks it for the expected wait before dispatching a request
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

# weight of the newest sample in the moving average: ~20 completions of memory, enough to
# follow a change of traffic within a fraction of a second at a few hundred messages/s
SERVICE_AVERAGE_WEIGHT = 0.05


class Lanes(Generic[W]):
    """Work waiting for ``threads`` engine threads, in two FIFO lanes; urgent work goes first.

    ``push`` runs on the hub, ``pop`` on the engine threads: single ``deque`` operations, which
    are atomic, so no lock is needed. The caller keeps one wake-up token per pushed item, so a
    thread that took a token always finds an item.
    """

    def __init__(self, threads: int, *, initial_interval_s: float = 0.0) -> None:
        self._threads = max(1, threads)
        self._urgent: deque[W] = deque()
        self._normal: deque[W] = deque()
        self._interval_s = initial_interval_s
        self._last_wait_s = 0.0
        self._last_completion: float | None = None
        self._busy = False

    @property
    def threads(self) -> int:
        return self._threads

    def resize(self, threads: int) -> None:
        self._threads = max(1, threads)

    @property
    def waiting(self) -> int:
        return len(self._urgent) + len(self._normal)

    @property
    def interval_s(self) -> float:
        """Moving average of the time between two completions while work was waiting: the
        engine time per message / the threads, as this box really delivers it (GIL waits and
        CPU shared with HAProxy included)."""
        return self._interval_s

    def expected_wait_s(self, *, urgent: bool = False, ahead: int | None = None) -> float:
        """How long a message arriving now would wait for a thread: the messages ahead of it ×
        the average time between completions (a response only waits behind the urgent lane),
        but never more than the last message really waited.

        Why the cap: measured at 128 connections, the prediction alone ran above the waits
        that followed and shed a third of the 50 KB-response requests that would have made
        the budget; in a closed loop every fast 500 is at once a new arrival into the same
        queue. Under real overload the observed wait is past the budget too, so both agree.
        """
        if ahead is None:  # the queue is these lanes (else the caller's: engine_pool)
            ahead = len(self._urgent) if urgent else self.waiting
        return min(ahead * self._interval_s, self._last_wait_s)

    def record_wait(self, waited_s: float) -> None:
        """How long the item a thread just took had waited (engine thread; one assignment)."""
        self._last_wait_s = waited_s

    def push(self, item: W, *, urgent: bool = False) -> None:
        (self._urgent if urgent else self._normal).append(item)

    def pop(self) -> W | None:
        """The next item (urgent lane first), or None when both lanes are empty."""
        for lane in (self._urgent, self._normal):
            try:
                return lane.popleft()
            except IndexError:
                continue
        return None

    def record_completion(self, finished_at: float, *, work_waiting: bool) -> None:
        """A thread finished an item at ``finished_at`` (its clock) and saw ``work_waiting``.
        Only the gap after a completion that left work waiting measures the drain rate: after
        an idle spell it says nothing about it. (The thread, not the hub, looks at the lanes:
        the hub receives completions in batches.)"""
        previous, self._last_completion = self._last_completion, finished_at
        was_busy, self._busy = self._busy, work_waiting
        if not was_busy or previous is None:
            return
        sample = max(0.0, finished_at - previous)
        if self._interval_s <= 0.0:
            self._interval_s = sample
        else:
            self._interval_s += SERVICE_AVERAGE_WEIGHT * (sample - self._interval_s)
