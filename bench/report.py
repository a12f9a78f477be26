"""Turn measurements into the committed results: ratios, target checks, a markdown table, plots.

Pure functions on the results dict (the JSON ``results/bench.json`` holds), except the two
``write_*`` functions at the end. Nothing here starts a process or measures anything, so the
unit tests run it on fixed sample data.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from bench.scenarios import SCENARIOS
from bench.stats import ratio
from bench.workers import markdown as workers_markdown

# The targets (docs/performance.md): one run, same machine, ratios.
THROUGHPUT_TARGET = 0.85  # agent req/s >= 0.85 x ceiling (issue 17) ...
THROUGHPUT_TARGET_SCENARIOS = ("clean_get", "attack_get", "post_1k")  # ... for these
CPU_TARGET = 1.15  # agent CPU per request <= 1.15 x engine CPU per request
SOAK_RSS_TARGET = 0.05  # the soak's end RSS <= +5 % of its steady baseline (soak.rss_growth)
RSS_TARGET_MIB = 80  # the agent's peak RSS during a run (CRS loaded) <= 80 MiB ...
RSS_TARGET_CONNECTIONS = 128  # ... at this concurrency (issue 17)

MIB = 1024 * 1024


def ceiling_engine_cpu_ms(ceiling: dict[str, Any]) -> float:
    """The ceiling's CPU per request inside engine calls, the CPU ratio's denominator
    (docs/performance.md change 39). Results from before that change hold only the process
    figure (``cpu_ms_per_request``), which stands in for it there."""
    value = ceiling.get("engine_cpu_ms_per_request", ceiling.get("cpu_ms_per_request"))
    return float(value or 0.0)


def ceiling_process_cpu_ms(ceiling: dict[str, Any]) -> float:
    """The ceiling process's whole CPU per request: engine calls and the Python driver."""
    value = ceiling.get("process_cpu_ms_per_request", ceiling.get("cpu_ms_per_request"))
    return float(value or 0.0)


def throughput_rows(throughput: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per scenario and concurrency: with one round, its run joined with the
    scenario's ceiling; with several (``throughput.run_throughput``), the median of the rounds'
    rows, each ratio taken against its own round's ceiling (``_median_row``)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in throughput.get("agent", []):
        # a run of several rounds carries its round's ceiling; older results have one
        ceiling = run.get("ceiling") or throughput["ceiling"][run["scenario"]]
        row = _run_row(run, ceiling)
        groups.setdefault((row["scenario"], row["connections"]), []).append(row)
    return [_median_row(rows) for rows in groups.values()]


# taken as the median over rounds; the counts are summed and the RSS peak is the highest
_MEDIAN_KEYS = (
    "agent_rps", "ceiling_rps", "throughput_ratio", "p50_ms", "p99_ms", "agent_cpu_ms",
    "engine_cpu_ms", "ceiling_process_cpu_ms", "cpu_ratio", "haproxy_cpu_ms", "hub_cpu_ms",
    "wrk_cpu_ms", "zero_cost_agent_ratio", "agent_rss_mb", "alike_rps", "alike_engine_cpu_ms",
    "alike_throughput_ratio", "alike_cpu_ratio", "alike_zero_cost_agent_ratio",
)  # fmt: skip
_SUM_KEYS = ("spoe_errors", "agent_errors", "shed", "uninspected", "unexpected_status")


def _median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rounds of one scenario and concurrency as one row (one round: that row)."""
    out = dict(rows[0])
    out["rounds"] = len(rows)
    out["round_throughput_ratios"] = [r["throughput_ratio"] for r in rows]
    out["round_cpu_ratios"] = [r["cpu_ratio"] for r in rows]
    if len(rows) == 1:
        return out
    for key in _MEDIAN_KEYS:
        values = [r[key] for r in rows if r[key] is not None]
        out[key] = statistics.median(values) if values else None
    for key in _SUM_KEYS:
        out[key] = sum(r[key] for r in rows)
    peaks = [r["agent_rss_peak_mb"] for r in rows if r["agent_rss_peak_mb"] is not None]
    out["agent_rss_peak_mb"] = max(peaks) if peaks else None
    return out


def _zero_cost_agent_ratio(engine_ms: float, run: dict[str, Any]) -> float | None:
    """The best agent/ceiling a zero-cost agent could reach in ``run``: the engine's CPU per
    request against engine + HAProxy + wrk on the same cores."""
    return ratio(
        engine_ms,
        engine_ms
        + run.get("haproxy_cpu_ms_per_request", 0.0)
        + run.get("wrk_cpu_ms_per_request", 0.0),
    )


def _run_row(run: dict[str, Any], ceiling: dict[str, Any]) -> dict[str, Any]:
    """One agent run joined with the ceiling it is compared with, with both ratios."""
    engine_ms = ceiling_engine_cpu_ms(ceiling)
    counts = run["haproxy"]
    # the ceiling on the agent's allocator (docs/performance.md change 53); None before it,
    # or when the agent ran on the C library's
    alike = run.get("ceiling_same_allocator")
    alike_ms = ceiling_engine_cpu_ms(alike) if alike else None
    return {
        "alike_rps": alike["rps"] if alike else None,
        "alike_engine_cpu_ms": alike_ms,
        "alike_throughput_ratio": ratio(run["rps"], alike["rps"]) if alike else None,
        "alike_cpu_ratio": ratio(run["agent_cpu_ms_per_request"], alike_ms) if alike_ms else None,
        # the zero-cost agent's ratio below, for an engine on the agent's allocator
        "alike_zero_cost_agent_ratio": _zero_cost_agent_ratio(alike_ms, run) if alike_ms else None,
        "scenario": run["scenario"],
        "connections": run["connections"],
        "agent_rps": run["rps"],
        "ceiling_rps": ceiling["rps"],
        "throughput_ratio": ratio(run["rps"], ceiling["rps"]),
        "p50_ms": run["latency_ms"]["p50"],
        "p99_ms": run["latency_ms"]["p99"],
        "agent_cpu_ms": run["agent_cpu_ms_per_request"],
        "engine_cpu_ms": engine_ms,
        "ceiling_process_cpu_ms": ceiling_process_cpu_ms(ceiling),
        "cpu_ratio": ratio(run["agent_cpu_ms_per_request"], engine_ms),
        "haproxy_cpu_ms": run.get("haproxy_cpu_ms_per_request", 0.0),
        "hub_cpu_ms": run.get("hub_cpu_ms_per_request", 0.0),
        "wrk_cpu_ms": run.get("wrk_cpu_ms_per_request", 0.0),
        "zero_cost_agent_ratio": _zero_cost_agent_ratio(engine_ms, run),
        "spoe_errors": counts["spoe_errors"],
        "agent_errors": counts["agent_errors"],
        "shed": counts["shed"],
        "uninspected": counts["uninspected"],
        "unexpected_status": counts["unexpected_status"],
        "agent_rss_mb": run["agent_rss_bytes"] / MIB,
        # during the run (docs/performance.md change 36); results from before it
        # have only the RSS after the run
        "agent_rss_peak_mb": run["agent_rss_peak_bytes"] / MIB
        if run.get("agent_rss_peak_bytes")
        else None,
    }


def target_checks(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with the measured value and whether it was met."""
    checks: list[dict[str, Any]] = []
    rows = throughput_rows(results.get("throughput", {}))
    for row in rows:
        label = f"{row['scenario']} @{row['connections']}"
        if row["scenario"] in THROUGHPUT_TARGET_SCENARIOS and row["throughput_ratio"] is not None:
            checks.append(
                _check(f"throughput {label}", row["throughput_ratio"], f">= {THROUGHPUT_TARGET}",
                       row["throughput_ratio"] >= THROUGHPUT_TARGET)
            )  # fmt: skip
        if row["cpu_ratio"] is not None:
            checks.append(
                _check(f"CPU/request {label}", row["cpu_ratio"], f"<= {CPU_TARGET}",
                       row["cpu_ratio"] <= CPU_TARGET)
            )  # fmt: skip
        if row.get("alike_cpu_ratio") is not None:
            # the agent's own cost: its engine and the ceiling's on the same allocator
            checks.append(
                _check(f"CPU/request {label}, ceiling on the agent's allocator",
                       row["alike_cpu_ratio"], f"<= {CPU_TARGET}",
                       row["alike_cpu_ratio"] <= CPU_TARGET)
            )  # fmt: skip
        peak = row["agent_rss_peak_mb"]
        if row["connections"] == RSS_TARGET_CONNECTIONS and peak is not None:
            checks.append(
                _check(f"RSS peak MiB {label}", peak, f"<= {RSS_TARGET_MIB}",
                       peak <= RSS_TARGET_MIB)
            )  # fmt: skip
        bad = row["uninspected"] + row["spoe_errors"]
        checks.append(_check(f"uninspected + SPOE errors {label}", bad, "== 0", bad == 0))
    overload = results.get("overload")
    if overload:
        counts = overload["haproxy"]
        checks.append(
            _check("overload: offered / capacity", overload["offered_ratio"], ">= 2",
                   overload["offered_ratio"] is not None and overload["offered_ratio"] >= 2)
        )  # fmt: skip
        checks.append(
            _check("overload: uninspected", counts["uninspected"], "== 0",
                   counts["uninspected"] == 0)
        )  # fmt: skip
        unanswered = overload["unanswered"]
        checks.append(_check("overload: unanswered (not 403/200/500)", unanswered, "== 0",
                             unanswered == 0))  # fmt: skip
    soak = results.get("soak")
    if soak:
        checks.append(
            _check("soak: every transaction answered", soak["transactions"],
                   f"== {soak.get('transactions_planned', soak['transactions'])}",
                   not soak.get("stalled"))
        )  # fmt: skip
    if soak and soak.get("rss_growth") is not None:
        checks.append(
            _check("soak: RSS growth steady baseline -> end", soak["rss_growth"],
                   f"<= +{SOAK_RSS_TARGET:.0%}", soak["rss_growth"] <= SOAK_RSS_TARGET)
        )  # fmt: skip
    return checks


def _check(name: str, value: float, target: str, met: bool) -> dict[str, Any]:
    return {"target": name, "value": value, "wanted": target, "met": bool(met)}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def floor_limited_ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per clean-GET throughput row: the best agent/ceiling an agent costing exactly the
    floor's hub CPU (and nothing else) could reach on that run's cores, engine / (engine +
    HAProxy + wrk + floor), next to the zero-cost ratio and the measured one."""
    floor = results.get("floor")
    if not floor:
        return []
    floor_ms = floor["floor_hub_us_per_tx"] / 1000
    out = []
    for row in throughput_rows(results.get("throughput", {})):
        if row["scenario"] != "clean_get":  # the floor's transaction: a GET and its response
            continue
        engine = row["engine_cpu_ms"]
        out.append(
            {
                "connections": row["connections"],
                "zero_cost_agent_ratio": row["zero_cost_agent_ratio"],
                "floor_agent_ratio": ratio(
                    engine, engine + row["haproxy_cpu_ms"] + row["wrk_cpu_ms"] + floor_ms
                ),
                "floor_cpu_ratio": ratio(engine + floor_ms, engine),
                "measured_ratio": row["throughput_ratio"],
            }
        )
    return out


def floor_budget(results: dict[str, Any]) -> dict[str, float] | None:
    """What the CPU target leaves the agent beyond the engine per clean GET, against the floor.

    ``budget_us`` = (CPU_TARGET - 1) x the ceiling's engine CPU per clean GET (same results
    file); ``floor_share`` = the floor's hub CPU per transaction / that budget. None without
    both measurements."""
    floor = results.get("floor")
    ceiling = results.get("throughput", {}).get("ceiling", {}).get("clean_get")
    if not floor or not ceiling or not ceiling_engine_cpu_ms(ceiling):
        return None
    budget_us = (CPU_TARGET - 1) * ceiling_engine_cpu_ms(ceiling) * 1000
    return {
        "budget_us": budget_us,
        "floor_share": floor["floor_hub_us_per_tx"] / budget_us,
        "agent_share": floor["agent_hub_us_per_tx"] / budget_us,
    }


def _floor_section(results: dict[str, Any]) -> list[str]:
    floor = results["floor"]
    out = [
        "",
        "## The floor under the hub",
        "",
        f"Hub (main thread) CPU per transaction over raw SPOP: clean GETs with their "
        f"responses (two NOTIFYs), {floor['connections']} connections x {floor['window']} in "
        f"flight, {floor['transactions']} transactions per side and round, alternating. "
        "*agent* = the agent with two small rules; *floor* = `bench.floor_agent`: gevent and "
        "the project's codec answering at once, no application and no engine.",
        "",
        "| round | agent hub us/tx | floor hub us/tx | agent / floor | agent tx/s | floor tx/s |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    for number, row in enumerate(floor["rounds"], start=1):
        out.append(
            f"| {number} | {row['agent']['hub_us_per_tx']:.0f} "
            f"| {row['floor']['hub_us_per_tx']:.0f} | {_fmt(row['hub_ratio'])} "
            f"| {row['agent']['tx_per_s']:.0f} | {row['floor']['tx_per_s']:.0f} |"
        )
    out += [
        "",
        f"Medians: agent {floor['agent_hub_us_per_tx']:.0f} us, floor "
        f"{floor['floor_hub_us_per_tx']:.0f} us per transaction, agent / floor "
        f"{_fmt(floor['hub_ratio'])}.",
    ]
    budget = floor_budget(results)
    if budget is not None:
        out += [
            "",
            f"The CPU target ({CPU_TARGET} x the engine) leaves {budget['budget_us']:.0f} us "
            "beyond the engine per clean GET (the ceiling's engine CPU in this file). The "
            f"floor alone takes {budget['floor_share']:.0%} of it, the agent's hub "
            f"{budget['agent_share']:.0%}.",
        ]
    limited = floor_limited_ratios(results)
    if limited:
        out += [
            "",
            "What an agent costing the floor and nothing more could reach on the clean-GET "
            "runs above (engine / (engine + HAProxy + wrk + floor), CPU from those runs):",
            "",
            "| conns | zero-cost agent ratio | floor agent ratio | floor agent CPU ratio "
            "| measured ratio |",
            "|--:|--:|--:|--:|--:|",
        ]
        out += [
            f"| {r['connections']} | {_fmt(r['zero_cost_agent_ratio'])} "
            f"| {_fmt(r['floor_agent_ratio'])} | {_fmt(r['floor_cpu_ratio'])} "
            f"| {_fmt(r['measured_ratio'])} |"
            for r in limited
        ]
    return out


def _rounds_text(throughput: dict[str, Any]) -> str:
    rounds = throughput.get("rounds", 1)
    if rounds <= 1:
        return ""
    return (
        f", {rounds} rounds with the scenarios alternating; each row is the median of its "
        "rounds (RSS peak: the highest; errors, uninspected, shed: summed), every ratio taken "
        "against the ceiling runs of its own round"
    )


def _rounds_table(throughput: dict[str, Any]) -> list[str]:
    """The per-round ratios behind the medians (nothing for a single round)."""
    if throughput.get("rounds", 1) <= 1:
        return []
    out = [
        "",
        "Per round (the medians above come from these):",
        "",
        "| scenario | conns | agent/ceiling per round | CPU ratio per round |",
        "|---|--:|---|---|",
    ]
    for r in throughput_rows(throughput):
        out.append(
            f"| {r['scenario']} | {r['connections']}"
            f" | {', '.join(_fmt(v) for v in r['round_throughput_ratios'])}"
            f" | {', '.join(_fmt(v) for v in r['round_cpu_ratios'])} |"
        )
    return out


def _same_allocator_table(throughput: dict[str, Any]) -> list[str]:
    """The agent against a ceiling on its own allocator (docs/performance.md change 53)."""
    rows = [r for r in throughput_rows(throughput) if r.get("alike_cpu_ratio") is not None]
    if not rows:
        return []
    out = [
        "",
        f"The agent ran on {throughput.get('agent_allocator')}; the ceiling above runs on the "
        "C library's allocator, as the C agents do. Against a ceiling on the agent's allocator "
        "too (one run per scenario and round, medians), what is left is the agent's own cost; "
        "its zero-cost agent ratio is the one to read the agent/ceiling against:",
        "",
        "| scenario | conns | ceiling req/s, same allocator | agent/ceiling | engine CPU ms/req "
        "| CPU ratio | zero-cost agent ratio |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        out.append(
            f"| {r['scenario']} | {r['connections']} | {r['alike_rps']:.0f}"
            f" | {_fmt(r['alike_throughput_ratio'])} | {r['alike_engine_cpu_ms']:.2f}"
            f" | {_fmt(r['alike_cpu_ratio'])} | {_fmt(r['alike_zero_cost_agent_ratio'])} |"
        )
    return out


def markdown(results: dict[str, Any]) -> str:
    """The committed ``results/bench.md``: every table the run produced."""
    meta = results.get("meta", {})
    out = ["# Benchmark results", ""]
    out += [f"- {k}: {v}" for k, v in meta.items()]
    throughput = results.get("throughput")
    if throughput:
        out += [
            "",
            "## Throughput: agent through HAProxy vs the bare engine (same run)",
            "",
            f"wrk {throughput['duration_s']:g} s per run{_rounds_text(throughput)}; "
            "ceiling = the engine in-process on "
            f"{throughput['engine_threads']} threads, {throughput['ceiling_duration_s']:g} s, "
            "the same transaction (request phases, then response phases unless blocked). "
            "Probe: a page leaking PHP source came back "
            f"{throughput.get('response_body_probe_status', 'n/a')} (403 = response bodies "
            "reach the agent and are inspected). *Engine CPU* = the ceiling's CPU inside "
            "engine calls only (thread CPU time around each engine job), the CPU ratio's "
            "denominator; the ceiling's whole process CPU, its Python driver included, is in "
            'the ceiling table (docs/performance.md "What is measured, and against what").',
            "",
            "| scenario | conns | agent req/s | ceiling req/s | agent/ceiling | p50 ms | p99 ms "
            "| agent CPU ms/req | of which hub | engine CPU ms/req | CPU ratio "
            "| HAProxy CPU ms/req "
            "| SPOE errors | uninspected | shed (1005) | RSS after MiB | RSS peak MiB |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for r in throughput_rows(throughput):
            scenario = SCENARIOS.get(r["scenario"])
            out.append(
                f"| {scenario.title if scenario else r['scenario']}"
                f" | {r['connections']} | {r['agent_rps']:.0f} | {r['ceiling_rps']:.0f}"
                f" | {_fmt(r['throughput_ratio'])} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f}"
                f" | {r['agent_cpu_ms']:.2f} | {r['hub_cpu_ms']:.2f} | {r['engine_cpu_ms']:.2f}"
                f" | {_fmt(r['cpu_ratio'])}"
                f" | {r['haproxy_cpu_ms']:.2f} | {r['spoe_errors']} | {r['uninspected']}"
                f" | {r['shed']} | {r['agent_rss_mb']:.0f} | {_fmt(r['agent_rss_peak_mb'], 1)} |"
            )
        out += _rounds_table(throughput)
        out += _same_allocator_table(throughput)
        out += [
            "",
            "Ceiling runs (before and after the agent runs of each scenario):",
            "",
            "| scenario | ceiling req/s per run | spread max/min | engine CPU ms/req "
            "| process CPU ms/req | engine p99 ms | wrong verdicts |",
            "|---|---|--:|--:|--:|--:|--:|",
        ]
        for name, ceiling in throughput["ceiling"].items():
            runs = ceiling.get("runs", [ceiling])
            per_run = ", ".join(f"{r['rps']:.0f}" for r in runs)
            out.append(
                f"| {name} | {per_run}"
                f" | {_fmt(ceiling.get('rps_spread'))} | {ceiling_engine_cpu_ms(ceiling):.2f}"
                f" | {ceiling_process_cpu_ms(ceiling):.2f}"
                f" | {max(r['latency_ms']['p99'] for r in runs):.1f}"
                f" | {ceiling['wrong_verdicts']} |"
            )
        out += [
            "",
            "Where each request's CPU goes (ms): the ceiling has both cores to itself, while the "
            "agent shares them with HAProxy and wrk. *Zero-cost agent* = engine / (engine + "
            "HAProxy + wrk): the best agent/ceiling ratio any agent could reach on this box.",
            "",
            "| scenario | conns | engine | agent beyond engine | of it on the hub | HAProxy "
            "| wrk | zero-cost agent ratio | measured ratio |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for r in throughput_rows(throughput):
            out.append(
                f"| {r['scenario']} | {r['connections']} | {r['engine_cpu_ms']:.2f}"
                f" | {r['agent_cpu_ms'] - r['engine_cpu_ms']:.2f} | {r['hub_cpu_ms']:.2f}"
                f" | {r['haproxy_cpu_ms']:.2f} | {r['wrk_cpu_ms']:.2f}"
                f" | {_fmt(r['zero_cost_agent_ratio'])} | {_fmt(r['throughput_ratio'])} |"
            )
    overload = results.get("overload")
    if overload:
        counts = overload["haproxy"]
        out += [
            "",
            "## Overload",
            "",
            f"{overload['connections']} connections of {overload['scenario']} for "
            f"{overload['duration_s']:.0f} s against a measured capacity of "
            f"{overload['capacity_rps']:.0f} req/s"
            + (
                f", agent budget (processing_budget_ms) {overload['budget_ms']} ms."
                if "budget_ms" in overload
                else "."
            ),
            "",
            "| offered req/s | offered / capacity | judged (200/403) req/s | judged / capacity "
            "| answered by status | shed (1005) "
            "| SPOE errors | uninspected | unanswered | p50 ms | p99 ms | agent RSS MiB max "
            "| agent threads max |",
            "|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|",
            f"| {overload['offered_rps']:.0f} | {_fmt(overload['offered_ratio'])}"
            f" | {overload.get('goodput_rps', 0.0):.0f} | {_fmt(overload.get('goodput_ratio'))}"
            f" | {', '.join(f'{k}: {v}' for k, v in counts['by_status'].items())}"
            f" | {counts['shed']} | {counts['spoe_errors']} | {counts['uninspected']}"
            f" | {overload['unanswered']} | {overload['latency_ms']['p50']:.0f}"
            f" | {overload['latency_ms']['p99']:.0f} | {overload['rss_max_bytes'] / MIB:.0f}"
            f" | {overload['threads_max']} |",
            "",
            f"The agent's own counters at its shutdown: {overload.get('agent_totals')}. RSS "
            f"before the run {overload['rss_before_bytes'] / MIB:.0f} MiB; client aborts at the"
            f" end of the run (not counted as unanswered): {counts.get('client_aborts', 0)}.",
        ]
    soak = results.get("soak")
    if soak:
        out += [
            "",
            "## Soak",
            "",
            f"{soak['transactions']} transactions straight over SPOP "
            f"({soak['connections']} connections x {soak['window']} in flight, rules: "
            f"{soak['rules']}, TTL {soak['transaction_ttl_ms']} ms), "
            f"{soak['elapsed_s']:.0f} s, {soak['transactions'] / soak['elapsed_s']:.0f} tx/s, "
            f"agent CPU {soak.get('agent_cpu_ms_per_transaction') or 0:.2f} ms/transaction. "
            f"Run: {soak.get('run', {}).get('date', '?')}, commit "
            f"{soak.get('run', {}).get('commit', '?')}.",
            "",
            "| transactions | agent RSS MiB | elapsed s |",
            "|--:|--:|--:|",
        ]
        out += [
            f"| {s['transactions']} | {s['rss_bytes'] / MIB:.1f} | {s['elapsed_s']:.0f} |"
            for s in soak["samples"]
        ]
        out += [
            "",
            f"{_soak_growth_text(soak)}"
            f" Checks: {soak['client']}. The agent's own counters at shutdown: "
            f"{soak.get('agent_totals', 'not recorded')}.",
        ]
        if soak.get("stalled"):
            out += [
                "",
                f"**The agent stopped answering** after {soak['transactions']} of "
                f"{soak.get('transactions_planned')} transactions:",
                "",
                "```",
                soak["stalled"].strip(),
                "```",
            ]
    if results.get("floor"):
        out += _floor_section(results)
    if results.get("workers"):
        out += workers_markdown(results["workers"])
    checks = target_checks(results)
    if checks:
        out += ["", "## Targets", "", "| target | measured | wanted | met |", "|---|--:|---|---|"]
        out += [
            f"| {c['target']} | {_fmt(c['value'])} | {c['wanted']} | {'yes' if c['met'] else 'NO'} "
            "|"
            for c in checks
        ]
    return "\n".join(out) + "\n"


def _soak_growth_text(soak: dict[str, Any]) -> str:
    growth = _fmt(100 * soak["rss_growth"] if soak["rss_growth"] is not None else None, 1)
    windows = soak.get("rss_growth_windows")
    if not windows:  # a results file from before the windows
        return (
            f"RSS growth from {soak['baseline_transactions']} transactions to the end: {growth} %."
        )
    (b0, b1), (e0, e1) = windows["baseline_window"], windows["end_window"]
    return (
        f"RSS growth from the steady baseline (median of the samples at {b0}-{b1} "
        f"transactions, {windows['baseline_rss_bytes'] / MIB:.1f} MiB) to the end (median at "
        f"{e0}-{e1}, {windows['end_rss_bytes'] / MIB:.1f} MiB): {growth} %."
    )


def summary(results: dict[str, Any]) -> str:
    """A few lines with the headline ratios, for docs/performance.md."""
    out = []
    meta = results.get("meta", {})
    throughput = results.get("throughput")
    if throughput:
        run = throughput.get("run", meta)
        out.append(
            f"Run {run.get('date', '?')}, commit {run.get('commit', '?')}, {run.get('haproxy', '')}"
            f", load average at start {run.get('load average at start', '?')}."
        )
        out.append("")
        out.append(
            "| scenario | conns | agent/ceiling | zero-cost-agent ratio | CPU ratio "
            "| hub CPU ms/req | p99 ms | SPOE errors | uninspected | shed | RSS peak MiB |"
        )
        out.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for r in throughput_rows(throughput):
            out.append(
                f"| {r['scenario']} | {r['connections']} | {_fmt(r['throughput_ratio'])}"
                f" | {_fmt(r['zero_cost_agent_ratio'])} | {_fmt(r['cpu_ratio'])}"
                f" | {r['hub_cpu_ms']:.2f} | {r['p99_ms']:.0f} | {r['spoe_errors']}"
                f" | {r['uninspected']} | {r['shed']} | {_fmt(r['agent_rss_peak_mb'], 1)} |"
            )
    checks = target_checks(results)
    if checks:
        met = sum(c["met"] for c in checks)
        missed = [c["target"] for c in checks if not c["met"]]
        out.append("")
        out.append(f"Targets met: {met} of {len(checks)}. Missed: {', '.join(missed) or 'none'}.")
    return "\n".join(out) + "\n"


def write_latency_plot(results: dict[str, Any], path: Path) -> bool:
    """Latency percentiles of every scenario and concurrency (one line each; of several
    rounds, the round of the median req/s), log-scaled; False if no data."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in results.get("throughput", {}).get("agent", []):
        groups.setdefault((run["scenario"], run["connections"]), []).append(run)
    runs = [sorted(g, key=lambda r: r["rps"])[len(g) // 2] for g in groups.values()]
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    # one colour per scenario, one line style per concurrency
    names = list(dict.fromkeys(run["scenario"] for run in runs))
    levels = sorted({run["connections"] for run in runs})
    styles = ["-", "--", ":", "-."]
    for run in runs:
        points = sorted(
            (float(k[1:]), v) for k, v in run["latency_ms"].items() if k.startswith("p")
        )
        xs = [1 / (1 - p / 100) for p, _ in points]
        ax.plot(xs, [v for _, v in points], marker="o", markersize=3,
                color=f"C{names.index(run['scenario'])}",
                linestyle=styles[levels.index(run["connections"]) % len(styles)],
                label=f"{run['scenario']} @{run['connections']}")  # fmt: skip
    ticks = [50, 90, 99, 99.9, 99.99]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks([1 / (1 - p / 100) for p in ticks], [f"p{p:g}" for p in ticks])
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency through HAProxy + agent (ms)")
    ax.set_title("coraza-spoa-py under wrk (closed loop), CRS 3.3.4")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_soak_plot(results: dict[str, Any], path: Path) -> bool:
    soak = results.get("soak")
    if not soak or not soak.get("samples"):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    xs = [s["transactions"] for s in soak["samples"]]
    ys = [s["rss_bytes"] / MIB for s in soak["samples"]]
    ax.plot(xs, ys, marker=".", label="agent RSS")
    windows = soak.get("rss_growth_windows")
    if windows:
        base = windows["baseline_rss_bytes"] / MIB
        first, last = windows["baseline_window"]
        label = f"target: median RSS over {first}-{last} + {SOAK_RSS_TARGET:.0%}"
    else:  # a results file from before the windows
        base = next(
            (s["rss_bytes"] / MIB for s in soak["samples"]
             if s["transactions"] >= soak["baseline_transactions"]),
            ys[0],
        )  # fmt: skip
        label = f"target: RSS at {soak['baseline_transactions']} + {SOAK_RSS_TARGET:.0%}"
    # the target band: the end's RSS must stay under the steady baseline + 5 %
    ax.axhline(base * (1 + SOAK_RSS_TARGET), color="C3", linestyle="--", label=label)
    ax.set_ylim(0, max(ys) * 1.25)
    ax.legend(loc="lower right")
    ax.set_xlabel("transactions")
    ax.set_ylabel("agent RSS (MiB)")
    ax.set_title(f"soak: agent RSS over {soak['transactions']} transactions")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
