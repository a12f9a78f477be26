"""The engine threads, seen from the gevent hub: the agent's ``models.EngineScheduler``. Message
work runs on the calling greenlet; each engine job it makes (a ``cs_job`` of
``engine.transaction``: a phase group, or a close) runs on the native threads of
``binding.NativePool``, and the greenlet is parked until the job is done.

Why this split (docs/performance.md, changes 7 and 8): the earlier engine threads ran Python
(the message's closure) and so took the GIL for every step; their GIL handoffs with the hub cost
more CPU than the agent's own Python. Here only C runs on engine threads. The hub learns of
finished jobs through the pool's eventfd, watched by its libev loop: one wakeup may carry many
jobs. The threads write it once per batch (``DONE_BATCH`` jobs, the oldest ``DONE_DELAY_S``
old, or the last job running: docs/performance.md change 41); while jobs are in flight a timer
here takes what a batch still holds back, so a finished job waits a few milliseconds at most.

Also the expected wait that ``application`` sheds with on arrival (``admission.WaitEstimate``
over the pool's queue length); a job that still waits past its deadline is shed by the thread
that takes it (``native/msc_glue.c``).

Must not parse messages or log: a job's meaning is ``transaction``'s, its outcome
``application``'s.
"""

from __future__ import annotations

from typing import Any

import gevent
from gevent.hub import Waiter

from coraza_spoa_py.engine.admission import WaitEstimate
from coraza_spoa_py.engine.binding import NativePool

_READ = 1  # libev EV_READ
# Finished jobs reach the hub in batches (native/msc_glue.c cs_finished, docs/performance.md
# change 41): the eventfd is written when this many are done, when the oldest has waited this
# long, or when no other job runs or waits.
DONE_BATCH = 16
DONE_DELAY_S = 0.001
# The hub's own look while jobs are in flight, restarted by every delivery: it only catches a
# batch that no completion will close (a job done beside a long one), so it is longer than the
# threads' delay, which closes batches first while jobs keep finishing.
SWEEP_AFTER_DELAYS = 2


class EnginePool:
    """``models.EngineScheduler``: the expected wait for ``application``, the engine threads
    for the engines' jobs."""

    def __init__(self, threads: int) -> None:
        self._native = NativePool()
        self._estimate = WaitEstimate()
        # token -> (the job and what it points into, which must stay allocated until it ran
        # even if its greenlet was killed meanwhile; the waiting greenlet's waiter, if any)
        self._parked: dict[int, tuple[Any, Waiter[None] | None]] = {}
        self._last_token = 0
        self._hub = gevent.get_hub()
        self._loop = self._hub.loop
        self._watcher = self._loop.io(self._native.fd, _READ)
        self._watcher.start(self._deliver)
        self._sweep = self._loop.timer(0.0, 0.0, ref=False)
        self._sweeping = False  # the sweep timer runs (it repeats until stopped)
        self.set_batching(DONE_BATCH, DONE_DELAY_S)
        self._wake_scheduled = False
        self.threads = self._native.resize(threads)

    def set_batching(self, batch: int, delay_s: float) -> None:
        """How finished jobs are batched (``DONE_BATCH``, ``DONE_DELAY_S``; a batch of 1 wakes
        the hub for every job, as before change 41). For benchmarks; call before submitting."""
        self._native.set_batching(batch, delay_s)
        self._stop_sweep()
        # a libev timer restarted with ``again`` repeats this period (ev_timer_again)
        period = max(delay_s, 0.0001) * SWEEP_AFTER_DELAYS
        self._sweep = self._loop.timer(period, period, ref=False)

    # ---- admission (application) ------------------------------------------------------------
    def expected_wait_s(self) -> float:
        """How long a request arriving now would wait for an engine thread (behind every
        queued job: requests go to the normal lane)."""
        return self._estimate.expected_wait_s(self._native.waiting())

    @property
    def waiting(self) -> int:
        return self._native.waiting()

    def resize(self, threads: int) -> None:
        """Start or retire engine threads (a reload changed ``engine_threads``)."""
        self.threads = self._native.resize(threads)

    def close(self) -> None:
        """Finish the queued jobs (closes at shutdown among them), then stop every thread."""
        self._native.stop()
        self._deliver()
        self._watcher.stop()
        self._stop_sweep()

    # ---- engine jobs (transaction) ----------------------------------------------------------
    def run(self, job: Any, *, urgent: bool, keep: object) -> None:
        # a Waiter, not an Event: the hub switches straight into this greenlet when the job is
        # done, with no callback in between (half the cost: 3 against 6.4 us per park)
        finished: Waiter[None] = Waiter()
        self._park(job, keep, finished)
        self._submit(job, urgent)
        finished.get()

    def detach(self, job: Any, *, keep: object) -> None:
        # closes: in the urgent lane, they free what the response phases left
        self._park(job, keep, None)
        self._submit(job, True)

    def _submit(self, job: Any, urgent: bool) -> None:
        # Waking an engine thread costs ~20 us of the hub's CPU (docs/performance.md change
        # 16): the jobs of one loop turn are queued, and the threads woken once, after the
        # greenlets that run in this turn (a callback runs after those already scheduled).
        self._native.push(job, urgent=urgent)
        if not self._sweeping:
            self._sweeping = True
            self._sweep.again(self._deliver)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._loop.run_callback(self._wake)

    def _wake(self) -> None:
        self._wake_scheduled = False
        self._native.wake()

    def _park(self, job: Any, keep: object, finished: Waiter[None] | None) -> None:
        self._last_token += 1
        job.token = self._last_token
        self._parked[self._last_token] = ((job, keep), finished)

    def _stop_sweep(self) -> None:
        self._sweeping = False
        self._sweep.stop()

    def _deliver(self) -> None:
        # on the hub (the eventfd watcher, the sweep timer), or from close() on any greenlet
        on_hub = gevent.getcurrent() is self._hub
        done = self._native.take_done()
        if done:
            if len(self._parked) > len(done):
                # jobs still in flight: the next look a full period after this delivery
                self._sweeping = True
                self._sweep.again(self._deliver)
            else:
                self._stop_sweep()  # the last ones: nothing can be held back any more
        for job in done:
            self._estimate.record_wait(job.started_at - job.pushed_at)
            self._estimate.record_completion(job.finished_at, work_waiting=bool(job.work_waiting))
            parked = self._parked.pop(int(job.token), None)
            if parked is None or parked[1] is None:
                continue
            # the waiting greenlet runs now, until it waits again (a killed one never waits:
            # its waiter just keeps the value); only the hub may switch to it
            if on_hub:
                parked[1].switch(None)
            else:
                self._loop.run_callback(parked[1].switch, None)
