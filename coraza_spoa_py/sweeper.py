"""The running agent's sweeper greenlet: every second it expires the transactions past their TTL
and flushes the log files; every ``HEAP_TRIM_EVERY_SWEEPS`` sweeps a pool thread gives the
engine's freed heap back to the kernel (``waf.trim_heap``, glibc's ``malloc_trim``;
docs/performance.md change 11). A worker whose master is gone stops itself from here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import gevent
from gevent.threadpool import ThreadPool
from loguru import logger

from coraza_spoa_py import engine as waf
from coraza_spoa_py import logs

SWEEP_INTERVAL_S = 1.0
# How often the engine's freed heap goes back to the kernel (waf.trim_heap). Measured under the
# soak's load: a trim takes 2.6 ms median, 9 ms p90 (on a pool thread); RSS without trims
# creeps by 3-9 % over a million transactions and springs back within seconds of a trim, so
# the interval sets how far RSS rises above the live heap between two trims.
HEAP_TRIM_EVERY_SWEEPS = 2
SLOW_HEAP_TRIM_S = 0.05


class Sweepable(Protocol):
    def sweep(self) -> int: ...


class Sweeper:
    """``run()`` sweeps ``agent`` until killed. ``master_pid``: this process is a worker of that
    master; when its parent changes, ``on_master_gone`` is called and the sweeps end."""

    def __init__(
        self,
        agent: Sweepable,
        pool: ThreadPool,
        *,
        master_pid: int | None = None,
        on_master_gone: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.agent = agent
        self.pool = pool
        self.master_pid = master_pid
        self.on_master_gone = on_master_gone
        self.heap_trim: gevent.Greenlet[Any, Any] | None = None

    def run(self) -> None:
        sweeps = 0
        while True:
            gevent.sleep(SWEEP_INTERVAL_S)
            if self.master_pid is not None and os.getppid() != self.master_pid:
                # the master is gone (killed): nobody restarts or stops this worker any more
                self.on_master_gone("the master process exited")
                return
            self.sweep_once()
            # log files are block buffered (logs.py): a line reaches the file within a second
            logs.flush_log_files()
            sweeps += 1
            # its own greenlet: behind a rule compile on the pool, a trim can wait for seconds,
            # and the sweeps must not
            trim_running = self.heap_trim is not None and not self.heap_trim.dead
            if sweeps % HEAP_TRIM_EVERY_SWEEPS == 0 and not trim_running:
                self.heap_trim = gevent.spawn(self.trim_heap)

    def sweep_once(self) -> None:
        # the agent sweeps the current applications and the retired ones still holding
        # pre-reload transactions, and drops those once they are empty
        try:
            self.agent.sweep()
        except Exception:
            logger.exception("sweeping expired transactions failed")

    def trim_heap(self) -> None:
        """Return the engine's freed heap to the kernel. malloc_trim takes the malloc arenas'
        locks in turn: a pool thread waits for them, the hub does not."""
        took: float = self.pool.apply(_timed_heap_trim)
        if took >= SLOW_HEAP_TRIM_S:
            logger.debug("returning the freed heap to the kernel took {:.1f} ms", took * 1000)

    def stop(self) -> None:
        """Stop a trim still running (the sweep loop's greenlet is its owner's to kill)."""
        if self.heap_trim is not None:
            self.heap_trim.kill(block=False)


def _timed_heap_trim() -> float:
    # on a pool thread: no logging here (loguru's lock may be gevent's)
    started = time.monotonic()
    waf.trim_heap()
    return time.monotonic() - started


__all__ = ["Sweeper"]
