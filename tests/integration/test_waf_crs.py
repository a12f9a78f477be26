"""The binding with the real OWASP CRS 3.3.4 (Debian's modsecurity-crs) and our base config.

The anomaly score (read from TX where the request phases end) must equal CRS's own total, the
"Total Score" in 949110's message, whether 949110 blocked (phase 2) or only logged
(DetectionOnly), and be the same number when nothing reaches the threshold.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from coraza_spoa_py import engine as waf
from coraza_spoa_py.engine import rules
from coraza_spoa_py.models import RequestInfo, ResponseInfo, Verdict
from coraza_spoa_py.settings import AppConfig, RulePaths

pytestmark = pytest.mark.integration

CRS_DIRECTIVES = (
    "Include @coraza.conf-recommended\n"
    "Include @crs-setup.conf.example\n"
    "{before_rules}"
    "Include @owasp_crs/*.conf\n"
    "SecRuleEngine {mode}\n"
)
BROWSER_HEADERS = (
    (b"host", b"example.com"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"),
    (b"accept", b"text/html,application/xhtml+xml"),
    (b"accept-language", b"en-US,en;q=0.5"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
)
# CRS 3.3's crs-setup.conf names: thresholds (900110) and paranoia level (900000)
HIGH_THRESHOLDS = (
    'SecAction "id:900110,phase:1,pass,nolog,t:none,'
    "setvar:tx.inbound_anomaly_score_threshold=10000,"
    'setvar:tx.outbound_anomaly_score_threshold=10000"\n'
)
PARANOIA_2 = 'SecAction "id:900000,phase:1,pass,nolog,t:none,setvar:tx.paranoia_level=2"\n'

Runner = Callable[..., Verdict]


def load_crs(mode: str = "On", before_rules: str = "") -> waf.ModSecEngine:
    directives = CRS_DIRECTIVES.format(mode=mode, before_rules=before_rules)
    return waf.load_engine(AppConfig(name="crs", directives=directives), RulePaths())


@pytest.fixture(scope="module")
def crs_on() -> waf.ModSecEngine:
    return load_crs("On")


def request_verdict(engine: waf.ModSecEngine, **fields: object) -> Verdict:
    tx = engine.new_transaction("crs-tx")
    try:
        return tx.process_request(RequestInfo("crs-tx", **fields))  # type: ignore[arg-type]
    finally:
        tx.close()


def total_score_of_949110(verdict: Verdict) -> int:
    (match,) = [m for m in verdict.matches if m.rule_id == 949110]
    found = re.search(r"\(Total Score: (\d+)\)", match.msg)
    assert found is not None
    return int(found[1])


ATTACKS = {
    "lfi-query": {"path": b"/", "query": b"p=/etc/passwd", "headers": BROWSER_HEADERS},
    "sqli-form": {
        "method": b"POST",
        "path": b"/login",
        "headers": BROWSER_HEADERS
        + ((b"content-type", b"application/x-www-form-urlencoded"), (b"content-length", b"28")),
        "body": b"user=admin' OR '1'='1&pass=x",
    },
    "sqli-json": {
        "method": b"POST",
        "path": b"/api/search",
        "headers": BROWSER_HEADERS
        + ((b"content-type", b"application/json"), (b"content-length", b"45")),
        "body": b'{"q": "1 UNION SELECT password FROM users--"}',
    },
}
# a CRS rule each attack must trigger, proving the right body processor ran
EXPECTED_DETECTION = {"lfi-query": 930120, "sqli-form": 942100, "sqli-json": 942100}


def test_all_crs_rules_load_with_the_debian_setup(crs_on: waf.ModSecEngine) -> None:
    assert crs_on.warnings == ()
    assert crs_on.rule_count > 900  # CRS 3.3.4 + base config, as the engine counts them
    resolved = rules.resolve(
        AppConfig(name="crs", directives="Include @owasp_crs/*.conf\n"), RulePaths()
    )
    assert resolved.text.splitlines() == [
        "Include /etc/modsecurity/crs/REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf",
        "Include /usr/share/modsecurity-crs/rules/*.conf",
        "Include /etc/modsecurity/crs/RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf",
    ]


def test_clean_get_passes(crs_on: waf.ModSecEngine) -> None:
    verdict = request_verdict(crs_on, path=b"/index.html", query=b"page=2", headers=BROWSER_HEADERS)
    assert verdict == Verdict()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_is_denied_by_949110_with_crs_total(crs_on: waf.ModSecEngine, attack: str) -> None:
    verdict = request_verdict(crs_on, **ATTACKS[attack])
    assert (verdict.interrupted, verdict.action, verdict.status) == (True, "deny", 403)
    assert verdict.rule_id == 949110
    assert EXPECTED_DETECTION[attack] in verdict.matched_rule_ids
    assert verdict.anomaly_score == total_score_of_949110(verdict) > 0
    assert verdict.rules_hit == len(verdict.matched_rule_ids)  # all CRS ids carry a msg
    assert verdict.matches[-1].disruptive and verdict.matches[-1].phase == "request-body"


def test_lfi_score_is_exactly_two_critical_rules(crs_on: waf.ModSecEngine) -> None:
    verdict = request_verdict(crs_on, **ATTACKS["lfi-query"])
    assert verdict.matched_rule_ids == (930120, 932160, 949110)
    assert verdict.anomaly_score == 10  # 2 x critical (5) at paranoia level 1


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_detection_only_reports_without_blocking(attack: str) -> None:
    """1. DetectionOnly: 949110 matches and logs but does not block, and phase 2 runs to its
    end. 2. Same hits and the same score as the blocking engine."""
    verdict = request_verdict(load_crs("DetectionOnly"), **ATTACKS[attack])
    assert not verdict.interrupted
    assert verdict.rules_hit > 0
    assert verdict.anomaly_score == total_score_of_949110(verdict)


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_report_rule_score_below_threshold_matches_blocking_total(
    crs_on: waf.ModSecEngine, attack: str
) -> None:
    """1. Thresholds raised: nothing blocks and 949110 never matches; only TX can give the
    score. 2. It equals the total 949110 reports on the default engine."""
    blocked = request_verdict(crs_on, **ATTACKS[attack])
    relaxed = request_verdict(load_crs("On", HIGH_THRESHOLDS), **ATTACKS[attack])
    assert not relaxed.interrupted
    assert 949110 not in relaxed.matched_rule_ids
    assert relaxed.anomaly_score == total_score_of_949110(blocked)


def test_paranoia_level_2_total(crs_on: waf.ModSecEngine) -> None:
    pl2 = load_crs("On", PARANOIA_2)
    verdict = request_verdict(pl2, **ATTACKS["sqli-form"])
    assert verdict.rule_id == 949110
    assert verdict.anomaly_score == total_score_of_949110(verdict)
    assert verdict.anomaly_score > request_verdict(crs_on, **ATTACKS["sqli-form"]).anomaly_score


def test_mysql_error_in_html_response_is_blocked_in_phase_4(crs_on: waf.ModSecEngine) -> None:
    tx = crs_on.new_transaction("leak")
    try:
        request = tx.process_request(RequestInfo("leak", headers=BROWSER_HEADERS))
        assert not request.interrupted
        verdict = tx.process_response(
            ResponseInfo(
                "leak",
                status=200,
                headers=((b"content-type", b"text/html; charset=utf-8"),),
                body=b"<html><body>You have an error in your SQL syntax; check the manual "
                b"that corresponds to your MySQL server version</body></html>",
            )
        )
    finally:
        tx.close()
    assert (verdict.interrupted, verdict.action, verdict.status) == (True, "deny", 403)
    assert verdict.rule_id == 959100  # outbound blocking evaluation
    assert 951230 in verdict.matched_rule_ids  # mysql SQL Information Leakage
    assert {m.phase for m in verdict.matches} == {"response-body"}
    assert verdict.anomaly_score == 0  # inbound only, as coraza-spoa reports it


def test_engine_off_reports_nothing() -> None:
    """SecRuleEngine Off: no rule runs, ours included, so the metrics are zeros
    (docs/compatibility.md "Variables we set")."""
    assert request_verdict(load_crs("Off"), **ATTACKS["lfi-query"]) == Verdict()


# -- REQUEST_BODY as ModSecurity 2.9 and Coraza fill it (base config rule 200010) -----------
JAVA_CLASS = b"java.lang.Runtime"  # what 944100 looks for (PL1)
CLASS_AS_ELEMENT = b"<x><" + JAVA_CLASS + b">v</" + JAVA_CLASS + b"></x>"


def body_request(content_type: bytes, body: bytes) -> dict[str, object]:
    length = str(len(body)).encode()
    return {
        "method": b"POST",
        "path": b"/api",
        "headers": BROWSER_HEADERS + ((b"content-type", content_type), (b"content-length", length)),
        "body": body,
    }


def multipart(field: bytes, filename: bytes | None, content: bytes) -> tuple[bytes, bytes]:
    disposition = b'form-data; name="' + field + b'"'
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    body = (
        b"--b0undary\r\nContent-Disposition: " + disposition + b"\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n--b0undary--\r\n"
    )
    return b"multipart/form-data; boundary=b0undary", body


def multipart_lf(field: bytes, content: bytes) -> tuple[bytes, bytes]:
    content_type, body = multipart(field, None, content)
    return content_type, body.replace(b"\r\n", b"\n")


@pytest.fixture(scope="module")
def crs_detect() -> waf.ModSecEngine:
    return load_crs("DetectionOnly")


@pytest.mark.parametrize(
    ("case", "content_type", "body"),
    [
        ("xml element name", b"application/xml", CLASS_AS_ELEMENT),
        ("xml attribute name", b"text/xml", b"<x><e " + JAVA_CLASS + b'="v">w</e></x>'),
        ("uploaded file", *multipart(b"upload", b"Main.class", b"\xca\xfe" + JAVA_CLASS)),
    ],
)
def test_parsed_bodies_keep_raw_text_out_of_request_body(
    crs_detect: waf.ModSecEngine, case: str, content_type: bytes, body: bytes
) -> None:
    """What the parser does not hand to the rules as a value (XML names, a file's bytes) is
    not scanned as raw REQUEST_BODY either: ModSecurity 2.9's and Coraza's behaviour."""
    verdict = request_verdict(crs_detect, **body_request(content_type, body))
    assert 944100 not in verdict.matched_rule_ids, case
    assert 200002 not in verdict.matched_rule_ids  # the body did parse


@pytest.mark.parametrize(
    ("case", "content_type", "body"),
    [
        ("xml text", b"application/xml", b"<x><e>" + JAVA_CLASS + b"</e></x>"),
        ("xml attribute value", b"application/xml", b'<x><e a="' + JAVA_CLASS + b'">v</e></x>'),
        ("json value", b"application/json", b'{"a": "' + JAVA_CLASS + b'"}'),
        ("json key", b"application/json", b'{"' + JAVA_CLASS + b'": 1}'),
        ("multipart field", *multipart(b"field", None, JAVA_CLASS)),
        ("urlencoded", b"application/x-www-form-urlencoded", b"a=" + JAVA_CLASS),
        ("no parser", b"text/plain", b"<" + JAVA_CLASS + b">"),
    ],
)
def test_values_the_parser_reads_are_still_inspected(
    crs_detect: waf.ModSecEngine, case: str, content_type: bytes, body: bytes
) -> None:
    verdict = request_verdict(crs_detect, **body_request(content_type, body))
    assert 944100 in verdict.matched_rule_ids, case


# a CRS-tagged rule that sees REQUEST_BODY only: which processors leave it a target
REQUEST_BODY_PROBE = (
    'SecRule REQUEST_BODY "@rx ." "id:299001,phase:2,pass,log,msg:\'raw body seen\','
    "tag:'OWASP_CRS',t:none\"\n"
)


@pytest.fixture(scope="module")
def crs_probe() -> waf.ModSecEngine:
    return load_crs("DetectionOnly", REQUEST_BODY_PROBE)


@pytest.mark.parametrize(
    ("content_type", "body", "raw_body_inspected"),
    [
        (b"application/xml", b"<x>v</x>", False),
        (b"application/json", b'{"a": 1}', False),
        (*multipart(b"field", None, b"v"), False),
        (b"application/x-www-form-urlencoded", b"a=v", True),
        (b"text/plain", b"v", True),  # no parser: CRS's 901340 forces the variable
        (b"application/xml", b"<x>v</x", True),  # the parser failed
        (b"application/json", b'{"a": ', True),
        # parsed, but ambiguously (LF line ends: a strict-multipart error, 200003)
        (*multipart_lf(b"field", b"v"), True),
    ],
)
def test_request_body_is_a_target_only_when_no_parser_read_the_body(
    crs_probe: waf.ModSecEngine, content_type: bytes, body: bytes, raw_body_inspected: bool
) -> None:
    verdict = request_verdict(crs_probe, **body_request(content_type, body))
    assert (299001 in verdict.matched_rule_ids) is raw_body_inspected


def test_a_body_its_parser_rejects_keeps_its_raw_text_inspected(
    crs_detect: waf.ModSecEngine,
) -> None:
    """Unparseable XML: the parser gave the rules nothing, so REQUEST_BODY stays a target."""
    broken = b"<x><" + JAVA_CLASS + b">v</x"
    verdict = request_verdict(crs_detect, **body_request(b"application/xml", broken))
    assert {200002, 944100} <= set(verdict.matched_rule_ids)


def test_removing_200010_restores_libmodsecurity_3s_own_request_body(
    crs_detect: waf.ModSecEngine,
) -> None:
    native = load_crs("DetectionOnly", "SecRuleRemoveById 200010\n")
    element_name = body_request(b"application/xml", CLASS_AS_ELEMENT)
    assert 944100 not in request_verdict(crs_detect, **element_name).matched_rule_ids
    assert 944100 in request_verdict(native, **element_name).matched_rule_ids
