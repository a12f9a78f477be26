"""``python -m bench``: run the measurements and write the committed results.

Modes: ``throughput`` (ceiling vs agent per scenario and concurrency), ``workers`` (1 worker vs
2, alternating, with the hand-off share and cost), ``overload``,
``profile`` (py-spy on the agent under load), ``floor`` (the hub's CPU per transaction against
the cheapest agent the architecture allows), ``soak``; ``all`` runs them in that order. Each
run merges its sections into ``results/bench.json`` and rewrites ``results/bench.md`` and the
plots from the whole file, so a partial re-run keeps the other sections. docs/performance.md
explains every option and number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench import report
from bench.floor import DEFAULT_ROUNDS as FLOOR_ROUNDS
from bench.floor import DEFAULT_TRANSACTIONS as FLOOR_TRANSACTIONS
from bench.scenarios import DEFAULT_SCENARIOS, SCENARIOS
from bench.soak import DEFAULT_BASELINE, DEFAULT_SAMPLE_EVERY, DEFAULT_TRANSACTIONS, DEFAULT_TTL_MS
from bench.stack import DEFAULT_HAPROXY, ROOT, SHIPPED_HAPROXY_DIR
from tests.support.haproxy import HAPROXY_VERSIONS, HAProxyNotFoundError, find_haproxy

MODES = ("throughput", "workers", "overload", "profile", "floor", "soak")
# throughput rounds: three alternated runs of each scenario, and their median, because one run
# of identical code read a clean GET's CPU ratio anywhere in 1.16-1.38 on this box
# (docs/performance.md "What is measured, and against what")
DEFAULT_ROUNDS = 3


def _csv(kind: type, text: str) -> list[Any]:
    return [kind(part) for part in text.split(",") if part]


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError("expected KEY=VALUE")
    return key, yaml.safe_load(value)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    # checked below, not with choices=: argparse checks an empty or default list against the
    # choices as a whole when nargs="*" (CPython issue 9625)
    p.add_argument("modes", nargs="*", help=f"any of all, {', '.join(MODES)} (default: all)")
    p.add_argument(
        "--scenarios",
        type=lambda t: _csv(str, t),
        default=list(DEFAULT_SCENARIOS),
        help=f"comma-separated, from {','.join(SCENARIOS)}",
    )
    p.add_argument(
        "--concurrency",
        type=lambda t: _csv(int, t),
        default=[32, 128],
        help="wrk connections, comma-separated (default 32,128)",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds per agent run")
    p.add_argument("--ceiling-duration", type=float, default=8.0, help="seconds per ceiling run")
    p.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help="throughput rounds, scenarios alternating; the report takes the median "
        f"(default {DEFAULT_ROUNDS})",
    )
    p.add_argument(
        "--engine-threads",
        type=int,
        default=os.cpu_count() or 1,
        help="ceiling threads (default: cores, as the agent's default pool)",
    )
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument(
        "--haproxy",
        default=DEFAULT_HAPROXY,
        help=f"HAProxy: a version ({', '.join(HAPROXY_VERSIONS)}), a binary's path or a command "
        f"on PATH (default {DEFAULT_HAPROXY})",
    )
    p.add_argument(
        "--haproxy-dir",
        type=Path,
        default=SHIPPED_HAPROXY_DIR,
        help="folder with haproxy.cfg + coraza.cfg (default: the shipped etc/haproxy)",
    )
    p.add_argument(
        "--agent-option",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=YAML",
        help="extra top-level agent config, e.g. engine_threads=3",
    )
    p.add_argument(
        "--agent-tree",
        type=Path,
        default=None,
        metavar="DIR",
        help="experiment: run the agent's code from this checkout (A/B runs against another "
        "tree with this tree's bench; floor_ab does the same over raw SPOP)",
    )
    p.add_argument(
        "--agent-switch-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="experiment: start the agent with sys.setswitchinterval(SECONDS)",
    )
    p.add_argument(
        "--agent-log-level",
        default="info",
        help="the agent's and its rule-match log level (default info, as shipped)",
    )
    p.add_argument("--workers-rounds", type=int, default=3,
                   help="alternating 1-worker / 2-worker rounds")  # fmt: skip
    p.add_argument("--workers-duration", type=float, default=10.0)
    p.add_argument("--overload-connections", type=int, default=2048)
    p.add_argument(
        "--overload-budget-ms",
        type=int,
        default=400,
        help="the agent's processing_budget_ms in the overload run (default: the product's)",
    )
    p.add_argument("--overload-duration", type=float, default=20.0)
    p.add_argument("--overload-scenario", default="clean_get", choices=sorted(SCENARIOS))
    p.add_argument("--profile-duration", type=float, default=15.0)
    p.add_argument("--profile-scenario", default="clean_get", choices=sorted(SCENARIOS))
    p.add_argument("--profile-connections", type=int, default=128)
    p.add_argument("--floor-transactions", type=int, default=FLOOR_TRANSACTIONS,
                   help="transactions per floor round and side")  # fmt: skip
    p.add_argument("--floor-rounds", type=int, default=FLOOR_ROUNDS)
    p.add_argument("--soak-transactions", type=int, default=DEFAULT_TRANSACTIONS)
    p.add_argument("--soak-baseline", type=int, default=DEFAULT_BASELINE)
    p.add_argument("--soak-sample-every", type=int, default=DEFAULT_SAMPLE_EVERY)
    p.add_argument("--soak-rules", choices=["small", "crs"], default="small")
    p.add_argument("--soak-ttl-ms", type=int, default=DEFAULT_TTL_MS)
    p.add_argument("--results", type=Path, default=ROOT / "results")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep configs and logs here instead of a temp dir")  # fmt: skip
    args = p.parse_args(argv)
    args.agent_option = dict(args.agent_option) or None
    bad_modes = set(args.modes) - {"all", *MODES}
    if bad_modes:
        p.error(f"unknown modes: {', '.join(sorted(bad_modes))}")
    args.modes = list(MODES) if not args.modes or "all" in args.modes else args.modes
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    try:  # found once, here: a missing binary is a usage error, not a failure mid-run
        args.haproxy = str(find_haproxy(args.haproxy))
    except (ValueError, HAProxyNotFoundError) as exc:
        p.error(f"--haproxy: {exc}")
    return args


def _version(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        return f"unavailable ({exc})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def metadata(args: argparse.Namespace) -> dict[str, Any]:
    from coraza_spoa_py import engine as waf

    # BENCH_COMMIT: set when running from an exported tree (`git archive HEAD`), which has no
    # .git, so that a run is not disturbed by uncommitted edits in a shared working tree
    commit = os.environ.get("BENCH_COMMIT") or _version(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]
    )
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit,
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "haproxy": _version([args.haproxy, "-v"]),
        "engine": waf.engine_version(),
        "python": platform.python_version(),
        "cpu": f"{os.cpu_count()} x {cpu}",
        "agent options": {
            "config": args.agent_option or {},
            "switch_interval_s": args.agent_switch_interval,
            "log_level": args.agent_log_level,
            "tree": str(args.agent_tree) if args.agent_tree else "this one",
        },
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def load_results(folder: Path) -> dict[str, Any]:
    path = folder / "bench.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_results(folder: Path, results: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    (folder / "bench.md").write_text(report.markdown(results))
    report.write_latency_plot(results, folder / "latency.png")
    report.write_soak_plot(results, folder / "soak_rss.png")


def log(text: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    from bench.modes import run_modes

    args = parse_args(argv)
    # SIGTERM (e.g. from `timeout`) must unwind like Ctrl-C, so that the `finally` blocks stop
    # the agent and HAProxy this run started instead of leaving them behind
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    results = load_results(args.results)
    results["meta"] = metadata(args)
    for section, value in run_modes(args, results, log):
        # each section remembers its own run: a later partial re-run replaces "meta" only
        results[section] = {**value, "run": results["meta"]}
        write_results(args.results, results)  # after each mode: nothing is lost on a crash
    log(f"results in {args.results}/bench.md")
    sys.stdout.write(report.markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
