"""The floor under the hub: the hub's CPU per transaction for the agent and for
``bench.floor_agent`` (gevent + the project's codec, no application, no engine), side by side
over the same raw SPOP load, in alternating rounds.

Why: the issue's CPU target leaves the agent ``(CPU_TARGET - 1) x`` the engine's CPU per
request for everything it does beyond the engine. For a clean GET that is ~0.23 ms here; this
mode measures how much of it the architecture itself (one Python hub serving the sockets,
pure-Python SPOP) already takes before any application code runs. Measures only.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from bench.agent_config import RULE_SETS
from bench.procstat import thread_cpu_seconds
from bench.scenarios import SCENARIOS, Scenario
from bench.spop_client import SpopLoad
from bench.stack import ROOT, start_agent
from bench.stats import ratio
from bench.throughput import Progress
from tests.support.ports import free_port, wait_for_port
from tests.support.process import ManagedProcess

DEFAULT_TRANSACTIONS = 20_000  # per round and side: ~10 s for the agent with the small rules
DEFAULT_ROUNDS = 3
# HAProxy 2.6 keeps about one NOTIFY in flight per connection (docs/performance.md item 3), so
# the load does too: every message costs the hub a wake-up, a recv() and a send()
CONNECTIONS = 64
WINDOW = 1
WARMUP_TRANSACTIONS = 2_000


def clean_get_plan(_n: int) -> tuple[Scenario, bool]:
    """Every transaction a clean GET whose response is sent too: two messages, as through
    HAProxy with response checks on."""
    return SCENARIOS["clean_get"], True


def start_floor_agent(workdir: Path, port: int) -> ManagedProcess:
    process = ManagedProcess(
        "floor-agent",
        [sys.executable, "-m", "bench.floor_agent", str(port)],
        log_path=workdir / "floor-agent.out",
        cwd=ROOT,
    ).start()
    try:
        wait_for_port("127.0.0.1", port, timeout=60, process=process)
    except BaseException:
        process.stop()
        raise
    return process


def hub_cost(pid: int, port: int, transactions: int) -> dict[str, Any]:
    """Run ``transactions`` clean GETs against the server on ``port`` (process ``pid``) and
    return its main thread's CPU per transaction. Every ACK is checked: a wrong verdict or an
    error code makes the measurement void (raises)."""
    load = SpopLoad("127.0.0.1", port, connections=CONNECTIONS, window=WINDOW, plan=clean_get_plan)
    try:
        load.run(WARMUP_TRANSACTIONS)
        before, started = thread_cpu_seconds(pid), time.monotonic()
        load.run(transactions)
        after, elapsed = thread_cpu_seconds(pid), time.monotonic() - started
    finally:
        load.close()
    tally = load.tally
    if tally.wrong_verdicts or tally.errors:
        raise RuntimeError(f"bad answers: {tally.as_dict()}")
    process_cpu = sum(after.values()) - sum(before.get(tid, 0.0) for tid in after)
    return {
        # the main thread is the gevent hub (procstat.main_thread_share)
        "hub_us_per_tx": 1e6 * (after.get(pid, 0.0) - before.get(pid, 0.0)) / transactions,
        "process_us_per_tx": 1e6 * process_cpu / transactions,
        "tx_per_s": transactions / elapsed,
    }


def run_floor(
    *,
    transactions: int = DEFAULT_TRANSACTIONS,
    rounds: int = DEFAULT_ROUNDS,
    progress: Progress = print,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        workdir = Path(tmp)
        agent_port, floor_port = free_port(), free_port()
        # the small rules: the engine's own cost is not what this mode compares; the
        # rule-match log off as in the soak (clean GETs match nothing anyway)
        agent = start_agent(
            workdir, agent_port, directives=RULE_SETS["small"], log_level="info",
            app_log_level="fatal",
        )  # fmt: skip
        try:
            floor = start_floor_agent(workdir, floor_port)
            try:
                measured: list[dict[str, Any]] = []
                for number in range(1, rounds + 1):
                    row: dict[str, Any] = {
                        "agent": hub_cost(agent.pid, agent_port, transactions),
                        "floor": hub_cost(floor.pid, floor_port, transactions),
                    }
                    row["hub_ratio"] = ratio(
                        row["agent"]["hub_us_per_tx"], row["floor"]["hub_us_per_tx"]
                    )
                    progress(
                        f"floor round {number}: hub {row['agent']['hub_us_per_tx']:.0f} us/tx "
                        f"(agent) vs {row['floor']['hub_us_per_tx']:.0f} (floor)"
                    )
                    measured.append(row)
            finally:
                floor.stop()
        finally:
            agent.stop(timeout=30)
    return {
        "transactions": transactions,
        "connections": CONNECTIONS,
        "window": WINDOW,
        "rounds": measured,
        "agent_hub_us_per_tx": median(r["agent"]["hub_us_per_tx"] for r in measured),
        "floor_hub_us_per_tx": median(r["floor"]["hub_us_per_tx"] for r in measured),
        "hub_ratio": median(r["hub_ratio"] for r in measured if r["hub_ratio"] is not None),
    }
