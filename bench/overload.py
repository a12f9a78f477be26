"""Overload: offer at least twice what the agent can do and check that it sheds cleanly.

wrk is closed loop, so the offered load is set by the number of connections: with N
connections and the agent answering a shed message at once, the offered rate settles near
N / (processing budget), far above capacity. Every request must get 403, 200 or 500 (shed =
error 1005 -> HAProxy's deny rule), none may pass uninspected, and the agent's memory and
threads must stay bounded (sampled every half second). Measures only.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.procstat import rss_bytes, thread_count
from bench.scenarios import SCENARIOS
from bench.stack import Stack
from bench.stats import ratio
from bench.throughput import Progress, measure_agent

ANSWERED_STATUSES = {200, 403, 500}


def run_overload(
    stack: Stack,
    *,
    capacity_rps: float,
    scenario: str = "clean_get",
    connections: int = 1024,
    duration_s: float = 20.0,
    wrk_threads: int = 2,
    progress: Progress = print,
) -> dict[str, Any]:
    """``capacity_rps`` is the agent's measured req/s for the same scenario (throughput run)."""
    rss: list[int] = []
    threads: list[int] = []
    stop = threading.Event()

    def sampler() -> None:
        while not stop.wait(0.5):
            try:
                rss.append(rss_bytes(stack.agent.pid))
                threads.append(thread_count(stack.agent.pid))
            except OSError:
                return  # the agent died; the run reports it

    rss_before = rss_bytes(stack.agent.pid)
    watcher = threading.Thread(target=sampler, daemon=True)
    watcher.start()
    progress(f"overload {scenario}: {connections} connections, {duration_s:g}s")
    try:
        run = measure_agent(
            stack,
            SCENARIOS[scenario],
            connections=connections,
            duration_s=duration_s,
            wrk_threads=wrk_threads,
        )
    finally:
        stop.set()
        watcher.join()
    time.sleep(2)  # what was queued drains; the agent must still be alive and answering
    stack.agent.raise_if_exited()
    counts = run["haproxy"]
    answered = sum(
        n for status, n in counts["by_status"].items() if int(status) in ANSWERED_STATUSES
    )
    judged = sum(n for status, n in counts["by_status"].items() if int(status) in (200, 403))
    offered = counts["requests"] / run["duration_s"] if run["duration_s"] else 0.0
    progress(
        f"  -> offered {offered:.0f} req/s ({ratio(offered, capacity_rps) or 0:.1f}x), "
        f"shed {counts['shed']}, uninspected {counts['uninspected']}"
    )
    return {
        **run,
        "capacity_rps": capacity_rps,
        "offered_rps": offered,
        "offered_ratio": ratio(offered, capacity_rps),
        "unanswered": counts["requests"]
        - counts["client_aborts"]
        - answered
        + run["wrk_errors"]["timeout"],
        # requests the rules judged (200/403) per second while overloaded: shedding must not
        # eat the capacity it protects
        "goodput_rps": judged / run["duration_s"] if run["duration_s"] else 0.0,
        "goodput_ratio": ratio(judged / run["duration_s"], capacity_rps)
        if run["duration_s"]
        else None,
        "rss_before_bytes": rss_before,
        "rss_max_bytes": max(rss, default=rss_before),
        "threads_max": max(threads, default=0),
    }
