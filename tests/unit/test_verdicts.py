"""verdicts.phase_verdict: what the engine said → a ``Verdict`` (docs/compatibility.md "Variables
we set"). The real engine's side is tests/integration/test_waf.py."""

from __future__ import annotations

import pytest

from coraza_spoa_py.models import RuleMatch
from coraza_spoa_py.verdicts import Interruption, is_counted_rule_id, phase_verdict


def match(rule_id: int, msg: str = "m", *, disruptive: bool = False) -> RuleMatch:
    return RuleMatch(rule_id=rule_id, msg=msg, disruptive=disruptive, raw=f"line {rule_id}")


def test_counted_ranges_are_the_crs_attack_and_custom_ranges():
    assert [is_counted_rule_id(i) for i in (909_999, 910_000, 959_999, 960_000)] == [
        False,
        True,
        True,
        False,
    ]
    assert [is_counted_rule_id(i) for i in (189_999, 190_000, 199_999, 100_000)] == [
        False,
        True,
        True,
        False,
    ]


def test_rules_hit_counts_matches_with_a_message_in_the_counted_ranges_over_the_transaction():
    """1. a request phase group matched 942100 and 100 (not counted)  2. the response matched
    195000, and 942200 without a message  3. the response's verdict: every id so far, in
    order; rules_hit 2; its own matches and lines only."""
    matches = [match(942_100), match(100), match(195_000), match(942_200, msg="")]
    verdict = phase_verdict(matches, 2, anomaly_score=5, interruption=None)
    assert verdict.matched_rule_ids == (942_100, 100, 195_000, 942_200)
    assert verdict.rules_hit == 2
    assert verdict.matches == (matches[2], matches[3])
    assert verdict.log_lines == ("line 195000", "line 942200")
    assert (verdict.interrupted, verdict.anomaly_score) == (False, 5)


@pytest.mark.parametrize(
    ("url", "rule_action", "expected"),
    [
        ("", "deny", "deny"),
        ("", "drop", "drop"),
        ("https://example.com/blocked", "redirect", "redirect"),
        ("", "", "deny"),  # another disruptive action, or a `block` we do not name
    ],
)
def test_the_disruptive_rules_action_decides_deny_drop_or_redirect(url, rule_action, expected):
    rule = match(949_110, disruptive=True)
    interruption = Interruption(403, url, 2, body_limit=False, rule=rule, rule_action=rule_action)
    verdict = phase_verdict([rule], 0, 0, interruption)
    assert (verdict.interrupted, verdict.action, verdict.rule_id) == (True, expected, 949_110)
    assert (verdict.status, verdict.redirect_url) == (403, url)


@pytest.mark.parametrize(("phase", "status"), [(2, 413), (4, 500)])
def test_a_body_limit_is_413_for_a_request_body_and_500_for_a_response_body(phase, status):
    no_rule = RuleMatch(rule_id=0, disruptive=True, phase_id=phase)
    interruption = Interruption(403, "", phase, body_limit=True, rule=no_rule)
    verdict = phase_verdict([], 0, 0, interruption, (1.0, 2.0))
    assert (verdict.status, verdict.action, verdict.rule_id) == (status, "deny", 0)
    assert verdict.matched_rule_ids == () and verdict.engine_times == (1.0, 2.0)
