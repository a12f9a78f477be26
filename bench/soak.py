"""Soak: many transactions straight over SPOP, the agent's RSS sampled as they go.

HAProxy is left out on purpose: a million transactions through HAProxy + wrk take far longer
on two shared cores, and what can leak is the agent's own per-transaction state (codec buffers,
greenlets, the transaction cache, native transactions), which the raw SPOP client exercises the
same way, response checks and TTL expiry included (``spop_client.soak_plan``). Measures only.
"""

from __future__ import annotations

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
# the issue: RSS after 1 M within +5 % of RSS after 10 k (and at least two TTLs, run_soak)
DEFAULT_BASELINE = 10_000
DEFAULT_SAMPLE_EVERY = 50_000
# short, so that the orphaned transactions (no response ever sent) expire during the run and
# the cache's expiry path is soaked too
DEFAULT_TTL_MS = 2_000


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
    # the baseline is taken once the cache's population is steady: past `baseline`
    # transactions AND two TTLs into the run, when the transactions left without a response
    # expire as fast as new ones are left (at 10 k tx/s, 10 k transactions come after 1 s, half
    # a TTL: the cache was still filling, and that fill read as growth)
    steady = [
        s for s in samples if s["transactions"] >= baseline and s["elapsed_s"] >= 2 * ttl_ms / 1000
    ]
    base_sample = steady[0] if steady else None
    base = base_sample["rss_bytes"] if base_sample else None
    growth = ratio(samples[-1]["rss_bytes"] - base, base) if base and stalled is None else None
    return {
        "transactions": done,
        "transactions_planned": transactions,
        "stalled": stalled,
        "baseline_transactions": base_sample["transactions"] if base_sample else baseline,
        "rules": rules,
        "connections": connections,
        "window": window,
        "transaction_ttl_ms": ttl_ms,
        "elapsed_s": elapsed,
        "agent_cpu_ms_per_transaction": 1000 * agent_cpu / done if done else None,
        "samples": samples,
        "rss_growth": growth,
        "client": load.tally.as_dict(),
        "agent_totals": totals,
    }
