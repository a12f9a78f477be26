"""Judging a stage from the ids of its own transaction, like ftw/go-ftw judge log lines."""

from __future__ import annotations

from tests.crs.judge import Observation, judge, log_lines, observe_with_retry
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


def test_a_regex_without_rule_id_is_skipped_when_messages_are_unknown() -> None:
    expected = StageOutput(log_regexes=("Matched Data: evil",))
    assert judge(expected, Observation(status=200)).outcome == "skipped"


def test_a_message_pattern_is_judged_on_the_rule_messages() -> None:
    """go-ftw/ftw patterns that name no id (a message text) are searched in one
    ``[msg "..."]`` line per matched rule, when the mode knows the messages."""
    expected = StageOutput(log_regexes=("Invalid HTTP Request Line",))
    seen = Observation(status=200, rule_ids=(920100,), messages=("Invalid HTTP Request Line",))
    assert judge(expected, seen).outcome == "passed"
    other = Observation(status=200, rule_ids=(920100,), messages=("Method is not allowed",))
    assert judge(expected, other).reasons == ("log_contains 'Invalid HTTP Request Line' not found",)
    negative = StageOutput(no_log_regexes=(r"Request Line",))
    assert judge(negative, seen).outcome == "failed"
    assert judge(negative, other).outcome == "passed"
    # known to be none (the engine matched nothing) is not the same as unknown
    assert judge(expected, Observation(status=200, messages=())).outcome == "failed"
    assert log_lines((1,), ("m",)) == ['[id "1"]', '[msg "m"]']


def test_retry_once_observes_a_failing_stage_again() -> None:
    answers = iter((Observation(status=502), Observation(status=200)))
    calls: list[int] = []

    def observe() -> Observation:
        calls.append(1)
        return next(answers)

    expected = StageOutput(status=(200,), retry_once=True)
    assert observe_with_retry(observe, expected).status == 200
    assert len(calls) == 2


def test_without_retry_once_or_when_passing_there_is_one_try() -> None:
    calls: list[int] = []

    def observe() -> Observation:
        calls.append(1)
        return Observation(status=502)

    assert observe_with_retry(observe, StageOutput(status=(200,))).status == 502
    assert observe_with_retry(observe, StageOutput(status=(502,), retry_once=True)).status == 502
    assert len(calls) == 2  # one each
