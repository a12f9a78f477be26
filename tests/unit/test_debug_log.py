"""The debug log explains a HAProxy setup on its own (issue 4): one line per message with its
arguments as ``name:TYPE(size)``, what is missing, ignored or mistyped, the answer, the cache
event and the time spent; one line per transaction leaving the cache without its response;
nothing of it built above debug, and no header value or body in any log line.

A fake engine stands in for libmodsecurity; the clock is driven by hand, so times are exact.
Logging goes through the real ``logs.configure_logging`` into files where the rendered text
matters, or the ``log_records`` fixture where the record's fields do.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal

import pytest
from loguru import logger

from coraza_spoa_py import logs, message_log
from coraza_spoa_py.agent import Agent
from coraza_spoa_py.application import Application
from coraza_spoa_py.message_log import MessageTrace, debug_enabled, describe_answer
from coraza_spoa_py.messages import REQUEST_ARGS
from coraza_spoa_py.models import RuleMatch, Verdict
from coraza_spoa_py.settings import AppConfig, BindAddress, Config, LogConfig
from coraza_spoa_py.spop.events import Arg, DataType, Message
from coraza_spoa_py.verdicts import verdict_actions
from tests.support.spop_client import actions_by_name
from tests.unit.waf_fakes import (
    FakeClock,
    FakeEngine,
    b,
    direct,
    flag,
    i64,
    interrupted,
    null,
    request_message,
    response_message,
    s,
)

BUDGET = 0.4
CLEAN = Verdict()
THREAD_WAIT = 0.002  # what the fake engine waits before its job starts (queue for a thread)
ENGINE_TIME = 0.005  # what the fake engine adds while it evaluates

# values that must never reach a log: a header value, a body, a query value, a cookie
SECRET_HEADER = "hdr-secret-4b1d"
SECRET_BODY = "body-secret-77ac"
SECRET_QUERY = "query-secret-e3f0"
SECRET_COOKIE = "cookie-secret-9a2c"
SECRETS = (SECRET_HEADER, SECRET_BODY, SECRET_QUERY, SECRET_COOKIE)

# what the shipped coraza.cfg sends, as waf_fakes.request_message builds it, with id "abc-1"
REQUEST_ARGS_TEXT = (
    "app:STRING(10) src-ip:IPV4 src-port:INT64 dst-ip:IPV4 dst-port:INT64 method:STRING(3) "
    "path:STRING(1) query:NULL version:STRING(3) headers:STRING(41) body:BINARY(0) id:STRING(5)"
)
RESPONSE_ARGS_TEXT = (
    "app:STRING(10) id:STRING(5) version:STRING(3) status:INT64 headers:STRING(27) body:BINARY(9)"
)


@pytest.fixture(autouse=True)
def restore_loguru() -> Iterator[None]:
    yield
    logs.shutdown_logging()
    logger.add(sys.stderr)  # loguru's own default handler, as other tests expect it


class Timed:
    """A FakeClock world: an engine job waits THREAD_WAIT for a thread, then takes ENGINE_TIME;
    the verdict says when it ran (``engine_times``), as the engine threads do."""

    def __init__(self) -> None:
        self.clock = FakeClock()

    def engine(self, verdict: Verdict = CLEAN, response: Verdict = CLEAN) -> FakeEngine:
        def decide(_: object, answer: Verdict) -> Verdict:
            self.clock.advance(THREAD_WAIT)
            started = self.clock()
            self.clock.advance(ENGINE_TIME)
            return replace(answer, engine_times=(started, self.clock()))

        return FakeEngine(
            decide_request=lambda r: decide(r, verdict),
            decide_response=lambda r: decide(r, response),
        )

    def app(self, engine: FakeEngine, **config: Any) -> Application:
        config.setdefault("name", "sample_app")
        return Application(
            AppConfig(**config),
            engine,
            direct,
            clock=self.clock,
            processing_budget_s=BUDGET,
        )


def debug_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["level"] == "DEBUG"]


def message_lines(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in debug_records(records) if r["message"].startswith(f"{name} args=[")]


def configure(tmp_path: Path, level: str, fmt: Literal["console", "json"] = "console") -> Path:
    out = tmp_path / f"agent-{level}-{fmt}.log"
    logs.configure_logging(
        Config(
            bind=BindAddress("tcp", "127.0.0.1", 0),
            applications=(AppConfig("sample_app"),),
            log=LogConfig(level=level, file=str(out), format=fmt),
        )
    )
    return out


# ---- the message line --------------------------------------------------------------------------


def test_blocked_request_is_one_line_with_args_verdict_cache_and_times(log_records):
    """1. a coraza-req as the shipped coraza.cfg sends it, blocked by 949110  2. its thread
    waited 2 ms and the engine took 5 ms. Result: ONE debug line, bound to app and tx, naming
    each argument with its type and size, the answer HAProxy got, the cache event and the
    times, exactly."""
    world = Timed()
    app = world.app(world.engine(interrupted(score=8, ids=(942100, 949110))))
    received_at = world.clock()
    app.handle_request(request_message(s("id", "abc-1")), received_at)
    (line,) = message_lines(log_records, "coraza-req")
    assert line["message"] == (
        f"coraza-req args=[{REQUEST_ARGS_TEXT}] -> fail=1 action=deny status=403 "
        "ruleid=949110 rules_hit=2 anomaly_score=8 cache=not-stored "
        "wait=2.000ms engine=5.000ms total=7.000ms"
    )
    assert line["extra"]["app"] == "sample_app" and line["extra"]["tx"] == "abc-1"


def test_clean_request_kept_for_the_response_then_found(log_records):
    """1. response_check on, a clean request: stored  2. its response: found, answered."""
    world = Timed()
    app = world.app(world.engine(), response_check=True)
    app.handle_request(request_message(s("id", "abc-1")), world.clock())
    app.handle_response(response_message("abc-1"), world.clock())
    (request,) = message_lines(log_records, "coraza-req")
    assert request["message"].endswith(
        "-> fail=0 rules_hit=0 anomaly_score=0 cache=stored"
        " wait=2.000ms engine=5.000ms total=7.000ms"
    )
    (response,) = message_lines(log_records, "coraza-res")
    assert response["message"] == (
        f"coraza-res args=[{RESPONSE_ARGS_TEXT}] -> fail=0 rules_hit=0 anomaly_score=0 "
        "cache=found wait=2.000ms engine=5.000ms total=7.000ms"
    )
    assert response["extra"]["tx"] == "abc-1" and response["extra"]["app"] == "sample_app"


def test_missing_and_ignored_arguments_are_named():
    """A message without body and query and with two names we do not know: the line says so;
    the optional flags (exportRuleIDs, detect-only) are never "missing"."""
    message = Message(
        "coraza-req",
        tuple(a for a in request_message().args if a.name not in ("body", "query"))
        + (s("x-extra", "v"), i64("other", 1)),
    )
    trace = MessageTrace.of(message, REQUEST_ARGS)
    assert trace.described.endswith(
        "headers:STRING(41) x-extra:STRING(1) other:INT64] missing=[body id query]"
        " ignored=[x-extra other]"
    )
    assert trace.transaction_id == "-"


def test_mistyped_argument_is_named_with_its_error_and_no_engine_time(log_records):
    """src-port sent as a string: error 1001 naming the argument; no thread ran, so only the
    total time; tx is the id as sent."""
    world = Timed()
    app = world.app(world.engine())
    with pytest.raises(Exception, match="src-port"):
        app.handle_request(request_message(s("id", "abc-1"), s("src-port", "40000")), world.clock())
    (line,) = message_lines(log_records, "coraza-req")
    assert "src-port:STRING(5)" in line["message"]
    assert line["message"].endswith(
        "-> error=1001 (argument 'src-port': expected an integer, got STRING) total=0.000ms"
    )
    assert line["extra"]["tx"] == "abc-1"


def test_generated_id_is_the_lines_tx_and_said(log_records):
    world = Timed()
    app = world.app(world.engine())
    actions = app.handle_request(request_message(), world.clock())
    generated = actions_by_name(actions)["id"].decode()
    (line,) = message_lines(log_records, "coraza-req")
    assert line["extra"]["tx"] == generated and len(generated) == 16
    assert "missing=[id]" in line["message"]
    assert "(id generated)" in line["message"]


def test_response_without_its_transaction_is_1004_cache_not_found(log_records):
    world = Timed()
    app = world.app(world.engine(), response_check=True, orphan_responses="reject")
    with pytest.raises(Exception, match="no open transaction"):
        app.handle_response(response_message("never"), world.clock())
    (line,) = message_lines(log_records, "coraza-res")
    assert line["message"].endswith(
        "-> error=1004 (no open transaction 'never') cache=not-found total=0.000ms"
    )
    assert line["extra"]["tx"] == "never"


def test_orphan_response_line_says_inspected_without_its_request(log_records):
    world = Timed()
    app = world.app(world.engine(), response_check=True)
    app.handle_response(response_message("elsewhere"), world.clock())
    (line,) = message_lines(log_records, "coraza-res")
    assert "-> fail=0 (orphan: inspected without its request)" in line["message"]
    assert " cache=not-found " in line["message"] and line["extra"]["tx"] == "elsewhere"


def test_response_with_response_check_off_says_so(log_records):
    world = Timed()
    app = world.app(world.engine(), response_check=False)
    assert app.handle_response(response_message("abc-1"), world.clock()) == []
    (line,) = message_lines(log_records, "coraza-res")
    assert line["message"].endswith("-> nothing (response_check off) total=0.000ms")


def test_overloaded_message_shows_how_long_it_waited(log_records):
    """Read 0.39 s ago (budget 0.4 s), and the engine thread found its deadline passed: error
    1005, wait=390 ms."""
    world = Timed()
    engine = world.engine()
    engine.miss_deadlines = True
    app = world.app(engine)
    received_at = world.clock() - 0.39
    with pytest.raises(Exception, match="waited longer"):
        app.handle_request(request_message(s("id", "abc-1")), received_at)
    (line,) = message_lines(log_records, "coraza-req")
    assert "-> error=1005 (waited longer than 0.400s)" in line["message"]
    assert "wait=390.000ms engine=0.000ms" in line["message"]


def test_engine_failure_is_1003_on_the_line(log_records):
    world = Timed()
    engine = world.engine()
    engine.fail_new = True
    app = world.app(engine)
    with pytest.raises(Exception, match="engine broken"):
        app.handle_request(request_message(s("id", "abc-1")), world.clock())
    (line,) = message_lines(log_records, "coraza-req")
    assert "-> error=1003 (engine broken)" in line["message"]


def test_detect_only_says_what_would_have_blocked(log_records):
    world = Timed()
    app = world.app(world.engine(interrupted()))
    app.handle_request(request_message(s("id", "abc-1"), flag("detect-only", True)), world.clock())
    (line,) = message_lines(log_records, "coraza-req")
    assert "-> fail=0 rules_hit=2 anomaly_score=5 " in line["message"]
    assert "(detect-only, not blocking: action=deny status=403 ruleid=949110)" in line["message"]


def test_answer_lists_every_variable_but_the_id_verdict_first():
    verdict = replace(interrupted(action="redirect", status=302), redirect_url="https://x/b")
    actions = verdict_actions(verdict, transaction_id="t", export_rule_ids=True, detect_only=False)
    assert describe_answer(actions) == (
        "fail=1 action=redirect status=302 ruleid=949110 rules_hit=2 anomaly_score=5 "
        "rule_ids=930120,949110 data=https://x/b"
    )
    assert describe_answer([]) == "nothing"


# ---- agent: messages that reach no application -----------------------------------------------


def test_message_for_no_application_gets_its_line_from_the_agent(log_records):
    world = Timed()
    app = world.app(world.engine(), name="a")
    other = world.app(world.engine(), name="b")
    agent = Agent({"a": app, "b": other}, default_application=None, clock=world.clock)
    agent.handle([request_message(s("id", "abc-1"), app="c")], world.clock())
    (line,) = message_lines(log_records, "coraza-req")
    assert line["message"].endswith(
        "-> error=1002 (no application 'c' and no default_application) total=0.000ms"
    )
    assert line["extra"]["tx"] == "abc-1" and "app" not in line["extra"]


def test_unknown_message_is_described_and_answered_with_1006(log_records):
    agent = Agent({}, default_application=None)
    agent.handle([Message("check-requests", (s("x", "yz"), null("n")))], 0.0)
    (line,) = message_lines(log_records, "check-requests")
    assert line["message"] == (
        "check-requests args=[x:STRING(2) n:NULL] -> error=1006 (unknown SPOE message)"
    )


def test_routed_message_has_exactly_one_line(log_records):
    world = Timed()
    app = world.app(world.engine(), name="a", response_check=True, orphan_responses="reject")
    agent = Agent({"a": app}, default_application="a", clock=world.clock)
    agent.handle([request_message(s("id", "t1"), app="a")], world.clock())
    agent.handle([response_message("t1", app="a")], world.clock())
    agent.handle([response_message("t1", app="a")], world.clock())  # 1004: already answered
    lines = [r for r in debug_records(log_records) if " args=[" in r["message"]]
    assert [r["message"].split(" args=")[0] for r in lines] == [
        "coraza-req",
        "coraza-res",
        "coraza-res",
    ]
    assert "error=1004" in lines[2]["message"]


# ---- cache events --------------------------------------------------------------------------


def cache_lines(records: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    return [
        (r["extra"]["app"], r["extra"]["tx"], r["message"])
        for r in debug_records(records)
        if r["message"].startswith("cache: ")
    ]


def test_expired_transactions_get_one_line_each(log_records):
    world = Timed()
    app = world.app(world.engine(), response_check=True, transaction_ttl_ms=1000)
    app.handle_request(request_message(s("id", "old-1")), world.clock())
    app.handle_request(request_message(s("id", "old-2")), world.clock())
    world.clock.advance(2)
    assert app.sweep() == 2
    expired = "cache: transaction expired (transaction_ttl_ms), closed without its response"
    assert cache_lines(log_records) == [
        ("sample_app", "old-1", expired),
        ("sample_app", "old-2", expired),
    ]


def test_evicted_and_replaced_transactions_are_told_apart(log_records):
    world = Timed()
    app = world.app(world.engine(), response_check=True, transaction_active_limit=1)
    app.handle_request(request_message(s("id", "first")), world.clock())
    app.handle_request(request_message(s("id", "second")), world.clock())
    app.handle_request(request_message(s("id", "second")), world.clock())
    assert cache_lines(log_records) == [
        (
            "sample_app",
            "first",
            "cache: transaction evicted (the cache is full), closed without its response",
        ),
        (
            "sample_app",
            "second",
            "cache: transaction replaced by a new request with the same id, the old one closed",
        ),
    ]


# ---- cost above debug ----------------------------------------------------------------------


def test_debug_enabled_follows_the_configured_level(tmp_path):
    configure(tmp_path, "info")
    assert not debug_enabled()
    configure(tmp_path, "debug")  # a reload to debug
    assert debug_enabled()
    logs.configure_logging(
        Config(
            bind=BindAddress("tcp", "127.0.0.1", 0),
            applications=(AppConfig("a", log=LogConfig(level="debug", file=str(tmp_path / "a"))),),
            log=LogConfig(level="warn", file=str(tmp_path / "agent")),
        )
    )
    assert debug_enabled()  # one application's own log at debug is enough


def test_nothing_is_built_above_debug(tmp_path, monkeypatch):
    """At info the message line is never built: describing a message would fail the test."""

    def forbidden(*_: object) -> str:
        raise AssertionError("the debug line was built above debug")

    monkeypatch.setattr(message_log, "describe_message", forbidden)
    monkeypatch.setattr("coraza_spoa_py.agent.describe_message", forbidden)
    monkeypatch.setattr(message_log, "describe_answer", forbidden)
    monkeypatch.setattr("coraza_spoa_py.message_log.describe_answer", forbidden)
    monkeypatch.setattr(message_log, "cache_removal", forbidden)
    monkeypatch.setattr("coraza_spoa_py.transactions.cache_removal", forbidden)
    out = configure(tmp_path, "info")
    world = Timed()
    app = world.app(world.engine(interrupted()), response_check=True, transaction_active_limit=1)
    agent = Agent({"sample_app": app}, default_application=None, clock=world.clock)
    agent.handle([request_message(s("id", "a"))], world.clock())
    agent.handle([request_message(s("id", "b"))], world.clock())
    agent.handle([Message("unknown", ())], world.clock())
    agent.handle([request_message(s("id", "c"), app="nope")], world.clock())
    agent.handle([response_message("zz")], world.clock())
    world.clock.advance(120)
    agent.sweep()
    assert " DBG " not in out.read_text()


# ---- no header value or body in any log line ---------------------------------------------


def secret_request() -> Message:
    return request_message(
        s("id", "abc-1"),
        s("path", "/login"),
        s("query", f"q={SECRET_QUERY}"),
        s(
            "headers",
            f"host: example.com\r\nx-token: {SECRET_HEADER}\r\ncookie: s={SECRET_COOKIE}\r\n\r\n",
        ),
        b("body", f"password={SECRET_BODY}".encode()),
        Arg("src-ip", DataType.IPV4, IPv4Address("192.0.2.10")),
    )


@pytest.mark.parametrize("level", ["debug", "info"])
@pytest.mark.parametrize("fmt", ["console", "json"])
def test_no_header_value_or_body_reaches_the_log(tmp_path, level, fmt):
    """1. logging at ``level`` in ``fmt``  2. a blocked request with a rule match; after a
    reload the same request passes and its response is found; a malformed one; an expiry.
    Header values, cookie, query and bodies carry markers. Result: no marker in the file; at
    debug the message lines are there with the sizes (the test would prove nothing
    otherwise), at info no debug line at all."""
    out = configure(tmp_path, level, fmt)
    match = RuleMatch(rule_id=949110, msg="Inbound Anomaly Score Exceeded", severity="critical")
    world = Timed()
    app = world.app(
        world.engine(replace(interrupted(), matches=(match,))),
        response_check=True,
        transaction_ttl_ms=1000,
    )
    agent = Agent({"sample_app": app}, default_application=None, clock=world.clock)
    agent.handle([secret_request()], world.clock())
    clean = world.app(world.engine(), response_check=True, transaction_ttl_ms=1000)
    agent.replace({"sample_app": clean}, None)
    agent.handle([secret_request()], world.clock())
    agent.handle([response_message("abc-1", b("body", SECRET_BODY.encode()))], world.clock())
    agent.handle([request_message(s("id", "exp-1"), s("cookie", SECRET_COOKIE))], world.clock())
    agent.handle([request_message(s("headers", f"x: {SECRET_HEADER}"))], world.clock())
    world.clock.advance(5)
    agent.sweep()
    logs.flush_log_files()  # log files are block buffered
    text = out.read_text()
    for secret in SECRETS:
        assert secret not in text
    records = [json.loads(line) for line in text.splitlines()] if fmt == "json" else None
    if level == "debug":
        assert "coraza-req args=[" in text and "coraza-res args=[" in text
        sizes = {
            a.name: len(a.value)
            for a in secret_request().args
            if a.type is DataType.STRING and isinstance(a.value, bytes)
        }
        assert f"headers:STRING({sizes['headers']})" in text
        assert f"query:STRING({sizes['query']})" in text
        assert f"body:BINARY({len('password=' + SECRET_BODY)})" in text
        assert f"body:BINARY({len(SECRET_BODY)})" in text  # the response's
        assert "ignored=[cookie]" in text and "cache: transaction expired" in text
    else:
        assert "args=[" not in text and "cache: " not in text
        assert "949110" in text  # the rule match (error level) is still there
    if records is not None:
        assert all(r["level"] != "debug" for r in records) == (level == "info")


def test_console_rendering_of_the_line_keeps_it_one_line(tmp_path):
    out = configure(tmp_path, "debug")
    world = Timed()
    app = world.app(world.engine(interrupted()))
    app.handle_request(request_message(s("id", "abc-1")), world.clock())
    logs.flush_log_files()
    (line,) = [x for x in out.read_text().splitlines() if " args=[" in x]
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} DBG coraza-req args=\[.*\] -> fail=1 .* "
        r"total=\d+\.\d{3}ms app=sample_app tx=abc-1",
        line,
    ), line
