"""The WAF end to end through REAL HAProxy 2.6, 2.8, 3.0 and 3.2 with the shipped
``etc/haproxy`` files, ``config.example.yml`` (+ appended test rules) and the full CRS.

Each case checks what the client gets AND what HAProxy logged of the agent's variables.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.e2e.waf_stack import WafStack, final_counts, nonce, waf_stack
from tests.support.haproxy import HAPROXY_VERSIONS
from tests.support.httpclient import request

pytestmark = pytest.mark.e2e

FORM = {"content-type": "application/x-www-form-urlencoded"}
# a plain client: CRS 920350 flags a numeric Host, so talk to "localhost" like coraza-spoa's
# detect-only e2e case does (docs/compatibility.md "coraza-spoa's tests")
CLIENT_HEADERS = {"host": "localhost", "user-agent": "e2e-test/1.0", "accept": "*/*"}


@pytest.fixture(
    scope="module", params=HAPROXY_VERSIONS, ids=[f"haproxy-{v}" for v in HAPROXY_VERSIONS]
)
def stack(request, tmp_path_factory) -> Iterator[WafStack]:
    workdir = tmp_path_factory.mktemp(f"waf-{request.param}")
    with waf_stack(request.param, workdir) as running:
        running.haproxy.wait_for_server_status("coraza-spoa", "coraza-agent", "UP")
        yield running
        # every transaction opened during the module was closed by the agent's shutdown
        running.agent.terminate()
        counts = final_counts(running.agent)
        assert counts["opened"] == counts["closed"] > 0, counts


def get(stack: WafStack, path: str, **kwargs):
    headers = {**CLIENT_HEADERS, **kwargs.pop("headers", {})}
    return request(stack.frontend_port, path, headers=headers, **kwargs)


def with_nonce(path: str, tag: str) -> str:
    return f"{path}{'&' if '?' in path else '?'}t={tag}"


def crs_total_score(stack: WafStack, transaction_id: str) -> int:
    """CRS's own total from 949110's message in the agent's rule-match log."""
    for line in stack.agent_lines(f"tx={transaction_id}"):
        if '[id "949110"]' in line:
            match = re.search(r"Total Score: (\d+)", line)
            assert match, line
            return int(match.group(1))
    raise AssertionError(f"no 949110 match for {transaction_id}:\n{stack.agent.logs()[-4000:]}")


def assert_blocked_by_crs_scoring(stack: WafStack, response, tag: str) -> None:
    """403 from CRS's inbound evaluation (949110), with CRS's own total as anomaly_score."""
    assert response.status == 403
    log = stack.waf_log(tag)
    assert log["ruleid"] == "949110"
    assert int(log["anomaly_score"]) == crs_total_score(stack, log["id"])


def test_clean_get_passes(stack):
    tag = nonce()
    response = get(stack, with_nonce("/", tag))
    assert response.status == 200
    assert b"passed the WAF" in response.body
    log = stack.waf_log(tag)
    assert log["fail"] == "0" and log["action"] == "-" and log["error"] == "-"
    assert log["rules_hit"] == "0" and log["anomaly_score"] == "0"
    assert log["id"] != "-" and log["rule_ids"] == "-"  # exportRuleIDs off for sample_app


def test_path_traversal_is_denied_by_949110_with_crs_own_score(stack):
    tag = nonce()
    response = get(stack, with_nonce("/?p=/etc/passwd", tag))
    assert response.status == 403
    assert response.header("waf-block") == "request"
    log = stack.waf_log(tag)
    assert (log["action"], log["status"], log["ruleid"], log["fail"]) == (
        "deny",
        "403",
        "949110",
        "1",
    )
    assert int(log["rules_hit"]) >= 2
    assert int(log["anomaly_score"]) == crs_total_score(stack, log["id"]) >= 5


def test_sql_injection_in_a_form_post_is_denied(stack):
    tag = nonce()
    body = b"user=admin%27+OR+%271%27%3D%271%27--&pass=x"
    response = get(stack, with_nonce("/login", tag), method="POST", body=body, headers=FORM)
    assert_blocked_by_crs_scoring(stack, response, tag)


def test_sql_injection_in_a_json_body_is_denied(stack):
    tag = nonce()
    body = json.dumps({"id": "1' UNION SELECT username, password FROM users--"}).encode()
    headers = {"content-type": "application/json"}
    response = get(stack, with_nonce("/api/items", tag), method="POST", body=body, headers=headers)
    assert response.status == 403
    assert stack.waf_log(tag)["action"] == "deny"


def test_xss_in_the_query_is_denied(stack):
    tag = nonce()
    response = get(stack, with_nonce("/search?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E", tag))
    assert_blocked_by_crs_scoring(stack, response, tag)


def test_scanner_user_agent_is_denied(stack):
    tag = nonce()
    response = get(stack, with_nonce("/", tag), headers={"user-agent": "Nikto/2.1.6"})
    assert response.status == 403
    assert stack.waf_log(tag)["action"] == "deny"
    assert '[id "913100"]' in "\n".join(stack.agent_lines(f"tx={stack.waf_log(tag)['id']}"))


def test_sql_error_leak_is_denied_in_the_response_phase(stack):
    tag = nonce()
    response = get(stack, with_nonce("/leak", tag))
    assert response.status == 403
    assert response.header("waf-block") == "response"
    assert b"SQL syntax" not in response.body
    log = stack.waf_log(tag)
    # CRS 3.3's outbound anomaly evaluation blocked, after its MySQL error-leak rule (951230)
    # saw the response body
    assert (log["action"], log["ruleid"], log["fail"]) == ("deny", "959100", "1")
    matched = "\n".join(stack.agent_lines(f"tx={log['id']}"))
    assert '[id "951230"]' in matched


def test_custom_response_header_rule_is_denied(stack):
    tag = nonce()
    response = get(stack, with_nonce("/e2e-response-header", tag))
    assert response.status == 403
    assert response.header("waf-block") == "response"
    log = stack.waf_log(tag)
    assert (log["action"], log["ruleid"]) == ("deny", "100004")


def test_custom_redirect_rule_redirects(stack):
    tag = nonce()
    response = get(stack, with_nonce("/e2e-redirect", tag))
    assert response.status == 302
    assert response.header("location") == "https://example.com/blocked"
    log = stack.waf_log(tag)
    assert (log["action"], log["ruleid"], log["fail"]) == ("redirect", "100002", "1")


def test_custom_drop_rule_closes_the_connection(stack):
    tag = nonce()
    # silent-drop closes without telling the client (it even lowers the TTL of the reset):
    # the client sees a reset, an empty reply or, on loopback, nothing until its timeout
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, TimeoutError)):
        get(stack, with_nonce("/e2e-drop", tag), timeout=2.0)
    log = stack.waf_log(tag)
    assert (log["action"], log["ruleid"]) == ("drop", "100003")


def test_absolute_form_target_reaches_the_rules_with_scheme_and_host(stack):
    """GET http://absolute.e2e/... (HTTP/1.1 absolute form): the rules see the whole target,
    as the C agent builds it (rule 100005 matches REQUEST_URI_RAW); the same path in origin
    form passes."""
    tag = nonce()
    headers = {**CLIENT_HEADERS, "host": "absolute.e2e"}
    response = request(
        stack.frontend_port, with_nonce("http://absolute.e2e/page", tag), headers=headers
    )
    assert response.status == 403
    log = stack.waf_log(tag)
    assert (log["action"], log["ruleid"]) == ("deny", "100005")
    tag = nonce()
    response = request(stack.frontend_port, with_nonce("/page", tag), headers=headers)
    assert response.status == 200
    assert stack.waf_log(tag)["ruleid"] != "100005"


# What the engine's text line shows of a rule, forged by the client: CRS's SQL injection id and
# the file and line of a drop rule (tests/data/rules/forge.conf:10), percent-encoded.
FORGE_DROP_RULE = Path(__file__).resolve().parent.parent / "data" / "rules" / "forge.conf"
FORGED_FIELDS = quote(f' [id "942100"] [file "{FORGE_DROP_RULE}"] [line "10"] [')


def test_a_forged_match_cannot_change_the_rule_or_turn_deny_into_drop(stack):
    """1. A custom deny rule (100006) matches a value that ends with fake [id]/[file]/[line]
    fields pointing at a drop rule. 2. Expect HAProxy's 403 (not a silent drop) and the
    agent's variables naming 100006 and deny. (Reading the text line, it said 942100, drop.)"""
    tag = nonce()
    response = get(stack, with_nonce(f"/?forge=/etc/passwd{FORGED_FIELDS}", tag))
    assert response.status == 403
    log = stack.waf_log(tag)
    assert (log["action"], log["ruleid"], log["fail"]) == ("deny", "100006", "1")


def test_a_forged_match_cannot_add_rule_ids_with_crs(stack):
    """1. CRS (detect_app exports rule ids): /etc/passwd with a fake [id "942100"] after it.
    2. Expect the ids of the CRS rules that matched (930120, 932160, 949110), never 942100,
    and the same anomaly score as without the fake fields."""
    tag, plain_tag = nonce(), nonce()
    response = request(
        stack.detect_port,
        with_nonce(f"/?p=/etc/passwd{FORGED_FIELDS}", tag),
        headers=CLIENT_HEADERS,
    )
    assert response.status == 200
    plain = request(
        stack.detect_port, with_nonce("/?p=/etc/passwd", plain_tag), headers=CLIENT_HEADERS
    )
    assert plain.status == 200
    log, plain_log = stack.waf_log(tag), stack.waf_log(plain_tag)
    assert log["rule_ids"] == plain_log["rule_ids"]
    assert log["rule_ids"].split(",")[-1] == "949110"
    assert "930120" in log["rule_ids"].split(",") and "942100" not in log["rule_ids"]
    assert log["anomaly_score"] == plain_log["anomaly_score"]


def test_detection_only_app_passes_and_reports_hits_score_and_rule_ids(stack):
    tag = nonce()
    response = request(
        stack.detect_port, with_nonce("/?p=/etc/passwd", tag), headers=CLIENT_HEADERS
    )
    assert response.status == 200
    log = stack.waf_log(tag)
    assert log["fail"] == "0" and log["action"] == "-" and log["error"] == "-"
    assert int(log["rules_hit"]) > 0
    assert int(log["anomaly_score"]) == crs_total_score(stack, log["id"]) >= 5
    # export_rule_ids on detect_app: the ids the agent logged for this transaction, in order
    rule_ids = log["rule_ids"].split(",")
    assert "930120" in rule_ids and rule_ids[-1] == "949110"
    logged = [
        int(m)
        for line in stack.agent_lines(f"tx={log['id']}")
        for m in re.findall(r'\[id "(\d+)"\]', line)
    ]
    counted = [str(i) for i in logged if 910000 <= i < 960000 or 190000 <= i < 200000]
    assert rule_ids == counted
    assert len(rule_ids) == int(log["rules_hit"])


def test_binary_header_block_reaches_the_rules(stack):
    """The overlay frontend sends req.hdrs_bin: a clean request passes, a scanner
    User-Agent (a header only the binary block carries to the agent) is denied by 913100."""
    tag = nonce()
    clean = request(stack.binary_headers_port, with_nonce("/", tag), headers=CLIENT_HEADERS)
    assert clean.status == 200
    assert stack.waf_log(tag)["fail"] == "0"
    tag = nonce()
    scanner = {**CLIENT_HEADERS, "user-agent": "Nikto/2.1.6"}
    response = request(stack.binary_headers_port, with_nonce("/", tag), headers=scanner)
    assert response.status == 403
    log = stack.waf_log(tag)
    assert log["action"] == "deny"
    assert '[id "913100"]' in "\n".join(stack.agent_lines(f"tx={log['id']}"))
