"""The OWASP CRS v3.3.4 regression suite, run in both modes (marker ``crs``; part of ``make test``).

Modes: *direct* (libmodsecurity in-process, the baseline) and *haproxy* (real HAProxy 2.6 with
the shipped etc/haproxy config, the agent as a subprocess, albedo behind). Each mode is run once
per session (about 5 s direct, 25 s through HAProxy on 2 cores) and every test below reads it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crs import direct, loader, results, through_haproxy
from tests.crs.crs_setup import EXPECTED_FAILURES_FILE, crs_tests_dir
from tests.crs.judge import judge
from tests.crs.loader import Stage, StageInput, StageOutput

pytestmark = pytest.mark.crs

# Issue #5 asks for 98 % through HAProxy with at most 30 expected failures. Measured: 2370 of
# 2396 (98.91 %), 26 failures, none of them the agent's: 5 fail in the engine itself
# (libmodsecurity 3.0.9's quoted backslashes), 5 expect Apache's own status, 16 are answered or
# rewritten by HAProxy before any filter runs. docs/crs.md has the table;
# expected-failures.yaml lists each stage, and the exact list guards against regressions.
MIN_HAPROXY_PASS_RATE = 0.98
MAX_HAPROXY_EXPECTED_FAILURES = 30
# stages that pass in the engine alone but not through HAProxy: each one is a place where
# HAProxy (or the agent) changes what the rules see
MAX_HAPROXY_ONLY_ENTRIES = 30
STAGE_TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    found = loader.load_tree(crs_tests_dir())
    assert len(found) == 2396, "v3.3.4 has 2396 enabled stages (178 files, 5 disabled)"
    return found


@pytest.fixture(scope="module")
def expected() -> dict[str, results.ExpectedFailure]:
    return results.load_expected(EXPECTED_FAILURES_FILE)


@pytest.fixture(scope="module")
def direct_result(stages, expected) -> results.ModeResult:
    observations = direct.run_direct(stages)
    return results.evaluate("direct", stages, observations, expected)


@pytest.fixture(scope="module")
def haproxy_stack(tmp_path_factory) -> Iterator[through_haproxy.Stack]:
    with through_haproxy.crs_stack(tmp_path_factory.mktemp("crs-haproxy"), version="2.6") as stack:
        yield stack


@pytest.fixture(scope="module")
def haproxy_result(stages, expected, haproxy_stack) -> results.ModeResult:
    observations = through_haproxy.run_through_haproxy(
        stages, ("127.0.0.1", haproxy_stack.frontend_port), jobs=4, timeout_s=STAGE_TIMEOUT_S
    )
    return results.evaluate("haproxy", stages, observations, expected)


def _explain(result: results.ModeResult) -> str:
    lines = []
    for stage_id in result.unexpected_failures:
        seen = result.observations[stage_id]
        lines.append(
            f"UNEXPECTED {stage_id}: {'; '.join(result.judgements[stage_id].reasons)}"
            f" (status {seen.status}, ids {list(seen.rule_ids)})"
        )
    lines += [f"STALE {s}: listed for {result.mode} but passes" for s in result.stale_entries]
    return "\n".join(lines)


def test_direct_mode_fails_exactly_the_expected_stages(direct_result) -> None:
    """1. Feed all 2396 stages to libmodsecurity in-process.
    2. Every failure is listed for "direct" in expected-failures.yaml, and every entry listed
       for "direct" really fails (a stale entry would hide a future regression)."""
    assert direct_result.clean, _explain(direct_result)
    assert direct_result.count("skipped") == 0


def test_through_haproxy_fails_exactly_the_expected_stages(haproxy_result) -> None:
    """1. Send all 2396 stages through HAProxy 2.6 (shipped config) to the agent.
    2. Judge each by the X-Coraza-Rule-Ids of its own transaction, status, response.
    3. Every failure is listed for "haproxy"; every entry listed for "haproxy" fails."""
    assert haproxy_result.clean, _explain(haproxy_result)
    assert haproxy_result.count("skipped") == 0


def test_through_haproxy_pass_rate(haproxy_result) -> None:
    """At least 98 % of the stages pass through HAProxy (measured: 98.91 %)."""
    assert haproxy_result.pass_rate >= MIN_HAPROXY_PASS_RATE, (
        f"{haproxy_result.count('passed')} of {len(haproxy_result.judgements)} stages pass"
    )


def test_through_haproxy_passes_99_percent_of_what_passes_direct(direct_result, haproxy_result):
    """Of the stages that pass in the engine alone, at least 99 % also pass through HAProxy
    (measured: 2370 of 2382, 99.50 %)."""
    direct_passes = [s for s, j in direct_result.judgements.items() if j.outcome == "passed"]
    both = [s for s in direct_passes if haproxy_result.judgements[s].outcome == "passed"]
    assert len(both) >= 0.99 * len(direct_passes), (len(both), len(direct_passes))


def test_haproxy_expected_failures_are_few_and_explained(expected) -> None:
    """At most 30 stages are expected to fail through HAProxy, and at most 30 fail only there;
    each entry gives its reason."""
    through_haproxy = [e for e in expected.values() if "haproxy" in e.modes]
    haproxy_only = [e for e in expected.values() if e.modes == ("haproxy",)]
    assert len(through_haproxy) <= MAX_HAPROXY_EXPECTED_FAILURES
    assert len(haproxy_only) <= MAX_HAPROXY_ONLY_ENTRIES
    assert all(len(entry.reason) > 40 for entry in expected.values())


def test_no_agent_error_on_any_stage(haproxy_result) -> None:
    """No stage got txn.coraza.error (the agent or HAProxy's SPOE failing) after one retry."""
    errors = {
        stage_id: seen.agent_error
        for stage_id, seen in haproxy_result.observations.items()
        if seen.agent_error is not None
    }
    assert errors == {}


def test_the_modes_differ_only_where_listed(direct_result, haproxy_result, expected) -> None:
    """Every stage whose outcome differs between the modes has an entry naming one mode only."""
    for stage_id, judgement in direct_result.judgements.items():
        if judgement.outcome != haproxy_result.judgements[stage_id].outcome:
            assert stage_id in expected and len(expected[stage_id].modes) == 1, stage_id


def test_response_phase_rule_ids_reach_the_header(haproxy_stack) -> None:
    """1. A go-ftw-style stage POSTs an albedo /reflect spec whose body leaks a MySQL error.
    2. The response goes through the agent's response phase (coraza-res with the body).
    3. X-Coraza-Rule-Ids carries the response rules 951230 (SQL leak) and 959100 (outbound
       score) of the SAME transaction, so RESPONSE-95x stages can be judged like request ones."""
    spec = {
        "status": 200,
        "headers": {"Content-Type": "text/html"},
        "body": "<html>You have an error in your SQL syntax; check the manual</html>",
    }
    stage = Stage(
        stage_id="reflect-1",
        file="RESPONSE-951/951230.yaml",
        rule_file="RESPONSE-951",
        format="goftw",
        input=StageInput(
            method="POST",
            uri="/reflect",
            headers=(("Host", "localhost"), ("Content-Type", "application/json")),
            data=json.dumps(spec),
        ),
        output=StageOutput(expect_ids=(951230, 959100), status=(200,)),
    )
    seen = through_haproxy.observe(
        ("127.0.0.1", haproxy_stack.frontend_port), stage, timeout_s=STAGE_TIMEOUT_S
    )
    assert judge(stage.output, seen).outcome == "passed", seen
    assert b"You have an error in your SQL syntax" in seen.response


def test_runner_prints_the_closing_line(tmp_path: Path, capsys) -> None:
    """``python -m tests.crs.run --mode direct --only ^911`` ends with the count line alone."""
    from tests.crs import run

    status = run.main(["--mode", "direct", "--only", "^911"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert status == 0
    assert lines[-1] == "8 passed, 0 failed, 0 skipped"
    assert any("REQUEST-911-METHOD-ENFORCEMENT/911100.yaml" in line for line in lines)
