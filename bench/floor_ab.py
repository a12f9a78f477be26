"""Two trees of the agent side by side over the same raw SPOP load, in alternating rounds: the
hub's CPU per clean GET transaction (``floor.hub_cost``) and the agent's RSS at rest, with 128
connections open, and at its peak under them (issue 17, docs/performance.md "Issue 17").

Usage (from the tree under test; the other tree is run from its own directory, so its code is
what runs)::

    .venv/bin/python -m bench.floor_ab /path/to/base [--rounds 3] [--rules small|crs]

Measures only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from bench.agent_config import RULE_SETS
from bench.floor import clean_get_plan, hub_cost
from bench.procstat import PeakRss, rss_bytes
from bench.spop_client import SpopLoad
from bench.stack import ROOT, start_agent
from tests.support.agent import AgentProcess
from tests.support.ports import free_port

MEMORY_CONNECTIONS = 128
MIB = 1024 * 1024


def start_tree_agent(tree: Path, workdir: Path, rules: str) -> AgentProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    return start_agent(
        workdir, free_port(), cwd=tree, directives=RULE_SETS[rules], log_level="info",
        app_log_level="fatal",
    )  # fmt: skip


def memory(pid: int, port: int, transactions: int) -> dict[str, float]:
    """RSS (MiB) at rest, peak while ``MEMORY_CONNECTIONS`` raw connections run
    ``transactions`` clean GETs one at a time each, and with them still open afterwards."""
    time.sleep(1.0)
    rest = rss_bytes(pid)
    peak = PeakRss(pid).start()  # the sampler the throughput bench uses (change 36)
    load = SpopLoad(
        "127.0.0.1", port, connections=MEMORY_CONNECTIONS, window=1, plan=clean_get_plan
    )
    try:
        load.run(transactions)
        peak.stop()
        time.sleep(1.0)
        held = rss_bytes(pid)
    finally:
        peak.stop()
        load.close()
    return {"rest": rest / MIB, "peak": peak.peak_bytes / MIB, "open": held / MIB}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--transactions", type=int, default=10_000)
    parser.add_argument("--rules", choices=sorted(RULE_SETS), default="small")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    trees = {"base": args.base.resolve(), "new": ROOT}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory(prefix="bench-floor-ab-") as tmp:
        for number in range(1, args.rounds + 1):
            # alternate which tree goes first
            order = list(trees) if number % 2 else list(reversed(trees))
            for name in order:
                agent = start_tree_agent(trees[name], Path(tmp) / f"{name}{number}", args.rules)
                try:
                    assert agent.port is not None
                    row: dict[str, Any] = {}
                    if not args.no_memory:  # first: at rest means a fresh agent
                        row.update(memory(agent.pid, agent.port, args.transactions // 4))
                    row.update(hub_cost(agent.pid, agent.port, args.transactions))
                finally:
                    agent.stop(timeout=30)
                results[name].append(row)
                shown = " ".join(f"{k}={v:.1f}" for k, v in row.items() if k != "process_us_per_tx")
                sys.stdout.write(f"round {number} {name}: {shown}\n")
                sys.stdout.flush()
    for name, rows in results.items():
        keys = [k for k in rows[0] if k != "process_us_per_tx"]
        medians = " ".join(f"{k}={median(r[k] for r in rows):.1f}" for k in keys)
        sys.stdout.write(f"{name} {medians}\n")


if __name__ == "__main__":
    main()
