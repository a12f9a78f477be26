"""Multi-worker rows: clean GET at 128 connections through HAProxy, one agent with 1 worker next
to one with 2 (docs/architecture.md "Process model"), runs alternating in the same bench run.

Both stacks (agent + HAProxy each) are up at once; each round runs wrk against one then the
other, the order swapped every round, so a neighbour's load that comes or goes hits both sides
alike. Per run: req/s, the CPU of the agent's whole process tree per request (master and
workers), of it on the workers' hubs (main threads) and on the engine threads. For the 2-worker
agent, the master's summed metrics give the share of responses handed to another worker; the
CPU one hand-off costs comes from ``bench.handoff_cost``. The report's projection per core
count is docs/performance.md's arithmetic on these numbers. Measures only.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from typing import Any

from bench.haproxy_log import count_lines
from bench.procstat import tree_cpu_seconds
from bench.scenarios import SCENARIOS
from bench.stack import ROOT, Stack, running_stack
from bench.throughput import Progress
from bench.wrk import run_wrk
from tests.support.httpclient import request
from tests.support.ports import free_port

CONNECTIONS = 128
SCENARIO = "clean_get"
ROUTES = ("local", "handed_off", "fallback", "received")


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(
            f'{key}="{value}"' in line for key, value in labels.items()
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _routes(metrics_port: int | None) -> dict[str, float]:
    if metrics_port is None:
        return {}
    text = request(metrics_port, "/metrics", timeout=10).body.decode()
    counts = {r: _metric(text, "coraza_spoa_py_responses_routed_total", route=r) for r in ROUTES}
    counts["responses"] = _metric(text, "coraza_spoa_py_messages_total", message="coraza-res")
    return counts


def measure(
    stack: Stack, workers: int, metrics_port: int | None, *, duration_s: float, wrk_threads: int
) -> dict[str, Any]:
    """One wrk run; CPU summed over the agent's process tree."""
    offset = stack.log_offset()
    routes0, cpu0 = _routes(metrics_port), tree_cpu_seconds(stack.agent.pid)
    wrk = run_wrk(
        stack.url,
        SCENARIOS[SCENARIO],
        connections=CONNECTIONS,
        duration_s=duration_s,
        threads=wrk_threads,
        workdir=stack.workdir,
    )
    cpu1, routes1 = tree_cpu_seconds(stack.agent.pid), _routes(metrics_port)
    counts = count_lines(stack.log_lines_since(offset), SCENARIOS[SCENARIO].expect_status)
    requests = counts.requests or wrk["requests"]
    total = sum(cpu1[p][0] - cpu0[p][0] for p in cpu1 if p in cpu0)
    hubs = sum(cpu1[p][1] - cpu0[p][1] for p in cpu1 if p in cpu0 and p != stack.agent.pid)
    if workers == 1:
        hubs = cpu1[stack.agent.pid][1] - cpu0[stack.agent.pid][1]
    delta = {k: routes1[k] - routes0[k] for k in routes1}
    wall = wrk["duration_us"] / 1e6
    return {
        "workers": workers,
        "requests": wrk["requests"],
        "rps": wrk["requests"] / wall if wall else 0.0,
        "p99_ms": wrk["latency_us"]["p99"] / 1000,
        "uninspected": counts.as_dict()["uninspected"],
        "spoe_errors": counts.as_dict()["spoe_errors"],
        "agent_cpu_us_per_request": 1e6 * total / requests if requests else 0.0,
        "hub_cpu_us_per_request": 1e6 * hubs / requests if requests else 0.0,
        "routes": delta,
        "handed_off_share": delta["handed_off"] / delta["responses"]
        if delta.get("responses")
        else None,
    }


def handoff_cost() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.handoff_cost"],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_workers(
    stack_options: dict[str, Any],
    *,
    rounds: int,
    duration_s: float,
    wrk_threads: int,
    progress: Progress = print,
) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    with ExitStack() as exits:
        metrics_port = free_port()
        options = {**stack_options, "extra_config": dict(stack_options.get("extra_config") or {})}
        one = exits.enter_context(running_stack(**options))
        options["extra_config"]["workers"] = 2
        args = ("-metrics-addr", f"127.0.0.1:{metrics_port}")
        two = exits.enter_context(running_stack(**options, agent_args=args))
        sides = [(one, 1, None), (two, 2, metrics_port)]
        for side in sides:  # warm-up: PCRE JIT, caches, every worker ready
            measure(*side, duration_s=2, wrk_threads=wrk_threads)
        for n in range(rounds):
            for stack, workers, port in sides if n % 2 == 0 else sides[::-1]:
                time.sleep(1)
                progress(f"workers: round {n + 1}/{rounds}, {workers} worker(s), {duration_s:g}s")
                run = measure(stack, workers, port, duration_s=duration_s, wrk_threads=wrk_threads)
                progress(f"  -> {run['rps']:.0f} req/s, handed off {run['handed_off_share']}")
                runs.append({"round": n + 1, **run})
    progress("workers: hand-off cost (bench.handoff_cost)")
    cost = handoff_cost()
    return {"connections": CONNECTIONS, "scenario": SCENARIO, "duration_s": duration_s,
            "runs": runs, "handoff": cost, **summarise(runs, cost)}  # fmt: skip


def summarise(runs: list[dict[str, Any]], cost: dict[str, Any]) -> dict[str, Any]:
    """Per round the 2-worker / 1-worker req/s ratio; medians of the per-request costs."""
    by_round: dict[int, dict[int, dict[str, Any]]] = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["workers"]] = run
    ratios = [r[2]["rps"] / r[1]["rps"] for r in by_round.values() if r[1]["rps"]]

    def median(workers: int, key: str) -> float:
        return float(statistics.median(r[key] for r in runs if r["workers"] == workers))

    share = statistics.median(r["handed_off_share"] or 0.0 for r in runs if r["workers"] == 2)
    return {
        "ratios": ratios,
        "ratio_median": statistics.median(ratios) if ratios else None,
        "rps_median": {w: median(w, "rps") for w in (1, 2)},
        "hub_cpu_us_per_request": {w: median(w, "hub_cpu_us_per_request") for w in (1, 2)},
        "agent_cpu_us_per_request": {w: median(w, "agent_cpu_us_per_request") for w in (1, 2)},
        "handed_off_share": share,
        "handoff_us_per_request": share * cost["cpu_us_per_handoff"],
    }


def markdown(section: dict[str, Any]) -> list[str]:
    out = [
        "",
        f"## Workers: clean GET at c={section['connections']}, 1 worker vs 2, alternating",
        "",
        "| round | workers | req/s | p99 ms | agent CPU µs/req | of it hubs | handed off | "
        "uninspected | SPOE errors |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in section["runs"]:
        share = "" if r["handed_off_share"] is None else f"{100 * r['handed_off_share']:.0f} %"
        out.append(
            f"| {r['round']} | {r['workers']} | {r['rps']:.0f} | {r['p99_ms']:.1f} | "
            f"{r['agent_cpu_us_per_request']:.0f} | {r['hub_cpu_us_per_request']:.0f} | {share} "
            f"| {r['uninspected']} | {r['spoe_errors']} |"
        )
    cost = section["handoff"]
    ratios = ", ".join(f"{x:.2f}" for x in section["ratios"])
    out += [
        "",
        f"2 workers / 1 worker, req/s per round: {ratios} (median {section['ratio_median']:.2f}x)."
        f" Hand-off: {cost['cpu_us_per_handoff']:.0f} µs CPU per handed-off response "
        f"({cost['sender_cpu_us_per_handoff']:.0f} sender + {cost['owner_cpu_us_per_handoff']:.0f}"
        f" owner, `bench.handoff_cost`), × {100 * section['handed_off_share']:.0f} % handed off ="
        f" {section['handoff_us_per_request']:.1f} µs per request.",
    ]
    return out
