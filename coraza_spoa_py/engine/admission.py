"""Admission in front of the engine threads: the expected wait that load shedding compares
with the budget (docs/performance.md "Overload").

Pure bookkeeping, no I/O and no clock of its own: ``engine_pool`` feeds it what the engine
threads report (how long each job waited, when each finished), ``application`` asks it for the
expected wait before dispatching a request, and the unit tests drive it from a simulated clock.
The queue itself, two lanes with responses and closes first, is the native pool's
(``native/msc_glue.c``): a ``coraza-res`` completes a transaction whose request already cost
engine time, so it is served before new requests.

Why an expected wait: a FIFO queue checked only when a thread takes a message lets the queue
grow past the budget, after which nearly every message is late at the head. Knowing the wait
on arrival lets the caller shed in microseconds and keeps the queue about one budget long.

Must not block, sleep, import gevent, or know what a message is.
"""

from __future__ import annotations

# weight of the newest sample in the moving average: ~20 completions of memory, enough to
# follow a change of traffic within a fraction of a second at a few hundred messages/s
SERVICE_AVERAGE_WEIGHT = 0.05


class WaitEstimate:
    """How long a message arriving now would wait for an engine thread."""

    def __init__(self, *, initial_interval_s: float = 0.0) -> None:
        self._interval_s = initial_interval_s
        self._last_wait_s = 0.0
        self._last_completion: float | None = None
        self._busy = False

    @property
    def interval_s(self) -> float:
        """Moving average of the time between two completions while work was waiting: the
        engine time per message / the threads, as this box really delivers it (CPU shared with
        HAProxy included)."""
        return self._interval_s

    def expected_wait_s(self, ahead: int) -> float:
        """The wait behind ``ahead`` queued messages: ``ahead`` × the average time between
        completions, but never more than the last message really waited.

        Why the cap: measured at 128 connections, the prediction alone ran above the waits
        that followed and shed a third of the 50 KB-response requests that would have made
        the budget; in a closed loop every fast 500 is at once a new arrival into the same
        queue. Under real overload the observed wait is past the budget too, so both agree.
        """
        return min(ahead * self._interval_s, self._last_wait_s)

    def record_wait(self, waited_s: float) -> None:
        """How long the job a thread last took had waited."""
        self._last_wait_s = waited_s

    def record_completion(self, finished_at: float, *, work_waiting: bool) -> None:
        """A thread finished a job at ``finished_at`` (its clock) and saw ``work_waiting``.
        Only the gap after a completion that left work waiting measures the drain rate: after
        an idle spell it says nothing about it. (The thread, not the hub, looks at the queue:
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
