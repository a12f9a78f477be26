"""The six bench modes wired to their stacks; ``run_modes`` yields (results section, value).

Each mode that needs HAProxy gets a fresh stack (agent + HAProxy), so the agent's counters and
memory belong to that mode alone. Orchestration only: the measuring is in ``throughput``,
``overload``, ``soak``, ``floor`` and ``profile``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.agent_config import read_agent_totals
from bench.floor import run_floor
from bench.overload import run_overload
from bench.profile import markdown as profile_markdown
from bench.profile import start_py_spy, summarise
from bench.scenarios import SCENARIOS
from bench.soak import run_soak
from bench.stack import Stack, running_stack
from bench.throughput import Progress, measure_agent, run_throughput
from bench.workers import run_workers


def agent_totals(stack: Stack) -> dict[str, int] | None:
    """Stop the stack's processes and read the agent's final transaction counters."""
    stack.haproxy.stop()
    stack.agent.stop(timeout=30)
    return read_agent_totals(stack.workdir)


def _stack_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "haproxy_binary": args.haproxy,
        "haproxy_dir": args.haproxy_dir,
        "extra_config": args.agent_option,
        "switch_interval_s": args.agent_switch_interval,
        "log_level": args.agent_log_level,
        "agent_cwd": args.agent_tree,
    }


def _workdir(args: argparse.Namespace, mode: str) -> Path | None:
    return None if args.workdir is None else args.workdir / mode


def run_modes(
    args: argparse.Namespace, results: dict[str, Any], log: Progress
) -> Iterator[tuple[str, Any]]:
    if "throughput" in args.modes:
        with running_stack(**_stack_options(args), keep_dir=_workdir(args, "throughput")) as s:
            throughput = run_throughput(
                s,
                args.scenarios,
                args.concurrency,
                duration_s=args.duration,
                ceiling_duration_s=args.ceiling_duration,
                engine_threads=args.engine_threads,
                wrk_threads=args.wrk_threads,
                rounds=args.rounds,
                progress=log,
            )
            throughput["agent_totals"] = agent_totals(s)
        results["throughput"] = throughput
        yield "throughput", throughput
    if "workers" in args.modes:
        yield (
            "workers",
            run_workers(
                _stack_options(args),
                rounds=args.workers_rounds,
                duration_s=args.workers_duration,
                wrk_threads=args.wrk_threads,
                progress=log,
            ),
        )
    if "overload" in args.modes:
        # the product's default budget (400 ms), not the throughput runs' 1600 ms: here the
        # point is shedding, and HAProxy's 2 s timeout must leave room for the queueing that
        # thousands of closed-loop clients cause outside the agent (docs/performance.md)
        overload_options = _stack_options(args)
        overload_options["extra_config"] = {
            "processing_budget_ms": args.overload_budget_ms,
            **dict(args.agent_option or []),
        }
        with running_stack(**overload_options, keep_dir=_workdir(args, "overload")) as s:
            capacity = _capacity(results, args.overload_scenario)
            if capacity is None:
                log("no throughput result for the overload scenario: measuring capacity (10 s)")
                capacity = measure_agent(
                    s, SCENARIOS[args.overload_scenario], connections=128, duration_s=10,
                    wrk_threads=args.wrk_threads,
                )["rps"]  # fmt: skip
            overload = run_overload(
                s,
                capacity_rps=capacity,
                scenario=args.overload_scenario,
                connections=args.overload_connections,
                duration_s=args.overload_duration,
                wrk_threads=args.wrk_threads,
                progress=log,
            )
            overload["agent_totals"] = agent_totals(s)
            overload["budget_ms"] = overload_options["extra_config"]["processing_budget_ms"]
        yield "overload", overload
    if "profile" in args.modes:
        yield "profile", _profile(args, log)
    if "floor" in args.modes:
        yield (
            "floor",
            run_floor(transactions=args.floor_transactions, rounds=args.floor_rounds, progress=log),
        )
    if "soak" in args.modes:
        yield (
            "soak",
            run_soak(
                transactions=args.soak_transactions,
                baseline=args.soak_baseline,
                sample_every=args.soak_sample_every,
                rules=args.soak_rules,
                ttl_ms=args.soak_ttl_ms,
                progress=log,
            ),
        )


def _capacity(results: dict[str, Any], scenario: str) -> float | None:
    rows = [r for r in results.get("throughput", {}).get("agent", []) if r["scenario"] == scenario]
    return max((r["rps"] for r in rows), default=None)


def _profile(args: argparse.Namespace, log: Progress) -> dict[str, Any]:
    scenario = SCENARIOS[args.profile_scenario]
    with running_stack(**_stack_options(args), keep_dir=_workdir(args, "profile")) as s:
        measure_agent(s, scenario, connections=16, duration_s=2, wrk_threads=args.wrk_threads)
        raw = s.workdir / "py-spy.txt"
        log(f"profile {scenario.name}: py-spy on the agent, {args.profile_duration:g}s")
        spy = start_py_spy(s.agent.pid, raw, args.profile_duration)
        run = measure_agent(
            s,
            scenario,
            connections=args.profile_connections,
            duration_s=args.profile_duration,
            wrk_threads=args.wrk_threads,
        )
        _, err = spy.communicate(timeout=120)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")
        text = raw.read_text()
    summary = summarise(text)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"profile-{scenario.name}.collapsed.txt").write_text(text)
    (args.results / "profile.md").write_text(
        f"# py-spy profile of the agent: {scenario.title}, {args.profile_connections} "
        f"connections, {args.profile_duration:g} s\n\nSamples per role: {summary['samples']}. "
        "`project` = inclusive time in this project's functions, `self` = leaf frames "
        "(time in a cffi call counts as the calling Python function's self time).\n\n"
        + profile_markdown(summary)
    )
    return {"scenario": scenario.name, "connections": args.profile_connections,
            "rps_under_profiler": run["rps"], "summary": summary}  # fmt: skip
