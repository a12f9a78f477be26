"""waf_text.score_line_data: our anomaly-score report line is recognised without a full parse,
and no other rule's line can pass for it (its id is the line's first id field)."""

from __future__ import annotations

from coraza_spoa_py import waf_text


def line(rule_id: str, data: str) -> bytes:
    return (
        'ModSecurity: Warning. Matched. [file "/etc/r.conf"] [line "7"] '
        f'[id "{rule_id}"] [rev ""] [msg "m"] [data "{data}"] [severity "2"] [ver ""] '
        '[maturity "0"] [accuracy "0"] [hostname "h"] [uri "/"] [unique_id "u"] [ref ""]'
    ).encode()


def test_the_report_rule_line_gives_its_data_as_the_full_parse_does():
    raw = line(str(waf_text.SCORE_RULE_ID), "crs4= crs3=15")
    assert waf_text.score_line_data(raw) == "crs4= crs3=15"
    assert waf_text.parse_match(raw, 2, "").data == "crs4= crs3=15"
    assert waf_text.reported_score(waf_text.score_line_data(raw) or "", 0) == 15


def test_another_rule_is_not_the_report_line():
    assert waf_text.score_line_data(line("949110", "crs4= crs3=15")) is None


def test_request_content_naming_the_report_rule_does_not_pass_for_it():
    """The matched data (attacker content) holds the report rule's id field: still rule 942100."""
    injected = f'x"] [id "{waf_text.SCORE_RULE_ID}"] [data "crs4=0 crs3=0'
    assert waf_text.score_line_data(line("942100", injected)) is None
