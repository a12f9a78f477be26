"""Throughput side by side: per scenario, the bare-engine ceiling and then the agent through
HAProxy (wrk, closed loop) at each concurrency, in the same run so both see the same machine.

Per agent run it records wrk's numbers, HAProxy's per-request log tallies (SPOE errors,
uninspected passes, statuses), the agent's CPU seconds from /proc, and its RSS: after the run and
its peak during it (sampled every 20 ms, ``procstat.PeakRss``). The ratios are the
report's job (``report``); this module only measures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.haproxy_log import count_lines
from bench.procstat import (
    PeakRss,
    main_thread_share,
    rss_bytes,
    sample_cpu,
    thread_cpu_seconds,
)
from bench.scenarios import LEAK_PAGE_PATH, SCENARIOS, Scenario
from bench.stack import ROOT, Stack, probe_status
from bench.wrk import run_wrk
from coraza_spoa_py.allocator import PRELOADED_ENV, mapped_allocator

Progress = Callable[[str], None]


def run_ceiling_process(
    scenario: Scenario, *, threads: int, duration_s: float, preload: str | None = None
) -> dict[str, Any]:
    """``python -m bench.ceiling`` in its own process: its CPU and RSS are the engine's alone.
    ``preload``: an allocator library in its ``LD_PRELOAD`` (the agent's, for the like-for-like
    ceiling; docs/performance.md change 53), else the C library's, as the C agents run."""
    environ = dict(os.environ)
    for name in ("LD_PRELOAD", PRELOADED_ENV):
        environ.pop(name, None)
    if preload is not None:
        environ["LD_PRELOAD"] = preload
    done = subprocess.run(
        [
            sys.executable, "-m", "bench.ceiling",
            "--scenario", scenario.name,
            "--threads", str(threads),
            "--duration", str(duration_s),
        ],
        capture_output=True, text=True, cwd=ROOT, timeout=duration_s + 300, check=False,
        env=environ,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"ceiling failed for {scenario.name}:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def agent_allocator_of(stack: Stack) -> str | None:
    """The allocator library the stack's agent has mapped (jemalloc), or None."""
    return mapped_allocator(f"/proc/{stack.agent.pid}/maps")


def merge_ceilings(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of bracketing ceiling runs (req/s, CPU per request), each run kept as well."""
    n = len(runs)
    return {
        "scenario": runs[0]["scenario"],
        "rps": sum(r["rps"] for r in runs) / n,
        "engine_cpu_ms_per_request": sum(r["engine_cpu_ms_per_request"] for r in runs) / n,
        "process_cpu_ms_per_request": sum(r["process_cpu_ms_per_request"] for r in runs) / n,
        "rps_spread": max(r["rps"] for r in runs) / min(r["rps"] for r in runs)
        if min(r["rps"] for r in runs) > 0
        else None,
        "wrong_verdicts": sum(r["wrong_verdicts"] for r in runs),
        "runs": runs,
    }


def measure_agent(
    stack: Stack,
    scenario: Scenario,
    *,
    connections: int,
    duration_s: float,
    wrk_threads: int,
) -> dict[str, Any]:
    """One wrk run against the stack, with the agent's and HAProxy's CPU over the same window."""
    offset = stack.log_offset()
    agent0, haproxy0 = sample_cpu(stack.agent.pid), sample_cpu(stack.haproxy.pid)
    threads0 = thread_cpu_seconds(stack.agent.pid)
    # the "RSS under c=128" is during the load (docs/performance.md change 36); the
    # whole process tree, should the agent run workers
    with PeakRss(stack.agent.pid, tree=True) as peak:
        wrk = run_wrk(
            stack.url,
            scenario,
            connections=connections,
            duration_s=duration_s,
            threads=wrk_threads,
            workdir=stack.workdir,
        )
    agent1, haproxy1 = sample_cpu(stack.agent.pid), sample_cpu(stack.haproxy.pid)
    hub_cpu = main_thread_share(stack.agent.pid, threads0, thread_cpu_seconds(stack.agent.pid))
    rss = rss_bytes(stack.agent.pid)
    counts = count_lines(stack.log_lines_since(offset), scenario.expect_status)
    requests = counts.requests or wrk["requests"]
    wall = wrk["duration_us"] / 1e6
    return {
        "scenario": scenario.name,
        "connections": connections,
        "requests": wrk["requests"],
        "duration_s": wall,
        "rps": wrk["requests"] / wall if wall else 0.0,
        "latency_ms": {k: v / 1000 for k, v in wrk["latency_us"].items()},
        "wrk_errors": wrk["errors"],
        "haproxy": counts.as_dict(),
        "agent_cpu_s": agent1.cpu_s - agent0.cpu_s,
        "agent_cpu_ms_per_request": 1000 * (agent1.cpu_s - agent0.cpu_s) / requests
        if requests
        else 0.0,
        # the gevent hub (main thread): sockets, codec, routing, logging; the rest of the
        # agent's CPU is on the engine threads
        "hub_cpu_ms_per_request": 1000 * hub_cpu / requests if requests else 0.0,
        "agent_cpu_cores": (agent1.cpu_s - agent0.cpu_s) / (agent1.wall_s - agent0.wall_s),
        "haproxy_cpu_ms_per_request": 1000 * (haproxy1.cpu_s - haproxy0.cpu_s) / requests
        if requests
        else 0.0,
        "wrk_cpu_ms_per_request": 1000 * wrk["cpu_s"] / requests if requests else 0.0,
        "agent_rss_bytes": rss,  # after the run
        "agent_rss_peak_bytes": peak.peak_bytes,  # during it
    }


def run_throughput(
    stack: Stack,
    scenarios: Sequence[str],
    concurrencies: Sequence[int],
    *,
    duration_s: float,
    ceiling_duration_s: float,
    engine_threads: int,
    wrk_threads: int,
    rounds: int = 1,
    progress: Progress = print,
) -> dict[str, Any]:
    """For each scenario: the ceiling, then the agent at each concurrency, then the ceiling
    again (side by side); ``rounds`` times, the scenarios alternating within each round, so a
    neighbour's load that comes and goes lands on one round of a scenario, not on all of it.
    Each agent run carries its round and the mean of its round's two ceiling runs
    (``report.throughput_rows`` takes the median of the rounds' ratios)."""
    rows: list[dict[str, Any]] = []
    ceiling_runs: dict[str, list[dict[str, Any]]] = {}
    alike_runs: dict[str, list[dict[str, Any]]] = {}
    # the agent's allocator (jemalloc when installed, docs/operations.md "Memory allocator"):
    # the ceiling runs on the C library's, as the C agents do, and once a round on the
    # agent's too, so the report also shows the agent's own cost like for like
    agent_allocator = agent_allocator_of(stack)
    progress(f"agent allocator: {agent_allocator or 'the C library'}")
    leak_status = probe_status(stack, LEAK_PAGE_PATH)
    progress(f"probe: a page leaking PHP source came back {leak_status} (403 = bodies inspected)")
    # warm-up: the first requests pay PCRE JIT compilation and cache population in the agent
    measure_agent(
        stack, SCENARIOS["clean_get"], connections=8, duration_s=2, wrk_threads=wrk_threads
    )
    for round_no in range(1, rounds + 1):
        for name in scenarios:
            scenario = SCENARIOS[name]
            progress(
                f"round {round_no}/{rounds}, ceiling {name}: {engine_threads} engine threads, "
                f"{ceiling_duration_s:g}s"
            )
            before = run_ceiling_process(
                scenario, threads=engine_threads, duration_s=ceiling_duration_s
            )
            progress(f"  -> {before['rps']:.0f} req/s")
            runs = []
            for connections in concurrencies:
                progress(f"agent {name}: {connections} connections, {duration_s:g}s")
                time.sleep(1)  # let the previous run's connections and transactions settle
                row = measure_agent(
                    stack,
                    scenario,
                    connections=connections,
                    duration_s=duration_s,
                    wrk_threads=wrk_threads,
                )
                progress(
                    f"  -> {row['rps']:.0f} req/s, p99 {row['latency_ms']['p99']:.1f} ms, "
                    f"hub {row['hub_cpu_ms_per_request']:.3f} ms/req, "
                    f"RSS peak {row['agent_rss_peak_bytes'] / 2**20:.1f} MiB, "
                    f"uninspected {row['haproxy']['uninspected']}, "
                    f"SPOE errors {row['haproxy']['spoe_errors']}"
                )
                runs.append(row)
            # the ceiling again after the agent runs: the two bracket them, so a neighbour's
            # load that came or went during the agent runs shows up as spread, not as a ratio
            after = run_ceiling_process(
                scenario, threads=engine_threads, duration_s=ceiling_duration_s
            )
            progress(f"ceiling {name} again: {after['rps']:.0f} req/s")
            bracket = merge_ceilings([before, after])
            del bracket["runs"]  # kept once, in the scenario's ceiling below
            alike = None
            if agent_allocator is not None:
                alike = run_ceiling_process(
                    scenario,
                    threads=engine_threads,
                    duration_s=ceiling_duration_s,
                    preload=agent_allocator,
                )
                progress(f"ceiling {name} on the agent's allocator: {alike['rps']:.0f} req/s")
                alike_runs.setdefault(name, []).append(alike)
            for row in runs:
                row["round"] = round_no
                row["ceiling"] = bracket
                if alike is not None:
                    row["ceiling_same_allocator"] = {
                        key: alike[key]
                        for key in (
                            "rps",
                            "engine_cpu_ms_per_request",
                            "process_cpu_ms_per_request",
                        )
                    }
            rows += runs
            ceiling_runs.setdefault(name, []).extend([before, after])
    ceilings = {name: merge_ceilings(runs) for name, runs in ceiling_runs.items()}
    return {
        "agent_allocator": agent_allocator,
        "ceiling_same_allocator": {name: merge_ceilings(runs) for name, runs in alike_runs.items()},
        "engine_threads": engine_threads,
        "cores": os.cpu_count(),
        "duration_s": duration_s,
        "ceiling_duration_s": ceiling_duration_s,
        "rounds": rounds,
        "ceiling": ceilings,
        "response_body_probe_status": leak_status,
        "agent": rows,
    }
