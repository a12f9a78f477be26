"""``python -m tests.crs.run``: the OWASP CRS regression suite, direct and through HAProxy.

    python -m tests.crs.run                      # both modes, v3.3.4 tests, HAProxy 2.6
    python -m tests.crs.run --mode direct        # engine only (seconds)
    python -m tests.crs.run --only '^9201' -v    # stage ids matching a regex, with reasons
    python -m tests.crs.run --setup FILE --overrides FILE --tests DIR --crs-rules-dir DIR
    python -m tests.crs.run --mode orphan        # every response without its request's transaction
    python -m tests.crs.run --mode haproxy --agents 3   # three agents behind HAProxy, round robin

Exit status 0 when every failure is listed in expected-failures.yaml for its mode and no
listed entry passes; 1 otherwise. The last line is ``N passed, N failed, N skipped``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from coraza_spoa_py.settings import DEFAULT_CRS_RULES_DIR, DEFAULT_CRS_SETUP_FILE, RulePaths
from tests.crs import direct, loader, orphan, overrides, results, through_haproxy
from tests.crs.crs_setup import (
    DEFAULT_SETUP_FILE,
    EXPECTED_FAILURES_FILE,
    TESTS_DIR_ENV,
    crs_test_directives,
    crs_tests_dir,
)
from tests.crs.judge import Observation


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.crs.run", description=__doc__)
    parser.add_argument("--mode", choices=("both", "direct", "haproxy", "orphan"), default="both")
    parser.add_argument(
        "--tests",
        type=Path,
        default=crs_tests_dir(),
        help=f"test files root (default: ${TESTS_DIR_ENV} or ../shared/crs-tests/v3.3.4)",
    )
    parser.add_argument(
        "--setup",
        type=Path,
        default=DEFAULT_SETUP_FILE,
        help="setup rules between crs-setup and the CRS rules (default: setup-v3.3.4.conf)",
    )
    parser.add_argument(
        "--overrides", type=Path, default=None, help="go-ftw platform overrides file"
    )
    parser.add_argument("--only", default="", help="regex on stage ids (e.g. '^920')")
    parser.add_argument("--haproxy", default="2.6", help="HAProxy version for the run")
    parser.add_argument(
        "--haproxy-dir",
        type=Path,
        default=through_haproxy.SHIPPED_HAPROXY_DIR,
        help="folder with haproxy.cfg + coraza.cfg (default: the shipped etc/haproxy)",
    )
    parser.add_argument("--crs-rules-dir", default=DEFAULT_CRS_RULES_DIR, help="CRS rules")
    parser.add_argument("--crs-setup-file", default=DEFAULT_CRS_SETUP_FILE, help="crs-setup")
    parser.add_argument("--jobs", type=int, default=4, help="stages in flight through HAProxy")
    parser.add_argument(
        "--agents",
        type=int,
        default=1,
        help="agents behind HAProxy, round robin (> 1: responses become orphans)",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait per stage")
    parser.add_argument("--expected", type=Path, default=EXPECTED_FAILURES_FILE)
    parser.add_argument("--workdir", type=Path, default=None, help="keep configs and logs here")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> list[results.ModeResult]:
    if not args.tests.is_dir():  # an empty run would say "0 failed"
        raise SystemExit(f"no test tree at {args.tests}: pass --tests DIR or set ${TESTS_DIR_ENV}")
    stages = loader.load_tree(args.tests)
    if args.only:
        pattern = re.compile(args.only)
        stages = [s for s in stages if pattern.search(s.stage_id)]
    expected = results.load_expected(args.expected)
    if args.overrides:
        stages, declared = overrides.apply_overrides(
            stages, overrides.load_overrides(args.overrides)
        )
        expected = {**declared, **expected}  # our own file's entry wins for a stage in both
    directives = crs_test_directives(args.setup)
    modes = ("direct", "haproxy") if args.mode == "both" else (args.mode,)
    out = sys.stdout
    out.write(f"{len(stages)} stages from {args.tests}\n")
    mode_results = []
    for mode in modes:
        started = time.monotonic()
        if mode == "direct":
            engine = direct.load_crs_engine(_rule_paths(args), directives)
            observations = direct.run_direct(stages, engine=engine)
        elif mode == "orphan":
            engine = direct.load_crs_engine(_rule_paths(args), directives)
            observations = orphan.run_orphan(stages, engine=engine)
        else:
            observations = _run_haproxy(stages, args, directives)
        out.write(f"{mode}: ran in {time.monotonic() - started:.1f}s\n")
        mode_results.append(results.evaluate(mode, stages, observations, expected))
    if args.only:  # entries for stages not run are not stale
        for result in mode_results:
            result.stale_entries = [s for s in result.stale_entries if s in result.judgements]
    results.print_report(stages, mode_results, expected, out, verbose=args.verbose)
    return mode_results


def _run_haproxy(
    stages: Sequence[loader.Stage], args: argparse.Namespace, directives: str
) -> dict[str, Observation]:
    log_messages = through_haproxy.needs_messages(stages)
    with tempfile.TemporaryDirectory(prefix="crs-haproxy-") as tmp:
        workdir = args.workdir or Path(tmp)
        with through_haproxy.crs_stack(
            workdir,
            version=args.haproxy,
            haproxy_dir=args.haproxy_dir,
            rule_paths=_rule_paths(args),
            directives=directives,
            log_messages=log_messages,
            agents=args.agents,
        ) as stack:
            observations = through_haproxy.run_through_haproxy(
                stages,
                ("127.0.0.1", stack.frontend_port),
                jobs=args.jobs,
                timeout_s=args.timeout,
            )
        if not log_messages:
            return observations
        # the agent has stopped: its log is complete
        return through_haproxy.attach_messages(
            observations, workdir / through_haproxy.MATCH_LOG_NAME
        )


def _rule_paths(args: argparse.Namespace) -> RulePaths:
    return RulePaths(crs_rules_dir=args.crs_rules_dir, crs_setup_file=args.crs_setup_file)


def main(argv: Sequence[str] | None = None) -> int:
    mode_results = run(parse_args(argv))
    return 0 if all(result.clean for result in mode_results) else 1


if __name__ == "__main__":
    sys.exit(main())
