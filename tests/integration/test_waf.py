"""The libmodsecurity binding with small deterministic rule files (tests/data/rules/).

Real library, no CRS: actions (deny, drop, redirect), statuses, rule ids, rules_hit ranges,
the anomaly-score report for CRS 3 and CRS 4 variable names, load errors, raw bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from coraza_spoa_py import engine as waf
from coraza_spoa_py.engine import binding, rules
from coraza_spoa_py.models import (
    CloseWhen,
    DeadlineExceededError,
    RequestInfo,
    ResponseInfo,
    Verdict,
)
from coraza_spoa_py.settings import AppConfig, RulePaths

pytestmark = pytest.mark.integration

RULES_DIR = Path(__file__).resolve().parent.parent / "data" / "rules"


def load(directives: str, base_dir: Path = RULES_DIR) -> waf.ModSecEngine:
    return waf.load_engine(
        AppConfig(name="test", directives=directives, base_dir=str(base_dir)), RulePaths()
    )


@pytest.fixture(scope="module")
def actions_engine() -> waf.ModSecEngine:
    return load("Include actions.conf\n")


def run_request(engine: waf.ModSecEngine, request: RequestInfo) -> Verdict:
    tx = engine.new_transaction(request.transaction_id)
    try:
        return tx.process_request(request)
    finally:
        tx.close()


def go(value: bytes, tx_id: str = "tx-1") -> RequestInfo:
    return RequestInfo(tx_id, path=b"/index", query=b"go=" + value, headers=((b"host", b"x"),))


def test_engine_version_names_modsecurity() -> None:
    assert waf.engine_version().startswith("ModSecurity v3.")


def test_clean_request_is_not_interrupted(actions_engine: waf.ModSecEngine) -> None:
    verdict = run_request(actions_engine, go(b"nothing"))
    assert verdict == Verdict()
    assert verdict.log_lines == ()


def test_deny_with_status_in_phase_2(actions_engine: waf.ModSecEngine) -> None:
    """1. go=deny → rule 10003 (phase 2, status 418, msg mentioning "drop").
    2. Expect deny (not drop), 418, the rule id, one disruptive match in phase 2."""
    verdict = run_request(actions_engine, go(b"deny"))
    assert (verdict.interrupted, verdict.action, verdict.status) == (True, "deny", 418)
    assert verdict.rule_id == 10003
    assert verdict.matched_rule_ids == (10003,)
    (match,) = verdict.matches
    assert (match.rule_id, match.disruptive, match.phase_id, match.phase) == (
        10003,
        True,
        2,
        "request-body",
    )
    assert match.msg == "not a drop rule"
    assert verdict.log_lines == (match.raw,)
    assert "Access denied with code 418 (phase 2)" in match.raw


def test_without_match_text_the_matches_and_the_verdict_stay(
    actions_engine: waf.ModSecEngine,
) -> None:
    """``set_match_text(False)`` (no log sink takes rule-match records; docs/performance.md
    change 54): 1. go=deny and go=note with the text off. Result: the same verdicts, rule ids,
    messages and data as with it on, and every match's ``raw`` empty. 2. Text on again.
    Result: ``raw`` is the engine's line once more."""
    with_text = [run_request(actions_engine, go(value)) for value in (b"deny", b"note")]
    waf.set_match_text(False)
    try:
        without = [run_request(actions_engine, go(value)) for value in (b"deny", b"note")]
    finally:
        waf.set_match_text(True)
    again = run_request(actions_engine, go(b"deny"))
    for on, off in zip(with_text, without, strict=True):
        assert off.matches and all(match.raw == "" for match in off.matches)
        assert all(match.raw for match in on.matches)
        assert _without_raw(off) == _without_raw(on)
    assert "Access denied with code 418 (phase 2)" in again.matches[0].raw


def _without_raw(verdict: Verdict) -> tuple:
    """Everything a verdict says but its matches' text lines."""
    matches = tuple(match._replace(raw="") for match in verdict.matches)
    return (
        verdict.interrupted,
        verdict.action,
        verdict.status,
        verdict.rule_id,
        verdict.matched_rule_ids,
        verdict.rules_hit,
        verdict.anomaly_score,
        matches,
    )


@pytest.mark.parametrize(("value", "rule_id"), [(b"drop", 10002), (b"drop-late", 10004)])
def test_drop_rule_gives_action_drop(
    actions_engine: waf.ModSecEngine, value: bytes, rule_id: int
) -> None:
    verdict = run_request(actions_engine, go(value))
    assert (verdict.interrupted, verdict.action, verdict.rule_id) == (True, "drop", rule_id)
    assert verdict.status == 403  # libmodsecurity reports drop like a 403 deny


def test_redirect_rule_gives_url(actions_engine: waf.ModSecEngine) -> None:
    verdict = run_request(actions_engine, go(b"redirect"))
    assert (verdict.interrupted, verdict.action, verdict.status) == (True, "redirect", 302)
    assert verdict.redirect_url == "https://example.com/blocked"
    assert verdict.rule_id == 10001


def test_rules_hit_counts_only_coraza_spoa_ranges_with_msg(
    actions_engine: waf.ModSecEngine,
) -> None:
    """190001 (custom attack range, msg) counts; 100001 (outside) and 190002 (no msg) don't."""
    verdict = run_request(actions_engine, go(b"note"))
    assert not verdict.interrupted
    assert verdict.matched_rule_ids == (190001, 100001, 190002)
    assert verdict.rules_hit == 1
    assert [m.phase for m in verdict.matches] == ["request-headers"] * 3
    first = verdict.matches[0].to_dict()
    assert first["rule_id"] == 190001
    assert first["msg"] == "custom attack note"
    assert first["unique_id"] == "tx-1"
    assert first["uri"] == "/index"
    assert first["raw"] == verdict.log_lines[0]


def test_response_phase_3_and_4(actions_engine: waf.ModSecEngine) -> None:
    tx = actions_engine.new_transaction("resp")
    try:
        assert not tx.process_request(go(b"nothing", "resp")).interrupted
        verdict = tx.process_response(
            ResponseInfo(
                "resp",
                status=200,
                headers=((b"content-type", b"text/html"),),
                body=b"<p>a forbidden-word here</p>",
            )
        )
    finally:
        tx.close()
    assert (verdict.interrupted, verdict.action, verdict.rule_id) == (True, "deny", 10006)
    assert verdict.matches[0].phase == "response-body"

    tx = actions_engine.new_transaction("resp-3")
    try:
        tx.process_request(go(b"nothing", "resp-3"))
        verdict = tx.process_response(ResponseInfo("resp-3", status=599))
    finally:
        tx.close()
    assert (verdict.interrupted, verdict.rule_id) == (True, 10005)
    assert verdict.matches[0].phase == "response-headers"


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_a_body_held_in_another_buffer_type_reaches_the_rules(
    actions_engine: waf.ModSecEngine, kind: type
) -> None:
    # the job points into bytes objects (msc_glue.h cs_job_set_response): anything else is
    # copied into one first, never passed as a pointer cffi would refuse
    tx = actions_engine.new_transaction("resp-buffer")
    try:
        tx.process_request(go(b"nothing", "resp-buffer"))
        verdict = tx.process_response(
            ResponseInfo(
                "resp-buffer",
                status=200,
                headers=((b"content-type", b"text/html"),),
                body=kind(b"<p>a forbidden-word here</p>"),
            )
        )
    finally:
        tx.close()
    assert (verdict.interrupted, verdict.rule_id) == (True, 10006)


def test_relative_include_resolves_against_base_dir() -> None:
    engine = load("SecRuleEngine On\nInclude nested/relative.conf\n")
    assert run_request(engine, go(b"nested")).rule_id == 10101


def test_broken_rule_file_names_file_and_line() -> None:
    with pytest.raises(waf.RulesError) as caught:
        load("SecRuleEngine On\nInclude broken.conf\n")
    (problem,) = caught.value.problems
    assert problem.startswith(f"{RULES_DIR / 'broken.conf'}:3: ")
    assert "notanaction" in problem


def test_broken_directive_names_the_directives_line() -> None:
    """Line numbers point into the app's directives as written, even after an @ include
    expanded into several lines and a Coraza-only directive was dropped."""
    directives = (
        "SecRxPreFilter Off\n"
        "Include @owasp_crs/REQUEST-901-INITIALIZATION.conf\n"
        "Include @crs-setup.conf.example\n"
        'SecRule ARGS "@rx a" "id:1,phase:1,pass,bogus"\n'
    )
    with pytest.raises(waf.RulesError) as caught:
        load(directives)
    assert caught.value.problems[0].startswith("<app test directives>:4: ")


def test_coraza_only_directive_is_dropped_with_a_warning() -> None:
    engine = load("SecRxPreFilter On\nSecRuleEngine On\n")
    assert engine.warnings == (
        "<app test directives>:1: dropped SecRxPreFilter: a Coraza-only directive that "
        "libmodsecurity does not accept",
    )


def test_rule_count_counts_the_app_rules() -> None:
    engine = load('SecRule ARGS "@rx a" "id:1,phase:1,pass,nolog"\n')
    assert engine.rule_count == 1


@pytest.mark.parametrize(
    ("setvars", "expected"),
    [
        ("setvar:tx.anomaly_score=7", 7),  # CRS 3 name
        ("setvar:tx.blocking_inbound_anomaly_score=9", 9),  # CRS 4 name
        ("setvar:tx.anomaly_score=7,setvar:tx.blocking_inbound_anomaly_score=9", 9),
        ("setvar:tx.other=1", 0),  # no CRS: 0
    ],
)
def test_score_report_reads_crs3_and_crs4_variables(setvars: str, expected: int) -> None:
    engine = load(f'SecRuleEngine On\nSecAction "id:1,phase:2,pass,nolog,{setvars}"\n')
    verdict = run_request(engine, go(b"x"))
    assert verdict.anomaly_score == expected
    assert verdict.matched_rule_ids == ()  # read from TX: no rule is reported for it
    assert verdict.log_lines == ()


def test_score_survives_into_the_response_verdict() -> None:
    engine = load(
        'SecRuleEngine On\nSecAction "id:1,phase:2,pass,nolog,setvar:tx.anomaly_score=3"\n'
    )
    tx = engine.new_transaction("keep")
    try:
        tx.process_request(go(b"x", "keep"))
        assert tx.process_response(ResponseInfo("keep")).anomaly_score == 3
    finally:
        tx.close()


def hex_rule(variable: str, expected: bytes, rule_id: int) -> str:
    return (
        f'SecRule {variable} "@streq {expected.hex()}" '
        f"\"id:{rule_id},phase:1,t:none,t:hexEncode,pass,log,msg:'raw bytes intact'\"\n"
    )


def test_raw_bytes_reach_the_rules_unchanged() -> None:
    """1. A header value with NUL, 0xff and a UTF-8 sequence; a path with 0xff; a query with
    a raw NUL. 2. Rules compare hex dumps: the header arrives byte for byte; the URI travels
    as a C string, so its NUL is percent-encoded (REQUEST_URI_RAW) and decoded again for
    REQUEST_URI and ARGS."""
    header_value = b"a\x00\xffb\xc3\xa9"
    directives = (
        "SecRuleEngine On\n"
        + hex_rule("REQUEST_HEADERS:x-raw", header_value, 1)
        + hex_rule("REQUEST_URI_RAW", b"/p\xffth?q=%00x\x01", 2)
        + hex_rule("REQUEST_URI", b"/p\xffth?q=\x00x\x01", 3)
        + hex_rule("ARGS:q", b"\x00x\x01", 4)
    )
    engine = load(directives)
    request = RequestInfo(
        "bytes",
        path=b"/p\xffth",
        query=b"q=\x00x\x01",
        headers=((b"host", b"x"), (b"x-raw", header_value)),
    )
    verdict = run_request(engine, request)
    assert verdict.matched_rule_ids == (1, 2, 3, 4)


def test_query_none_and_empty_query_make_different_uris() -> None:
    directives = (
        'SecRuleEngine On\nSecRule REQUEST_URI "@streq /a?" '
        "\"id:1,phase:1,t:none,pass,log,msg:'empty query'\"\n"
    )
    engine = load(directives)
    assert run_request(engine, RequestInfo("n", path=b"/a", query=None)).matched_rule_ids == ()
    assert run_request(engine, RequestInfo("e", path=b"/a", query=b"")).matched_rule_ids == (1,)


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (IPv4Address("192.0.2.7"), "192.0.2.7"),
        (IPv6Address("::ffff:192.0.2.7"), "192.0.2.7"),  # v4-mapped: unmapped
        (IPv6Address("2001:db8::1"), "2001:db8::1"),
    ],
)
def test_client_address_as_text(address: IPv4Address | IPv6Address, text: str) -> None:
    directives = (
        f'SecRuleEngine On\nSecRule REMOTE_ADDR "@streq {text}" '
        "\"id:1,phase:1,t:none,pass,log,msg:'addr'\"\n"
    )
    verdict = run_request(load(directives), RequestInfo("ip", src_ip=address, src_port=5555))
    assert verdict.matched_rule_ids == (1,)
    assert verdict.matches[0].client == text


def test_protocol_strings_as_the_rules_expect() -> None:
    directives = (
        "SecRuleEngine On\n"
        'SecRule REQUEST_PROTOCOL "@streq HTTP/2.0" "id:1,phase:1,pass,log,msg:req"\n'
        'SecRule RESPONSE_PROTOCOL "@streq HTTP/1.0" "id:2,phase:3,pass,log,msg:res"\n'
    )
    engine = load(directives)
    tx = engine.new_transaction("proto")
    try:
        assert tx.process_request(RequestInfo("proto", version=b"2.0")).matched_rule_ids == (1,)
        assert tx.process_response(ResponseInfo("proto", version=b"1.0")).matched_rule_ids == (
            1,
            2,
        )
    finally:
        tx.close()


@pytest.fixture
def open_transaction(actions_engine: waf.ModSecEngine) -> Iterator[waf.ModSecTransaction]:
    tx = actions_engine.new_transaction("closing")
    yield tx
    tx.close()


def test_close_is_idempotent_and_use_after_close_fails(
    open_transaction: waf.ModSecTransaction,
) -> None:
    assert open_transaction.transaction_id == "closing"
    open_transaction.close()
    open_transaction.close()
    with pytest.raises(waf.EngineError):
        open_transaction.process_request(go(b"x", "closing"))


def test_close_frees_the_engine_log_buffer(actions_engine: waf.ModSecEngine) -> None:
    """The engine's lines for a transaction live in a C buffer that grows on the engine
    thread; the close job frees it there (nothing reads the logging phase's lines)."""
    tx = actions_engine.new_transaction("log-buffer")
    verdict = tx.process_request(go(b"note", "log-buffer"))
    assert 190001 in verdict.matched_rule_ids  # its line went through the buffer
    log = tx._log
    assert log.cap > 0
    tx.close()
    assert (log.buf, log.len, log.cap) == (binding.ffi.NULL, 0, 0)


CORAZA_ONLY_SAMPLES = {
    "secrxprefilter": "SecRxPreFilter Off",
    "secignorerulecompilationerrors": "SecIgnoreRuleCompilationErrors On",
    "secrequestbodyinmemorylimit": "SecRequestBodyInMemoryLimit 131072",
    "secsensorid": "SecSensorId sensor-1",
    "secserversignature": 'SecServerSignature "Apache"',
    "secconnreadstatelimit": "SecConnReadStateLimit 50",
    "secconnwritestatelimit": "SecConnWriteStateLimit 50",
    "secgsblookupdb": "SecGsbLookupDb /nonexistent.db",
    "sechashengine": "SecHashEngine On",
    "sechashkey": "SecHashKey rand KeyOnly",
    "sechashparam": "SecHashParam hmac",
    "sechashmethodpm": 'SecHashMethodPm HashHref "product_info"',
    "sechashmethodrx": 'SecHashMethodRx HashHref "product_info"',
    "secdataset": "SecDataset fruits `\napple\n`",
    "secauditlogdir": "SecAuditLogDir /tmp",
    "secunicodemap": "SecUnicodeMap 20127",
    "secruleperftime": "SecRulePerfTime 1000",
}


def test_every_dropped_directive_is_really_rejected_by_libmodsecurity() -> None:
    """The drop list must not grow beyond what the engine refuses (nor miss a sample)."""
    assert set(CORAZA_ONLY_SAMPLES) == set(rules.CORAZA_ONLY_DIRECTIVES)
    for line in [*CORAZA_ONLY_SAMPLES.values(), "SecAuditLogFormat OCSF"]:
        with pytest.raises(waf.RulesError):
            waf.ModSecEngine(rules.ResolvedRules(text=line + "\n", warnings=(), label="t"))
    # accepted by the engine (SecHashEngine Off too; we drop it anyway, it is a no-op)
    for accepted in (
        "SecAuditLogFormat JSON",
        "SecRequestBodyJsonDepthLimit 512",
        "SecHashEngine Off",
    ):
        assert (
            waf.ModSecEngine(
                rules.ResolvedRules(text=accepted + "\n", warnings=(), label="t")
            ).rule_count
            == 0
        )


def test_request_body_over_the_limit_is_rejected_like_coraza() -> None:
    """SecRequestBodyLimitAction Reject: no rule decides, so rule id 0 and status 413 (what
    coraza-spoa reports); the engine's explanation is kept as a disruptive match."""
    engine = load(
        "SecRuleEngine On\nSecRequestBodyAccess On\nSecRequestBodyLimit 16\n"
        "SecRequestBodyNoFilesLimit 16\nSecRequestBodyLimitAction Reject\n"
    )
    request = RequestInfo(
        "big",
        method=b"POST",
        headers=((b"content-type", b"application/x-www-form-urlencoded"),),
        body=b"a=" + b"x" * 40,
    )
    verdict = run_request(engine, request)
    assert (verdict.interrupted, verdict.action, verdict.status, verdict.rule_id) == (
        True,
        "deny",
        413,
        0,
    )
    assert verdict.matched_rule_ids == ()
    assert verdict.matches[0].disruptive
    assert verdict.log_lines == ("Request body limit is marked to reject the request",)


def test_response_body_over_the_limit_is_rejected_like_coraza() -> None:
    engine = load(
        "SecRuleEngine On\nSecResponseBodyAccess On\nSecResponseBodyMimeType text/plain\n"
        "SecResponseBodyLimit 16\nSecResponseBodyLimitAction Reject\n"
    )
    tx = engine.new_transaction("big-response")
    try:
        tx.process_request(RequestInfo("big-response"))
        verdict = tx.process_response(
            ResponseInfo(
                "big-response", headers=((b"content-type", b"text/plain"),), body=b"y" * 64
            )
        )
    finally:
        tx.close()
    assert (verdict.interrupted, verdict.status, verdict.rule_id) == (True, 500, 0)


FIELDS_RULE = (
    'SecRule ARGS:x "@rx a.b" "id:942100,phase:2,t:none,pass,log,rev:2,ver:\'OWASP_CRS/3.3.4\','
    "maturity:'9',accuracy:'8',severity:'CRITICAL',tag:'attack-sqli',tag:'paranoia-level/1',"
    "msg:'SQL Injection Attack',logdata:'Matched Data: %{MATCHED_VAR}'\""
)


def test_match_fields_come_from_the_rule_message() -> None:
    """Every field of a match, from the engine's RuleMessage (msc_glue_rm.cc)."""
    engine = load("SecRuleEngine On\n" + FIELDS_RULE + "\n")
    request = RequestInfo(
        "abc",
        path=b"/q",
        query=b'x=a"b',
        src_ip=IPv4Address("192.0.2.1"),
        dst_ip=IPv4Address("10.0.0.1"),
    )
    verdict = run_request(engine, request)
    (match,) = verdict.matches
    fields = match.to_dict()
    raw = fields.pop("raw")
    assert isinstance(raw, str)
    assert fields == {
        "client": "192.0.2.1",
        "file": "<<reference missing or not informed>>",  # the engine's words for directives
        "line": 2,
        "rule_id": 942100,
        "revision": "2",
        "msg": "SQL Injection Attack",
        "data": 'Matched Data: a"b',
        "severity": "critical",
        "severity_id": 2,
        "version": "OWASP_CRS/3.3.4",
        "maturity": "9",
        "accuracy": "8",
        "tags": ["attack-sqli", "paranoia-level/1"],
        "server": "10.0.0.1",
        "uri": "/q",
        "unique_id": "abc",
        "disruptive": False,
        "phase_id": 2,
        "phase": "request-body",
    }
    assert raw.startswith("ModSecurity: Warning. Matched ")  # the engine's line, for display
    assert '[id "942100"]' in raw


def test_a_long_matched_value_is_cut_in_data() -> None:
    """data keeps the engine's own text limit (200 bytes), cut at a character boundary."""
    engine = load("SecRuleEngine On\n" + FIELDS_RULE + "\n")
    verdict = run_request(engine, RequestInfo("long", query=b"x=a.b" + "é".encode() * 300))
    (match,) = verdict.matches
    assert match.data.startswith("Matched Data: a.bé")
    assert len(match.data.encode()) <= 200
    assert "\ufffd" not in match.data


@pytest.fixture(scope="module")
def forge_engine() -> waf.ModSecEngine:
    return load("Include forge.conf\n")


def forged_fields(drop_line: int = 10) -> bytes:
    """What the engine's text line would show of a rule: the file and line of forge.conf's drop
    rule (10102) and CRS's SQL injection id, percent-encoded as a client would send them."""
    fields = f'[id "942100"] [file "{RULES_DIR / "forge.conf"}"] [line "{drop_line}"] ['
    return fields.replace(" ", "%20").replace('"', "%22").encode()


def test_a_forged_match_reports_the_real_rule_and_action(
    forge_engine: waf.ModSecEngine,
) -> None:
    """1. p=/etc/passwd followed by fake [id]/[file]/[line] fields pointing at a drop rule.
    2. Expect the deny rule that matched (10101): its id, file, line, and action deny.
    (Reading the text line, the agent reported 942100 and drop.)"""
    verdict = run_request(
        forge_engine, RequestInfo("forged", query=b"p=/etc/passwd%20" + forged_fields())
    )
    assert (verdict.interrupted, verdict.action, verdict.status) == (True, "deny", 403)
    assert verdict.rule_id == 10101
    assert verdict.matched_rule_ids == (10101,)
    (match,) = verdict.matches
    assert (match.rule_id, match.file, match.line) == (10101, str(RULES_DIR / "forge.conf"), 6)
    assert match.msg == "passwd in an argument"
    assert match.disruptive
    assert '[id "942100"]' in match.raw  # the client's text is still shown, never read


@pytest.mark.parametrize(
    "line", ["SecRxPreFilter On", "SecRequestBodyInMemoryLimit 131072", "SecSensorId x"]
)
def test_coraza_only_directive_in_an_included_file_is_dropped_with_its_file_and_line(
    tmp_path: Path, line: str
) -> None:
    """Included files get the same Coraza-only handling as the directives (issue 13)."""
    included = tmp_path / "coraza.conf"
    included.write_text("SecRuleEngine On\n" + line + "\n" + 'SecAction "id:7,pass,nolog"\n')
    engine = load("Include coraza.conf\n", base_dir=tmp_path)
    assert engine.rule_count == 1
    (warning,) = engine.warnings
    assert warning.startswith(f"{included}:2: dropped {line.split()[0]}: a Coraza-only")


def test_unsupported_directive_in_the_directives_names_its_line() -> None:
    """libmodsecurity says "SecX is not yet supported" at line 1 with no file; we find it."""
    with pytest.raises(waf.RulesError) as caught:
        load("SecRuleEngine On\n\nSecInterceptOnError On\n")
    assert caught.value.problems == [
        "<app test directives>:3: SecInterceptOnError is not yet supported."
    ]


FOLD_RULES = """\
SecRuleEngine On
SecResponseBodyAccess On
SecRule ARGS:go "@streq deny" "id:20001,phase:2,deny,status:403,log,msg:'denied'"
SecAction "id:20005,phase:5,pass,log,msg:'logging phase ran'"
SecAuditEngine On
SecAuditLogParts ABZ
SecAuditLogType Serial
SecAuditLog {audit}
"""


@pytest.fixture
def fold_engine(tmp_path: Path) -> tuple[waf.ModSecEngine, Path]:
    audit = tmp_path / "audit.log"
    return load(FOLD_RULES.format(audit=audit)), audit


def assert_closed_by_its_job(tx: waf.ModSecTransaction) -> None:
    log = tx._log
    assert (log.buf, log.len, log.cap) == (binding.ffi.NULL, 0, 0)  # lines read, buffer freed
    with pytest.raises(waf.EngineError, match="closed"):
        tx.process_response(ResponseInfo(tx.transaction_id, status=200))
    tx.close()  # idempotent: nothing left to close


def test_an_interrupted_request_is_closed_by_its_own_job(
    fold_engine: tuple[waf.ModSecEngine, Path],
) -> None:
    """1. go=deny with close_when=IF_INTERRUPTED. Result: the verdict is whole (rule 20001,
    its line read), the logging phase ran in the same job (the audit log has the
    transaction) but its own line is not reported, and the transaction is closed."""
    engine, audit = fold_engine
    tx = engine.new_transaction("fold-deny")
    verdict = tx.process_request(go(b"deny", "fold-deny"), close_when=CloseWhen.IF_INTERRUPTED)
    assert verdict.interrupted and verdict.rule_id == 20001
    assert verdict.matched_rule_ids == (20001,)
    assert "fold-deny" in audit.read_text()
    assert_closed_by_its_job(tx)


def test_a_clean_request_stays_open_for_its_response_which_closes_it(
    fold_engine: tuple[waf.ModSecEngine, Path],
) -> None:
    """1. A clean request with IF_INTERRUPTED. Result: still open, nothing audited yet.
    2. Its response with ALWAYS. Result: judged, then closed by the same job (audited)."""
    engine, audit = fold_engine
    tx = engine.new_transaction("fold-clean")
    assert not tx.process_request(
        go(b"fine", "fold-clean"), close_when=CloseWhen.IF_INTERRUPTED
    ).interrupted
    assert not audit.exists() or "fold-clean" not in audit.read_text()
    verdict = tx.process_response(
        ResponseInfo("fold-clean", status=200, body=b"ok"), close_when=CloseWhen.ALWAYS
    )
    assert not verdict.interrupted
    assert "fold-clean" in audit.read_text()
    assert_closed_by_its_job(tx)


def test_never_keeps_even_an_interrupted_request_open(
    fold_engine: tuple[waf.ModSecEngine, Path],
) -> None:
    """Detect-only keeps a blocked request for its response: NEVER leaves it open."""
    engine, _ = fold_engine
    tx = engine.new_transaction("fold-never")
    assert tx.process_request(go(b"deny", "fold-never"), close_when=CloseWhen.NEVER).interrupted
    tx.process_response(ResponseInfo("fold-never", status=200))  # still usable
    tx.close()
    assert tx._log.buf == binding.ffi.NULL


def test_always_closes_a_shed_request_too(fold_engine: tuple[waf.ModSecEngine, Path]) -> None:
    """A job past its deadline is not evaluated (DeadlineExceededError); with ALWAYS the
    transaction is closed all the same, so the caller has nothing left to free."""
    engine, _ = fold_engine
    tx = engine.new_transaction("fold-shed")
    with pytest.raises(DeadlineExceededError):
        tx.process_request(go(b"fine", "fold-shed"), deadline=1.0, close_when=CloseWhen.ALWAYS)
    assert_closed_by_its_job(tx)
