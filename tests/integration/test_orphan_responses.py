"""Orphan responses with the real libmodsecurity and CRS: what the orphan path sees and what it
cannot (docs/operations.md "Several agents"). Two ``Application`` objects over one engine play
two agents: the request reaches one, its response the other.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest

from coraza_spoa_py import engine as waf
from coraza_spoa_py.application import Application
from coraza_spoa_py.settings import AppConfig, RulePaths
from coraza_spoa_py.spop.events import Arg, DataType, Message
from coraza_spoa_py.verdicts import VAR_ACTION
from tests.support.spop_client import actions_by_name

pytestmark = pytest.mark.integration

# CRS On, plus one rule of the kind an orphan cannot judge: a response rule that needs the
# request's URI (like CRS's own exclusions keyed on REQUEST_FILENAME)
DIRECTIVES = """Include @coraza.conf-recommended
Include @crs-setup.conf.example
Include @owasp_crs/*.conf
SecRuleEngine On
SecRule REQUEST_URI "@beginsWith /admin" "id:100010,phase:3,deny,status:403,log,msg:'admin',chain"
  SecRule RESPONSE_HEADERS:Content-Type "@contains text/html"
"""
BROWSER_HEADERS = (
    b"host: shop.example\r\nuser-agent: Mozilla/5.0 Firefox/128.0\r\naccept: text/html\r\n\r\n"
)
SQL_LEAK = b"<p>You have an error in your SQL syntax; check the manual</p>"


@pytest.fixture(scope="module")
def engine() -> waf.ModSecEngine:
    config = AppConfig(name="shop", directives=DIRECTIVES, response_check=True)
    return waf.load_engine(config, RulePaths())


def two_agents(engine: waf.ModSecEngine) -> tuple[Application, Application]:
    config = AppConfig(name="shop", directives=DIRECTIVES, response_check=True)
    return Application(config, engine, waf.RUN_HERE), Application(config, engine, waf.RUN_HERE)


def text(name: str, value: bytes) -> Arg:
    return Arg(name, DataType.STRING, value)


def request(transaction_id: str, path: bytes) -> Message:
    return Message(
        "coraza-req",
        (
            text("id", transaction_id.encode()),
            text("method", b"GET"),
            text("path", path),
            text("version", b"1.1"),
            text("headers", BROWSER_HEADERS),
        ),
    )


def response(transaction_id: str, body: bytes, *extra: Arg) -> Message:
    args = (
        text("id", transaction_id.encode()),
        text("version", b"1.1"),
        Arg("status", DataType.INT32, 200),
        text("headers", b"content-type: text/html\r\n\r\n"),
        Arg("body", DataType.BINARY, body),
        *extra,
    )
    return Message("coraza-res", args)


def action(actions: Sequence[Any]) -> str | None:
    return next((a.value for a in actions if a.name == VAR_ACTION), None)


def test_an_orphan_sql_error_leak_is_blocked_by_crs(engine: waf.ModSecEngine) -> None:
    first, second = two_agents(engine)
    first.handle_request(request("t1", b"/products"), time.monotonic())
    actions = second.handle_response(response("t1", SQL_LEAK), time.monotonic())
    assert action(actions) == "deny"
    assert second.orphan_responses == 1 and first.stats.open == 1
    # 951230 (MySQL error) and 959100 (outbound score); the stand-in request's own matches
    # (no Host or User-Agent header: 920280, 920320) and its inbound score are not reported
    values = actions_by_name(actions)
    assert (values["ruleid"], values["rules_hit"], values["anomaly_score"]) == (959100, 2, 0)


def test_an_orphan_clean_response_passes_and_leaves_the_requests_totals_alone(
    engine: waf.ModSecEngine,
) -> None:
    """Nothing matched in the response: only ``fail`` = 0 is set, so ``rules_hit``,
    ``anomaly_score`` and ``rule_ids`` keep the values the request's agent set in HAProxy."""
    _, second = two_agents(engine)
    actions = second.handle_response(response("t2", b"<p>ok</p>"), time.monotonic())
    assert actions_by_name(actions) == {"fail": 0}


def test_a_rule_needing_the_request_uri_fires_only_with_the_transaction_or_the_path(
    engine: waf.ModSecEngine,
) -> None:
    """What an orphan cannot see: rule 100010 needs REQUEST_URI. With its transaction the
    response is denied; as an orphan it passes; an orphan whose coraza-res carries
    ``path`` (a request fact) is denied again."""
    first, second = two_agents(engine)
    first.handle_request(request("same", b"/admin/users"), time.monotonic())
    assert (
        action(first.handle_response(response("same", b"<p>users</p>"), time.monotonic())) == "deny"
    )

    first.handle_request(request("orphan", b"/admin/users"), time.monotonic())
    assert (
        action(second.handle_response(response("orphan", b"<p>users</p>"), time.monotonic()))
        is None
    )

    with_path = response("orphan-path", b"<p>users</p>", text("path", b"/admin/users"))
    assert action(second.handle_response(with_path, time.monotonic())) == "deny"
