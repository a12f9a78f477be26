"""waf_text.score_line_data: our anomaly-score report line is recognised without a full parse,
and no other rule's line can pass for it, whatever the client put in the matched value."""

from __future__ import annotations

from coraza_spoa_py import waf_text


def line(rule_id: str, data: str, value: str = "x") -> bytes:
    # a rule with an operator, as libmodsecurity 3.0.9 logs it: the matched value comes first
    return (
        "ModSecurity: Warning. Matched \"Operator `Contains' with parameter `evil' against "
        f"variable `ARGS:a' (Value: `{value}' ) "
        '[file "/etc/r.conf"] [line "7"] '
        f'[id "{rule_id}"] [rev ""] [msg "m"] [data "{data}"] [severity "2"] [ver ""] '
        '[maturity "0"] [accuracy "0"] [hostname "h"] [uri "/"] [unique_id "u"] [ref ""]'
    ).encode()


def report_line(data: str) -> bytes:
    # our SecAction, as libmodsecurity 3.0.9 logs it (captured): no operator message
    return (
        'ModSecurity: Warning.  [file "<<reference missing or not informed>>"] [line "1"] '
        f'[id "{waf_text.SCORE_RULE_ID}"] [rev ""] [msg "coraza-spoa-py anomaly score"] '
        f'[data "{data}"] [severity "0"] [ver ""] [maturity "0"] [accuracy "0"] '
        '[hostname ""] [uri "/"] [unique_id "x"] [ref ""]'
    ).encode()


def test_the_report_rule_line_gives_its_data_as_the_full_parse_does():
    raw = report_line("crs4= crs3=15")
    assert waf_text.score_line_data(raw) == "crs4= crs3=15"
    assert waf_text.parse_match(raw, 2, "").data == "crs4= crs3=15"
    assert waf_text.reported_score(waf_text.score_line_data(raw) or "", 0) == 15


def test_another_rule_is_not_the_report_line():
    assert waf_text.score_line_data(line("949110", "crs4= crs3=15")) is None


def test_request_content_naming_the_report_rule_does_not_pass_for_it():
    """The client's text, quoted in the matched value (before the real fields) or in the data
    field (after them), holds the report rule's id and data fields: still not the report."""
    fields = f'[id "{waf_text.SCORE_RULE_ID}"] [data "crs4=0 crs3=0"] ['
    assert waf_text.score_line_data(line("942100", "d", value="evil " + fields)) is None
    assert waf_text.score_line_data(line("942100", f'x"] {fields}')) is None
