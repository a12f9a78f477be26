"""What each SPOE connection HAProxy leaves open costs the agent, two trees side by side.

Through HAProxy 2.6, each burst of concurrent requests opens about one new SPOE connection per
concurrent stream even while earlier ones sit idle, and every one stays open for the
spoe-agent's ``timeout idle`` (2 min in the shipped coraza.cfg): at c=128 the bench's rounds
left ~1,000 connections open and the agent's RSS climbed with them (docs/performance.md change
51). This opens connections in batches, each connection running a burst of pipelined
transactions (HAProxy's window of 20) and then staying open and idle, and reads the agent's RSS
after each batch; the cost per connection is the slope from the first batch to the last (the
first batch also pays the engine's and the caches' warm-up).

Usage (from the tree under test; the other tree runs from its own directory)::

    .venv/bin/python -m bench.idle_connections /path/to/base [--rounds 3] [--rules small|crs]

Measures only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from bench.agent_config import RULE_SETS
from bench.floor_ab import start_tree_agent
from bench.procstat import rss_bytes
from bench.spop_client import MAX_WINDOW, SpopLoad, soak_plan
from bench.stack import ROOT

KIB = 1024
MIB = 1024 * KIB
# past the greenlets' linger (workers.LINGER_S) and a reader's dormancy (connection.py)
SETTLE_S = 7.0


def rss_by_batch(pid: int, port: int, *, batches: int, per_batch: int) -> list[tuple[int, float]]:
    """(connections open, RSS MiB) after each batch; every connection stays open until all
    batches ran, and runs ``2 * MAX_WINDOW`` transactions (a pipelined burst) first."""
    loads: list[SpopLoad] = []
    rows = []
    try:
        for number in range(1, batches + 1):
            load = SpopLoad(
                "127.0.0.1", port, connections=per_batch, window=MAX_WINDOW, plan=soak_plan()
            )
            loads.append(load)
            load.run(per_batch * 2 * MAX_WINDOW)
            time.sleep(SETTLE_S)
            rows.append((number * per_batch, rss_bytes(pid) / MIB))
    finally:
        for load in loads:
            load.close()
    return rows


def kib_per_connection(rows: list[tuple[int, float]]) -> float:
    """The RSS slope from the first batch to the last, in KiB per connection."""
    (first_conns, first_rss), (last_conns, last_rss) = rows[0], rows[-1]
    return (last_rss - first_rss) * KIB / (last_conns - first_conns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rules", choices=sorted(RULE_SETS), default="small")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--per-batch", type=int, default=200)
    args = parser.parse_args()
    trees = {"base": args.base.resolve(), "new": ROOT}
    slopes: dict[str, list[float]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="bench-idle-connections-") as tmp:
        for number in range(1, args.rounds + 1):
            order = list(trees) if number % 2 else list(reversed(trees))
            for name in order:
                agent = start_tree_agent(trees[name], Path(tmp) / f"{name}{number}", args.rules)
                try:
                    assert agent.port is not None
                    time.sleep(1.0)
                    rest = rss_bytes(agent.pid) / MIB
                    rows = rss_by_batch(
                        agent.pid, agent.port, batches=args.batches, per_batch=args.per_batch
                    )
                finally:
                    agent.stop(timeout=30)
                slope = kib_per_connection(rows)
                slopes[name].append(slope)
                shown = " ".join(f"{conns}:{rss:.1f}" for conns, rss in rows)
                sys.stdout.write(
                    f"round {number} {name}: rest {rest:.1f} MiB, by connections {shown} MiB, "
                    f"{slope:.1f} KiB per connection\n"
                )
                sys.stdout.flush()
    for name, values in slopes.items():
        sys.stdout.write(f"{name} median {median(values):.1f} KiB per connection\n")


if __name__ == "__main__":
    main()
