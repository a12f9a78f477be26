"""Judging a stage from the ids of its own transaction, like ftw/go-ftw judge log lines."""

from __future__ import annotations

from tests.crs.judge import Observation, judge, log_lines
from tests.crs.loader import StageOutput


def test_log_regexes_match_modsecurity_style_lines() -> None:
    assert log_lines((920100, 949110)) == ['[id "920100"]', '[id "949110"]']
    expected = StageOutput(log_regexes=('id "920100"',), no_log_regexes=('id "920200"',))
    assert judge(expected, Observation(status=200, rule_ids=(920100,))).outcome == "passed"
    failed = judge(expected, Observation(status=200, rule_ids=(920200,)))
    assert failed.outcome == "failed"
    assert len(failed.reasons) == 2


def test_regex_that_never_matched_a_modsecurity_line_still_never_matches() -> None:
    """v3.3.4's 921140-1 says no_log_contains 'id:921140': vacuous in ftw, vacuous here."""
    expected = StageOutput(no_log_regexes=("id:921140",))
    assert judge(expected, Observation(status=400, rule_ids=(921140,))).outcome == "passed"


def test_expect_ids_status_and_response() -> None:
    expected = StageOutput(
        expect_ids=(951230,), no_expect_ids=(949110,), status=(200, 403), response_contains="SQL"
    )
    seen = Observation(status=200, rule_ids=(951230,), response=b"... SQL syntax")
    assert judge(expected, seen).outcome == "passed"
    assert judge(expected, Observation(status=500, rule_ids=(951230,))).outcome == "failed"
    assert judge(expected, Observation(status=200, rule_ids=(951230, 949110))).outcome == "failed"


def test_expect_error_and_errors() -> None:
    assert judge(StageOutput(expect_error=True), Observation(error="timeout")).outcome == "passed"
    assert judge(StageOutput(expect_error=True), Observation(status=400)).outcome == "failed"
    assert judge(StageOutput(status=(200,)), Observation(error="timeout")).outcome == "failed"
    agent_failed = Observation(status=200, agent_error=1003)
    assert judge(StageOutput(status=(200,)), agent_failed).outcome == "failed"


def test_a_regex_without_rule_id_is_skipped_not_passed() -> None:
    expected = StageOutput(log_regexes=("Matched Data: evil",))
    assert judge(expected, Observation(status=200)).outcome == "skipped"
