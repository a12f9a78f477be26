"""waf_text._FIELD (the field scanner of rule-match lines) finds exactly what its simple form
finds: a lazy value up to the first '"]' followed by ' [' or the end of the line."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from coraza_spoa_py import waf_text

SIMPLE_FORM = re.compile(r'\[(\w+) "(.*?)"\](?= \[|\s*$)')
PIECES = ["a", '"', "]", " ", "[", "id", '"] [', '"]', ' [id "', "\\", "\n", "\r", '"]\n', "é"]
values = st.lists(st.sampled_from(PIECES), max_size=14).map("".join)


@settings(max_examples=3000, deadline=None)
@given(value=values, data=values, uri=values, end=st.sampled_from(["", " ", "  \n", "\n"]))
def test_the_scanner_matches_the_simple_form(value: str, data: str, uri: str, end: str) -> None:
    line = (
        f"ModSecurity: Warning. Matched \"Operator `Rx'\" (Value: `{value}' ) "
        f'[file "/r.conf"] [line "3"] [id "942100"] [data "{data}"] [uri "{uri}"]{end}'
    )
    assert waf_text._FIELD.findall(line) == SIMPLE_FORM.findall(line)


def test_a_crs_line_gives_its_fields():
    line = (
        'ModSecurity: Warning. Matched "Operator `Rx\' with parameter `x\'" [file "/r.conf"] '
        '[line "97"] [id "930120"] [msg "OS File Access Attempt"] [data "a "quoted"] b"] '
        '[tag "attack-lfi"] [tag "OWASP_CRS"] [unique_id "u"]'
    )
    assert waf_text._FIELD.findall(line) == [
        ("file", "/r.conf"),
        ("line", "97"),
        ("id", "930120"),
        ("msg", "OS File Access Attempt"),
        ("data", 'a "quoted"] b'),
        ("tag", "attack-lfi"),
        ("tag", "OWASP_CRS"),
        ("unique_id", "u"),
    ]
