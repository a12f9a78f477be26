"""Application: arguments → RequestInfo, verdict → actions, transaction lifetime, counters,
load shedding, rule-match records. A fake engine stands in for libmodsecurity."""

from __future__ import annotations

import contextlib
import gc
import re
import weakref
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

import pytest
from loguru import logger

from coraza_spoa_py.application import (
    Application,
    EngineFailureError,
    MalformedMessageError,
    OverloadedError,
    TransactionNotFoundError,
    rule_match_level,
    rule_match_records_logged,
)
from coraza_spoa_py.models import CloseWhen, RuleMatch, Verdict
from coraza_spoa_py.settings import AppConfig
from coraza_spoa_py.spop.events import Arg, DataType, Message, SetVar, VarScope
from coraza_spoa_py.verdicts import ErrorCode, error_actions, verdict_actions
from tests.unit.waf_fakes import (
    FakeClock,
    FakeEngine,
    as_dict,
    b,
    direct,
    flag,
    i64,
    interrupted,
    names,
    null,
    request_message,
    response_message,
    s,
)

BUDGET = 0.4


def make_app(engine=None, *, clock=None, scheduler=direct, **config):
    config.setdefault("name", "sample_app")
    clock = clock or FakeClock()
    app = Application(
        AppConfig(**config),
        engine or FakeEngine(),
        scheduler,
        clock=clock,
        processing_budget_s=BUDGET,
    )
    return app, clock


def assert_counters_agree(app):
    st = app.stats
    assert st.opened == st.closed + st.open + st.in_flight, st


@pytest.fixture
def records():
    captured = []
    sink = logger.add(lambda m: captured.append(m.record), level="DEBUG", format="{message}")
    yield captured
    logger.remove(sink)


# ---- request arguments ----------------------------------------------------------------


def test_clean_request_answers_id_fail_and_metrics_and_closes():
    engine = FakeEngine()
    app, clock = make_app(engine)
    actions = app.handle_request(request_message(s("id", "abc-1")), clock())
    assert names(actions) == ["id", "fail", "rules_hit", "anomaly_score"]
    assert as_dict(actions) == {"id": b"abc-1", "fail": 0, "rules_hit": 0, "anomaly_score": 0}
    assert all(a.scope is VarScope.TRANSACTION for a in actions)
    assert [a.type for a in actions] == [DataType.STRING] + [DataType.INT64] * 3
    (tx,) = engine.transactions
    assert tx.transaction_id == "abc-1" and tx.closed == 1
    assert app.stats.opened == 1 and app.stats.closed == 1 and app.stats.open == 0


def test_request_info_is_built_from_named_args_in_any_order():
    engine = FakeEngine()
    app, clock = make_app(engine)
    args = (
        b("body", b"a=1&b=2"),
        s("headers", "content-type: application/x-www-form-urlencoded\r\nhost: h\r\n\r\n"),
        Arg("dst-port", DataType.UINT32, 8080),
        s("query", "x=%41&y"),
        Arg("src-port", DataType.INT32, 51000),
        s("method", "POST"),
        Arg("src-ip", DataType.IPV6, IPv6Address("::ffff:198.51.100.7")),
        s("path", "/p%20q"),
        Arg("dst-ip", DataType.IPV6, IPv6Address("2001:db8::1")),
        s("version", "2.0"),
        s("unknownThing", "ignored"),
        s("app", "sample_app"),
    )
    app.handle_request(Message("coraza-req", args), clock())
    request = engine.transactions[0].requests[0]
    assert request.method == b"POST"
    assert request.path == b"/p%20q" and request.query == b"x=%41&y"
    assert request.uri == b"/p%20q?x=%41&y"
    assert request.version == b"2.0"
    assert request.headers == (
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"host", b"h"),
    )
    assert request.body == b"a=1&b=2"
    assert request.src_ip == IPv4Address("198.51.100.7")  # IPv4-mapped IPv6 unmapped
    assert request.src_port == 51000
    assert request.dst_ip == IPv6Address("2001:db8::1") and request.dst_port == 8080


def test_null_query_means_no_question_mark_and_empty_query_keeps_it():
    engine = FakeEngine()
    app, clock = make_app(engine)
    app.handle_request(request_message(null("query"), path="/a"), clock())
    app.handle_request(request_message(s("query", ""), path="/a"), clock())
    first, second = (tx.requests[0] for tx in engine.transactions)
    assert first.query is None and first.uri == b"/a"
    assert second.query == b"" and second.uri == b"/a?"


def test_binary_header_block_is_chosen_by_spop_type():
    engine = FakeEngine()
    app, clock = make_app(engine)
    block = b"\x04host\x01h\x06cookie\x03a=1\x06cookie\x03b=2\x00\x00"
    app.handle_request(request_message(b("headers", block)), clock())
    assert engine.transactions[0].requests[0].headers == (
        (b"host", b"h"),
        (b"cookie", b"a=1"),
        (b"cookie", b"b=2"),
    )


def test_version_with_http_prefix_and_null_addresses_are_accepted():
    engine = FakeEngine()
    app, clock = make_app(engine)
    app.handle_request(
        request_message(s("version", "HTTP/1.0"), null("src-ip"), null("src-port")), clock()
    )
    request = engine.transactions[0].requests[0]
    assert request.version == b"1.0" and request.src_ip is None and request.src_port == 0


@pytest.mark.parametrize("given", [None, b""])
def test_absent_or_empty_id_is_generated_and_returned(given):
    engine = FakeEngine()
    app, clock = make_app(engine)
    message = request_message(*(() if given is None else (s("id", given),)))
    actions = as_dict(app.handle_request(message, clock()))
    generated = actions["id"].decode()
    assert re.fullmatch(r"[A-Z]{16}", generated)
    assert engine.transactions[0].transaction_id == generated


@pytest.mark.parametrize(
    "bad",
    [
        s("src-port", "80"),
        Arg("src-port", DataType.BOOL, True),
        i64("dst-port", 70000),
        Arg("src-ip", DataType.INT64, 5),
        s("src-ip", "not-an-ip"),
        i64("method", 1),
        s("headers", "host: a\r\nno colon here\r\n\r\n"),
        s("headers", "host: a\r\n"),
        b("headers", b"\x04host"),
        Arg("headers", DataType.INT64, 1),
        s("exportRuleIDs", "yes"),
    ],
    ids=lambda a: f"{a.name}-{a.type.name}",
)
def test_malformed_arguments_raise_1001_and_open_nothing(bad):
    engine = FakeEngine()
    app, clock = make_app(engine)
    with pytest.raises(MalformedMessageError) as caught:
        app.handle_request(request_message(bad), clock())
    assert caught.value.code == ErrorCode.MALFORMED_MESSAGE == 1001
    assert engine.transactions == [] and app.stats.opened == 0


def test_string_address_is_parsed():
    engine = FakeEngine()
    app, clock = make_app(engine)
    app.handle_request(request_message(s("src-ip", "203.0.113.9")), clock())
    assert engine.transactions[0].requests[0].src_ip == IPv4Address("203.0.113.9")


# ---- verdicts ---------------------------------------------------------------------------


def test_denied_request_sets_the_interruption_variables_and_closes_at_once():
    engine = FakeEngine(decide_request=lambda r: interrupted())
    app, clock = make_app(engine, response_check=True)
    actions = app.handle_request(request_message(s("id", "t1")), clock())
    assert names(actions) == [
        "id", "fail", "rules_hit", "anomaly_score", "status", "action", "data", "ruleid",
    ]  # fmt: skip
    assert [a.type.name for a in actions] == [
        "STRING", "INT64", "INT64", "INT64", "INT64", "STRING", "STRING", "INT64",
    ]  # fmt: skip
    assert as_dict(actions) == {
        "id": b"t1", "fail": 1, "rules_hit": 2, "anomaly_score": 5,
        "status": 403, "action": "deny", "data": "", "ruleid": 949110,
    }  # fmt: skip
    assert engine.transactions[0].closed == 1 and app.stats.open == 0


def test_redirect_carries_the_url_in_data_and_defaults_to_302():
    verdict = interrupted(action="redirect", status=0, url="https://example.com/x", rule_id=7)
    values = as_dict(verdict_actions(verdict, transaction_id=None, export_rule_ids=False,
                                     detect_only=False))  # fmt: skip
    assert values["status"] == 302 and values["data"] == "https://example.com/x"
    assert values["action"] == "redirect" and values["ruleid"] == 7 and "id" not in values


def test_deny_without_status_defaults_to_403_and_drop_keeps_its_action():
    deny = as_dict(verdict_actions(interrupted(status=0), transaction_id=None,
                                   export_rule_ids=False, detect_only=False))  # fmt: skip
    drop = as_dict(verdict_actions(interrupted(action="drop", status=0), transaction_id=None,
                                   export_rule_ids=False, detect_only=False))  # fmt: skip
    assert deny["status"] == 403 and deny["action"] == "deny"
    assert drop["action"] == "drop" and drop["fail"] == 1


def test_rule_ids_list_the_counted_ranges_in_match_order():
    verdict = Verdict(matched_rule_ids=(920350, 100001, 942100, 195000, 980130, 949110))
    values = as_dict(verdict_actions(verdict, transaction_id=None, export_rule_ids=True,
                                     detect_only=False))  # fmt: skip
    assert values["rule_ids"] == "920350,942100,195000,949110"


def test_export_rule_ids_by_argument_or_by_app_setting():
    engine = FakeEngine(decide_request=lambda r: Verdict(matched_rule_ids=(941100,), rules_hit=1))
    app, clock = make_app(engine)
    without = as_dict(app.handle_request(request_message(), clock()))
    with_arg = as_dict(app.handle_request(request_message(flag("exportRuleIDs", True)), clock()))
    assert "rule_ids" not in without and with_arg["rule_ids"] == "941100"
    app2, _ = make_app(engine, export_rule_ids=True)
    assert as_dict(app2.handle_request(request_message(), clock()))["rule_ids"] == "941100"


def test_detect_only_request_reports_but_never_blocks_and_keeps_the_transaction():
    engine = FakeEngine(decide_request=lambda r: interrupted(score=10))
    app, clock = make_app(engine, response_check=True)
    actions = as_dict(
        app.handle_request(request_message(s("id", "d1"), flag("detect-only", True)), clock())
    )
    assert actions == {"id": b"d1", "fail": 0, "rules_hit": 2, "anomaly_score": 10}
    assert app.stats.open == 1  # kept so that its response can be correlated
    response = as_dict(app.handle_response(response_message("d1"), clock()))
    assert response["fail"] == 0 and app.stats.open == 0
    assert engine.transactions[0].closed == 1


# ---- responses ----------------------------------------------------------------------------


def test_response_finds_its_request_processes_and_closes():
    engine = FakeEngine(
        decide_response=lambda r: interrupted(rule_id=951220, ids=(951220, 959100), score=0)
    )
    app, clock = make_app(engine, response_check=True)
    app.handle_request(request_message(s("id", "r1")), clock())
    assert app.stats.open == 1 and engine.transactions[0].closed == 0
    actions = app.handle_response(
        response_message("r1", i64("status", 200), b("body", b"SQL syntax")), clock()
    )
    assert names(actions) == [
        "fail", "rules_hit", "anomaly_score", "status", "action", "data", "ruleid",
    ]  # fmt: skip
    assert as_dict(actions)["ruleid"] == 951220
    tx = engine.transactions[0]
    assert tx.responses[0].status == 200 and tx.responses[0].body == b"SQL syntax"
    assert tx.responses[0].headers == ((b"content-type", b"text/html"),)
    assert tx.closed == 1
    assert app.stats.opened == 1 and app.stats.closed == 1 and app.stats.open == 0


@pytest.mark.parametrize("transaction_id", [None, "", "never-seen"])
def test_response_without_open_transaction_is_1004_when_orphans_are_rejected(transaction_id):
    engine = FakeEngine()
    app, clock = make_app(engine, response_check=True, orphan_responses="reject")
    with pytest.raises(TransactionNotFoundError) as caught:
        app.handle_response(response_message(transaction_id), clock())
    assert caught.value.code == 1004
    assert engine.transactions == [] and app.orphan_responses == 0


@pytest.mark.parametrize("transaction_id", [None, ""])
def test_response_without_id_is_1004_even_when_orphans_are_inspected(transaction_id):
    app, clock = make_app(response_check=True)
    with pytest.raises(TransactionNotFoundError):
        app.handle_response(response_message(transaction_id), clock())


def test_orphan_response_is_inspected_on_a_fresh_transaction_and_closed():
    leak = RuleMatch(rule_id=951220, msg="SQL error leak", severity="critical")
    engine = FakeEngine(
        decide_response=lambda r: (
            replace(interrupted(), matches=(leak,)) if b"SQL" in r.body else Verdict()
        )
    )
    app, clock = make_app(engine, response_check=True)
    seen = []
    app.observer = lambda *event: seen.append(event)
    body = b("body", b"You have an error in your SQL syntax")
    actions = as_dict(app.handle_response(response_message("elsewhere", body), clock()))
    assert actions["fail"] == 1 and actions["status"] == 403
    (tx,) = engine.transactions
    assert tx.transaction_id == "elsewhere"
    # no request facts in the message: phases 1-2 see GET / (CRS initialises its TX there)
    assert [(r.method, r.uri, r.headers) for r in tx.requests] == [(b"GET", b"/", ())]
    assert tx.close_whens == [CloseWhen.NEVER, CloseWhen.ALWAYS]
    assert tx.responses[0].body == b"You have an error in your SQL syntax"
    assert tx.closed == 1 and app.orphan_responses == 1
    assert seen == [("sample_app", "coraza-res", True, seen[0][3])] and seen[0][3].interrupted
    st = app.stats
    assert (st.opened, st.closed, st.open) == (1, 1, 0)
    clean_actions = as_dict(app.handle_response(response_message("other"), clock()))
    assert clean_actions == {"fail": 0} and app.orphan_responses == 2
    assert_counters_agree(app)


def test_orphan_response_verdict_leaves_out_what_the_stand_in_request_matched():
    # the fake's verdicts are transaction-wide like the engine's (models.Verdict)
    engine = FakeEngine(
        decide_request=lambda r: Verdict(matched_rule_ids=(920280,), rules_hit=1, anomaly_score=3),
        decide_response=lambda r: Verdict(
            matched_rule_ids=(920280, 951230), rules_hit=2, anomaly_score=3
        ),
    )
    app, clock = make_app(engine, response_check=True, export_rule_ids=True)
    actions = as_dict(app.handle_response(response_message("elsewhere"), clock()))
    assert actions["rule_ids"] == "951230"
    assert (actions["rules_hit"], actions["anomaly_score"]) == (1, 0)


def test_orphan_response_feeds_the_request_facts_the_message_carries():
    engine = FakeEngine()
    app, clock = make_app(engine, response_check=True)
    extra = (s("method", "POST"), s("path", "/login"), s("query", "a=1"),
             Arg("src-ip", DataType.IPV4, IPv4Address("192.0.2.9")))  # fmt: skip
    app.handle_response(response_message("elsewhere", *extra), clock())
    (tx,) = engine.transactions
    (request,) = tx.requests
    assert request.method == b"POST" and request.uri == b"/login?a=1"
    assert request.src_ip == IPv4Address("192.0.2.9")
    assert request.headers == () and request.body == b""  # the response's are not the request's
    assert len(tx.responses) == 1 and tx.closed == 1


def test_orphan_response_with_a_bad_request_fact_is_1001():
    app, clock = make_app(response_check=True)
    with pytest.raises(MalformedMessageError):
        app.handle_response(response_message("x", i64("path", 3)), clock())


def test_orphan_response_engine_failure_is_1003_and_counted_closed():
    engine = FakeEngine(decide_response=lambda r: (_ for _ in ()).throw(RuntimeError("boom")))
    app, clock = make_app(engine, response_check=True)
    with pytest.raises(EngineFailureError):
        app.handle_response(response_message("x"), clock())
    assert engine.transactions[0].closed == 1
    assert_counters_agree(app)


def test_response_twice_is_1004_the_second_time():
    app, clock = make_app(response_check=True, orphan_responses="reject")
    app.handle_request(request_message(s("id", "x")), clock())
    app.handle_response(response_message("x"), clock())
    with pytest.raises(TransactionNotFoundError):
        app.handle_response(response_message("x"), clock())


def test_response_check_off_answers_no_verdict_and_warns_once_a_minute(records):
    engine = FakeEngine()
    app, clock = make_app(engine, response_check=False)
    app.handle_request(request_message(s("id", "z")), clock())
    assert engine.transactions[0].closed == 1  # not kept: no response check
    for _ in range(5):
        assert app.handle_response(response_message("z"), clock()) == []
        clock.advance(10)
    clock.advance(20)
    assert app.handle_response(response_message("z"), clock()) == []
    warnings = [r for r in records if "response_check is false" in r["message"]]
    assert len(warnings) == 2
    assert warnings[0]["extra"]["app"] == "sample_app"


# ---- failures -------------------------------------------------------------------------------


def test_engine_failure_on_new_transaction_is_1003():
    app, clock = make_app(FakeEngine(fail_new=True))
    with pytest.raises(EngineFailureError) as caught:
        app.handle_request(request_message(), clock())
    assert caught.value.code == 1003 and app.stats.opened == 0


def test_engine_failure_while_processing_closes_the_transaction():
    def explode(_):
        raise RuntimeError("boom")

    engine = FakeEngine(decide_request=explode)
    app, clock = make_app(engine, response_check=True)
    with pytest.raises(EngineFailureError):
        app.handle_request(request_message(), clock())
    assert engine.transactions[0].closed == 1
    assert app.stats.opened == 1 and app.stats.closed == 1 and app.stats.open == 0


def test_engine_failure_in_response_still_closes():
    def explode(_):
        raise RuntimeError("boom")

    engine = FakeEngine(decide_response=explode)
    app, clock = make_app(engine, response_check=True)
    app.handle_request(request_message(s("id", "q")), clock())
    with pytest.raises(EngineFailureError):
        app.handle_response(response_message("q"), clock())
    assert engine.transactions[0].closed == 1
    assert_counters_agree(app)


def test_failing_close_is_logged_and_still_counted(records):
    """A close of its own (here the TTL's; the phases' closes cannot fail apart from them)
    that raises is logged and still counted."""
    engine = FakeEngine(fail_close=True)
    app, clock = make_app(engine, response_check=True, transaction_ttl_ms=1000)
    app.handle_request(request_message(s("id", "q")), clock())
    clock.advance(1.5)
    assert app.sweep() == 1
    assert app.stats.closed == 1
    assert any("closing the transaction failed" in r["message"] for r in records)


@pytest.mark.parametrize(
    ("response_check", "detect_only", "attack", "close_when", "kept"),
    [
        (True, False, False, CloseWhen.IF_INTERRUPTED, True),
        (True, False, True, CloseWhen.IF_INTERRUPTED, False),
        (True, True, True, CloseWhen.NEVER, True),
        (False, False, False, CloseWhen.ALWAYS, False),
        (False, True, True, CloseWhen.ALWAYS, False),
    ],
)
def test_the_request_job_closes_what_the_response_will_not_need(
    response_check, detect_only, attack, close_when, kept
):
    """docs/compatibility.md "Errors": a request is kept for its response only with response_check
    on and
    when it was not blocked, or in detect-only mode. The request's own engine call is told to
    close the rest (one engine job less than a separate close), and the counters agree."""
    engine = FakeEngine(decide_request=lambda r: Verdict(interrupted=b"evil" in (r.query or b"")))
    app, clock = make_app(engine, response_check=response_check)
    query = s("query", "a=evil" if attack else "a=1")
    detect = [flag("detect-only", True)] if detect_only else []
    app.handle_request(request_message(s("id", "q"), query, *detect), clock())
    (tx,) = engine.transactions
    assert tx.close_whens == [close_when]
    assert (tx.closed, tx.closed_by_job) == ((0, False) if kept else (1, True))
    assert app.stats.open == int(kept)
    assert_counters_agree(app)


def test_the_response_job_closes_its_transaction():
    engine = FakeEngine()
    app, clock = make_app(engine, response_check=True)
    app.handle_request(request_message(s("id", "q")), clock())
    app.handle_response(response_message("q"), clock())
    (tx,) = engine.transactions
    assert tx.close_whens == [CloseWhen.IF_INTERRUPTED, CloseWhen.ALWAYS]
    assert (tx.closed, tx.closed_by_job) == (1, True)
    assert app.stats.open == 0 and app.stats.closed == 1


# ---- load shedding --------------------------------------------------------------------------


def test_request_that_waited_past_the_budget_is_shed_with_1005_and_opens_nothing():
    engine = FakeEngine()
    app, clock = make_app(engine, response_check=True)
    received_at = clock()
    clock.advance(BUDGET + 0.001)
    with pytest.raises(OverloadedError) as caught:
        app.handle_request(request_message(), received_at)
    assert caught.value.code == 1005
    assert engine.transactions == [] and app.stats.shed == 1 and app.stats.opened == 0


def test_request_within_the_budget_is_evaluated():
    app, clock = make_app(response_check=True)
    received_at = clock()
    clock.advance(BUDGET)
    assert as_dict(app.handle_request(request_message(), received_at))["fail"] == 0


def test_shed_response_closes_its_transaction():
    engine = FakeEngine()
    app, clock = make_app(engine, response_check=True)
    app.handle_request(request_message(s("id", "late")), clock())
    received_at = clock()
    clock.advance(1.0)
    with pytest.raises(OverloadedError):
        app.handle_response(response_message("late"), received_at)
    tx = engine.transactions[0]
    assert tx.responses == [] and tx.closed == 1
    assert app.stats.shed == 1
    assert_counters_agree(app)


# ---- lifetime -------------------------------------------------------------------------------


def test_sweep_closes_expired_transactions():
    engine = FakeEngine()
    app, clock = make_app(
        engine, response_check=True, transaction_ttl_ms=2000, orphan_responses="reject"
    )
    for n in range(3):
        app.handle_request(request_message(s("id", f"t{n}")), clock())
    clock.advance(1.0)
    app.handle_request(request_message(s("id", "young")), clock())
    assert app.sweep() == 0
    clock.advance(1.0)
    assert app.sweep() == 3
    assert [tx.closed for tx in engine.transactions] == [1, 1, 1, 0]
    st = app.stats
    assert (st.opened, st.closed, st.expired, st.open) == (4, 3, 3, 1)
    with pytest.raises(TransactionNotFoundError):
        app.handle_response(response_message("t0"), clock())
    app.handle_response(response_message("young"), clock())
    assert_counters_agree(app) and app.stats.open == 0


def test_transaction_active_limit_evicts_and_closes_the_oldest(records):
    engine = FakeEngine()
    app, clock = make_app(
        engine, response_check=True, transaction_active_limit=2, orphan_responses="reject"
    )
    for n in range(4):
        app.handle_request(request_message(s("id", f"t{n}")), clock())
        clock.advance(0.1)
    assert [tx.closed for tx in engine.transactions] == [1, 1, 0, 0]
    st = app.stats
    assert (st.opened, st.closed, st.evicted, st.open) == (4, 2, 2, 2)
    with pytest.raises(TransactionNotFoundError):
        app.handle_response(response_message("t0"), clock())
    limit_warnings = [r for r in records if "transaction_active_limit" in r["message"]]
    assert len(limit_warnings) == 1  # at most once a minute: at the limit every request evicts


def test_reused_id_closes_the_previous_transaction():
    engine = FakeEngine()
    app, clock = make_app(engine, response_check=True)
    app.handle_request(request_message(s("id", "dup")), clock())
    app.handle_request(request_message(s("id", "dup")), clock())
    assert [tx.closed for tx in engine.transactions] == [1, 0]
    assert_counters_agree(app)


def test_close_all_closes_everything():
    engine = FakeEngine()
    app, clock = make_app(engine, response_check=True)
    for n in range(130):  # more than one close batch
        app.handle_request(request_message(s("id", f"t{n}")), clock())
    assert app.close_all() == 130
    assert engine.open_transactions == []
    st = app.stats
    assert st.opened == st.closed == 130 and st.open == 0


def test_counters_agree_after_a_mixed_run():
    import random

    rng = random.Random(7)

    def decide(_):
        return interrupted() if rng.random() < 0.3 else Verdict()

    engine = FakeEngine(decide_request=decide)
    app, clock = make_app(
        engine, response_check=True, transaction_ttl_ms=400, transaction_active_limit=8
    )
    pending = []
    for n in range(500):
        tid = f"t{n}"
        actions = as_dict(app.handle_request(request_message(s("id", tid)), clock()))
        if actions["fail"] == 0:
            pending.append(tid)
        if pending and rng.random() < 0.5:
            with contextlib.suppress(TransactionNotFoundError):
                app.handle_response(
                    response_message(pending.pop(rng.randrange(len(pending)))), clock()
                )
        clock.advance(rng.random() * 0.05)
        if n % 20 == 0:
            app.sweep()
        assert_counters_agree(app)
    app.close_all()
    st = app.stats
    assert st.opened == st.closed == len(engine.transactions)
    assert engine.open_transactions == []
    assert st.evicted > 0 and st.expired > 0


# ---- rule-match log -------------------------------------------------------------------------


def test_one_rule_match_record_per_message_with_the_most_severe_level(records):
    matches = (
        RuleMatch(rule_id=920350, msg="Host header is a numeric IP", severity="warning"),
        RuleMatch(rule_id=930120, msg="OS File Access", severity="critical", raw='[id "930120"]'),
    )
    engine = FakeEngine(decide_request=lambda r: replace(interrupted(), matches=matches))
    app, clock = make_app(engine)
    app.handle_request(request_message(s("id", "log-1")), clock())
    app.handle_request(request_message(s("id", "log-2")), clock())  # no matches in 2nd? same
    found = [r for r in records if r["extra"].get("kind") == "rule_match"]
    assert len(found) == 2
    record = found[0]
    assert record["message"] == "rules matched"
    assert record["level"].name == "ERROR"
    assert record["extra"]["app"] == "sample_app" and record["extra"]["tx"] == "log-1"
    assert record["extra"]["matches"] == list(matches)


def test_no_rule_match_record_without_matches_and_warning_level(records):
    warn = (RuleMatch(rule_id=920350, msg="m", severity="warning"),)
    engine = FakeEngine(decide_request=lambda r: Verdict(matches=warn))
    app, clock = make_app(engine)
    app.handle_request(request_message(), clock())
    app2, _ = make_app(FakeEngine())
    app2.handle_request(request_message(), clock())
    found = [r for r in records if r["extra"].get("kind") == "rule_match"]
    assert len(found) == 1 and found[0]["level"].name == "WARNING"


def test_error_action_is_a_transaction_scoped_int():
    (action,) = error_actions(ErrorCode.OVERLOADED)
    assert action == SetVar(VarScope.TRANSACTION, "error", 1005, DataType.INT64)


def test_close_all_closes_a_transaction_whose_request_greenlet_never_returned():
    """1. the engine keeps a transaction for the response  2. the greenlet waiting for it is
    killed (forced shutdown) before caching it  3. close_all() still closes it, once."""
    engine = FakeEngine()

    class Killed(BaseException):
        pass

    app, clock = make_app(engine, response_check=True)
    transactions = app._transactions
    run = transactions.run

    def killed_after_work(work, outcome):
        run(work, outcome)
        raise Killed

    transactions.run = killed_after_work
    with pytest.raises(Killed):
        app.handle_request(request_message(s("id", "orphan")), clock())
    assert engine.transactions[0].closed == 0
    assert app.close_all() == 1
    assert engine.transactions[0].closed == 1
    st = app.stats
    assert st.opened == st.closed == 1 and st.open == 0


def test_transaction_taken_by_close_all_is_not_cached_afterwards():
    """close_all() runs while the engine finishes the request: the late result is not cached."""
    engine = FakeEngine()
    app, clock = make_app(engine, response_check=True)
    transactions = app._transactions
    run = transactions.run

    def close_all_meanwhile(work, outcome):
        run(work, outcome)
        app.close_all()

    transactions.run = close_all_meanwhile
    actions = as_dict(app.handle_request(request_message(s("id", "late")), clock()))
    assert actions["fail"] == 0
    assert engine.transactions[0].closed == 1 and not app.has_open_transaction("late")
    st = app.stats
    assert st.opened == st.closed == 1 and st.open == 0


# ---- request bodies cut short by HAProxy (docs/haproxy.md "Request bodies") -----------------


def _body_request(body: bytes, declared: int | None, *extra):
    args = [s("id", "big-1"), b("body", body), *extra]
    if declared is not None:
        args.append(i64("body-size", declared))
    return request_message(*args)


def test_body_size_is_read_and_a_shorter_body_is_truncated():
    engine = FakeEngine()
    app, clock = make_app(engine)
    app.handle_request(_body_request(b"x" * 10, 10), clock())
    app.handle_request(_body_request(b"x" * 10, 1_000_000), clock())
    app.handle_request(_body_request(b"x" * 10, None), clock())
    complete, cut, unknown = (tx.requests[0] for tx in engine.transactions)
    assert (complete.declared_body_size, complete.body_truncated) == (10, False)
    assert (cut.declared_body_size, cut.body_truncated) == (1_000_000, True)
    assert (unknown.declared_body_size, unknown.body_truncated) == (None, False)


def test_truncated_body_under_reject_is_denied_413_with_rule_0_and_closed(records):
    engine = FakeEngine(rejects_truncated_body=True)
    app, clock = make_app(engine, response_check=True)
    actions = as_dict(app.handle_request(_body_request(b"a=1", 200_000), clock()))
    assert (actions["fail"], actions["action"], actions["status"], actions["ruleid"]) == (
        1, "deny", 413, 0,
    )  # fmt: skip
    # the part that arrived was still evaluated, and the transaction is not kept
    assert engine.transactions[0].requests[0].body == b"a=1"
    assert engine.transactions[0].closed == 1 and app.stats.open == 0
    warnings = [r["message"] for r in records if r["level"].name == "WARNING"]
    assert warnings == [
        "a request body reached the agent cut short (3 of 200000 bytes, HAProxy's"
        " tune.bufsize or the body argument's cap): refused (413, SecRequestBodyLimitAction"
        " Reject)"
    ]


def test_truncated_body_keeps_the_verdict_of_a_rule_that_already_blocked():
    engine = FakeEngine(decide_request=lambda r: interrupted(), rejects_truncated_body=True)
    app, clock = make_app(engine)
    actions = as_dict(app.handle_request(_body_request(b"a=1", 200_000), clock()))
    assert (actions["status"], actions["ruleid"]) == (403, 949110)


def test_truncated_body_under_process_partial_is_judged_on_its_part_and_reported(records):
    engine = FakeEngine(rejects_truncated_body=False)
    app, clock = make_app(engine, response_check=True)
    actions = as_dict(app.handle_request(_body_request(b"a=1", 200_000), clock()))
    assert actions["fail"] == 0 and "action" not in actions
    assert app.stats.open == 1  # kept for its response, as any passed request
    warnings = [r["message"] for r in records if r["level"].name == "WARNING"]
    assert len(warnings) == 1 and "judged on that part only" in warnings[0]
    assert "ProcessPartial" in warnings[0]


def test_complete_body_under_reject_is_judged_as_usual():
    engine = FakeEngine(rejects_truncated_body=True)
    app, clock = make_app(engine)
    actions = as_dict(app.handle_request(_body_request(b"a=1", 3), clock()))
    assert actions["fail"] == 0 and "action" not in actions


def test_truncated_body_with_detect_only_never_blocks():
    engine = FakeEngine(rejects_truncated_body=True)
    app, clock = make_app(engine)
    message = _body_request(b"a=1", 200_000, flag("detect-only", True))
    assert as_dict(app.handle_request(message, clock()))["fail"] == 0


@pytest.mark.parametrize(
    "bad", [s("body-size", "12"), i64("body-size", -1)], ids=["string", "negative"]
)
def test_malformed_body_size_is_1001(bad):
    app, clock = make_app()
    with pytest.raises(MalformedMessageError):
        app.handle_request(request_message(bad), clock())


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_a_dropped_application_is_freed_at_once_not_by_the_garbage_collector(level):
    """An application is in no reference cycle (none through its handlers, its trace or its
    parts): dropped, it goes at once with its cache, so a transaction its cache still holds is
    freed while its engine is alive, never later in a collection where the engine may be gone
    first (a crash in the engine binding's finaliser)."""
    handler = logger.add(lambda _: None, level=level)
    gc.disable()
    try:
        app, clock = make_app(response_check=True)
        app.handle_request(request_message(s("id", "kept")), clock())
        app.handle_response(response_message("elsewhere"), clock())  # an orphan
        assert app.has_open_transaction("kept")
        gone = weakref.ref(app)
        del app
        assert gone() is None
    finally:
        gc.enable()
        logger.remove(handler)


@pytest.mark.parametrize(
    ("severities", "level"),
    [
        ((), "ERROR"),
        (("warning",), "WARNING"),
        (("debug", "notice"), "INFO"),
        (("info", "warning", "debug"), "WARNING"),
        (("warning", "critical"), "ERROR"),  # critical and anything unnamed: error
        (("debug", ""), "ERROR"),
        (("debug",), "DEBUG"),
    ],
)
def test_rule_match_level_is_the_most_severe_match(severities, level):
    matches = [RuleMatch(rule_id=1, severity=severity) for severity in severities]
    assert rule_match_level(matches) == level


def test_rule_match_records_are_logged_while_some_sink_takes_error():
    """The engine's match text is made only while this says yes (docs/performance.md change
    54): 1. every sink at CRITICAL (``log_level: fatal`` / ``disabled``). Result: no.
    2. one more at ERROR, then at DEBUG. Result: yes. 3. only those above ERROR again. Result:
    no. Real loguru: its own first check, the minimum level of every sink."""
    import sys

    logger.remove()
    try:
        logger.add(lambda _: None, level="CRITICAL")
        assert not rule_match_records_logged()
        at_error = logger.add(lambda _: None, level="ERROR")
        assert rule_match_records_logged()
        at_debug = logger.add(lambda _: None, level="DEBUG")
        assert rule_match_records_logged()
        logger.remove(at_error)
        logger.remove(at_debug)
        assert not rule_match_records_logged()
    finally:
        logger.remove()
        logger.add(sys.stderr)  # loguru's default, as the other tests found it
