"""Soak: many transactions straight over SPOP, the agent's RSS sampled as they go.

HAProxy is left out on purpose: a million transactions through HAProxy + wrk take far longer
on two shared cores, and what can leak is the agent's own per-transaction state (codec buffers,
greenlets, the transaction cache, native transactions), which the raw SPOP client exercises the
same way, response checks and TTL expiry included (``spop_client.soak_plan``). Measures only.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.agent_config import RULE_SETS, read_agent_totals
from bench.procstat import cpu_seconds, rss_bytes
from bench.profile import py_spy_dump
from bench.spop_client import SpopLoad, soak_plan
from bench.stack import start_agent
from bench.stats import ratio
from bench.throughput import Progress
from tests.support.ports import free_port

DEFAULT_TRANSACTIONS = 1_000_000
# no baseline sample before this many transactions (nor before two TTLs, ``rss_growth``)
DEFAULT_BASELINE = 10_000
DEFAULT_SAMPLE_EVERY = 50_000
# short, so that the orphaned transactions (no response ever sent) expire during the run and
# the cache's expiry path is soaked too
DEFAULT_TTL_MS = 2_000
# RSS is compared as the median of two windows of samples, each a fraction of the planned run
# (docs/performance.md "Soak"): one sample moves ±8 MiB with the allocator, and the heap of an
# agent doing ~11 k transactions/s keeps growing for ~150 k transactions before it is flat
BASELINE_WINDOW = (0.2, 0.4)
END_WINDOW = (0.8, 1.0)


def rss_growth(
    samples: list[dict[str, Any]], planned: int, baseline: int, ttl_ms: int
) -> dict[str, Any] | None:
    """RSS growth from the steady part of the run to its end, or None without samples to tell.

    The baseline window starts past ``baseline`` transactions and two TTLs into the run (the
    transactions left without a response stay open for a TTL, so their population grows for
    the first one) and at 20 % of the planned transactions; it ends at 40 %. The end window is
    the last 20 %. Each is the median of its samples: a leak of a few bytes per transaction
    still shows over the ~60 % of the run between the two windows' middles."""

    def within(sample: dict[str, Any], window: tuple[float, float]) -> bool:
        done: int = sample["transactions"]
        return window[0] * planned <= done <= window[1] * planned

    steady = [
        s for s in samples if s["transactions"] >= baseline and s["elapsed_s"] >= 2 * ttl_ms / 1000
    ]
    base = [s for s in steady if within(s, BASELINE_WINDOW)]
    end = [s for s in samples if within(s, END_WINDOW)]
    if not base or not end or samples[-1]["transactions"] < planned:
        return None
    base_rss = statistics.median(s["rss_bytes"] for s in base)
    end_rss = statistics.median(s["rss_bytes"] for s in end)
    return {
        "baseline_window": [base[0]["transactions"], base[-1]["transactions"]],
        "end_window": [end[0]["transactions"], end[-1]["transactions"]],
        "baseline_rss_bytes": base_rss,
        "end_rss_bytes": end_rss,
        "growth": ratio(end_rss - base_rss, base_rss),
    }


def run_soak(
    *,
    transactions: int = DEFAULT_TRANSACTIONS,
    baseline: int = DEFAULT_BASELINE,
    sample_every: int = DEFAULT_SAMPLE_EVERY,
    rules: str = "small",
    connections: int = 4,
    window: int = 16,
    ttl_ms: int = DEFAULT_TTL_MS,
    progress: Progress = print,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        port = free_port()
        # rule-match log off: every blocked attack writes a record at error level, and a
        # million transactions would write ~100 MB for nothing the soak looks at. The agent's
        # own log stays at info for its shutdown counters (opened = closed, expired).
        agent = start_agent(
            Path(tmp), port, directives=RULE_SETS[rules], transaction_ttl_ms=ttl_ms,
            log_level="info", app_log_level="fatal",
        )  # fmt: skip
        try:
            load = SpopLoad(
                "127.0.0.1", port, connections=connections, window=window, plan=soak_plan()
            )
            samples: list[dict[str, Any]] = []
            started = time.monotonic()
            cpu0 = cpu_seconds(agent.pid)
            done = 0
            checkpoints = sorted({baseline, *range(sample_every, transactions, sample_every)})
            checkpoints = [c for c in checkpoints if c < transactions] + [transactions]
            stalled: str | None = None
            for checkpoint in checkpoints:
                try:
                    load.run(checkpoint - done)
                except TimeoutError as exc:
                    # the agent stopped answering: keep what was measured, and say where
                    stalled = f"{exc}; agent threads:\n{py_spy_dump(agent.pid)}"
                    progress(f"soak stalled after {load.tally.transactions_done}: {exc}")
                    break
                done = checkpoint
                agent.raise_if_exited()
                sample = {
                    "transactions": done,
                    "rss_bytes": rss_bytes(agent.pid),
                    "elapsed_s": time.monotonic() - started,
                }
                samples.append(sample)
                progress(
                    f"soak {done}: RSS {sample['rss_bytes'] / 2**20:.1f} MiB, "
                    f"{done / sample['elapsed_s']:.0f} tx/s"
                )
            elapsed = time.monotonic() - started
            agent_cpu = cpu_seconds(agent.pid) - cpu0
            if stalled is None:
                load.close()
        finally:
            agent.stop(timeout=30)
            totals = read_agent_totals(Path(tmp))
    # a stalled run stops short of ``transactions``: no figure (``rss_growth``)
    growth = rss_growth(samples, transactions, baseline, ttl_ms)
    return {
        "transactions": done,
        "transactions_planned": transactions,
        "stalled": stalled,
        "baseline_transactions": growth["baseline_window"][0] if growth else baseline,
        "rules": rules,
        "connections": connections,
        "window": window,
        "transaction_ttl_ms": ttl_ms,
        "elapsed_s": elapsed,
        "agent_cpu_ms_per_transaction": 1000 * agent_cpu / done if done else None,
        "samples": samples,
        "rss_growth": growth["growth"] if growth else None,
        "rss_growth_windows": growth,
        "client": load.tally.as_dict(),
        "agent_totals": totals,
    }
