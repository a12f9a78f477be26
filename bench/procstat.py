"""CPU time and resident memory of a process, read from /proc (Linux only).

Only reads; never signals or waits for a process. CPU is utime + stime of /proc/<pid>/stat
(every thread of the process, children excluded), so the agent's engine threads count.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    cpu_s: float  # user + system seconds of every thread so far
    wall_s: float  # time.monotonic() when read


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = raw[raw.rindex(b")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / CLOCK_TICKS


def sample_cpu(pid: int) -> CpuSample:
    return CpuSample(cpu_seconds(pid), time.monotonic())


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a master and its workers)."""
    found = [pid]
    for current in found:
        for task in os.listdir(f"/proc/{current}/task"):
            try:
                with open(f"/proc/{current}/task/{task}/children") as f:
                    found.extend(int(child) for child in f.read().split())
            except FileNotFoundError:
                continue
    return found


def tree_cpu_seconds(pid: int) -> dict[int, tuple[float, float]]:
    """Per process of ``pid``'s tree: (CPU seconds of every thread, of its main thread)."""
    out = {}
    for process in process_tree(pid):
        try:
            out[process] = (cpu_seconds(process), thread_cpu_seconds(process).get(process, 0.0))
        except FileNotFoundError:
            continue  # ended meanwhile
    return out


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid`` (thread id -> utime + stime)."""
    out: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            continue  # the thread ended between listdir and open
        fields = raw[raw.rindex(b")") + 2 :].split()
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return out


def main_thread_share(pid: int, before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds the main thread (tid == pid: the gevent hub) used between two samples."""
    return after.get(pid, 0.0) - before.get(pid, 0.0)


def tree_rss_bytes(pid: int) -> int:
    """VmRSS summed over ``pid``'s tree (a master and its workers; pages they share count once
    per process, as each process's RSS counts them)."""
    total = 0
    for process in process_tree(pid):
        try:
            total += rss_bytes(process)
        except FileNotFoundError:
            continue  # ended meanwhile
    return total


class PeakRss:
    """The highest RSS of a process seen between ``start()`` and ``stop()``, read every
    ``interval_s`` by a background thread (docs/performance.md change 36: the RSS after a run
    hides the peak during it, where the issue's "RSS under c=128" is).

    With ``tree``, each sample is the sum over the process and its descendants at that moment
    (``tree_rss_bytes``): a master and its workers are one agent, and the peak of the sum is
    what the deployment needs at once; the per-process peaks need not coincide, so their sum
    would overstate it. A sample is taken at ``start()`` and at ``stop()`` as well, so a load
    shorter than one interval is still seen."""

    def __init__(self, pid: int, *, interval_s: float = 0.02, tree: bool = False) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self._read = tree_rss_bytes if tree else rss_bytes
        self.peak_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PeakRss:
        self._stop.clear()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop sampling (once: a second call changes nothing); the peak in bytes."""
        if self._thread is None:
            return self.peak_bytes
        self._stop.set()
        self._thread.join()
        self._thread = None
        self._sample()
        return self.peak_bytes

    def __enter__(self) -> PeakRss:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        try:
            value = self._read(self.pid)
        except FileNotFoundError:  # the process ended: nothing more to see
            return
        self.samples += 1
        self.peak_bytes = max(self.peak_bytes, value)
