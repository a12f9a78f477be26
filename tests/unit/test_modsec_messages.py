"""The ModSecurity SPOA dialect: check-request's positional and named arguments, ``code`` /
``intervention`` / ``error`` answers, ``ignorerules``, and the copies of an application that
check-request runs in (check_request_apps)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Any

import pytest

from coraza_spoa_py.agent import Agent
from coraza_spoa_py.application import Application
from coraza_spoa_py.check_request_apps import CheckRequestApps, without_rules
from coraza_spoa_py.messages import (
    MalformedArgumentError,
    message_transaction_id,
    parse_request_message,
    transaction_id_arg,
)
from coraza_spoa_py.models import CloseWhen, Verdict
from coraza_spoa_py.modsec_messages import (
    error_to_code,
    ignored_rule_ids,
    to_request_message,
    verdict_to_code,
)
from coraza_spoa_py.settings import AppConfig
from coraza_spoa_py.spop.events import Arg, DataType, Message, SetVar
from tests.unit.waf_fakes import (
    FakeClock,
    FakeEngine,
    as_dict,
    direct,
    i64,
    interrupted,
    null,
    request_message,
    s,
)

NOW = FakeClock().now
HEADERS_BIN = b"\x04host\x0bexample.com\x0auser-agent\x06curl/8\x00\x00"


def positional(*args: Arg) -> tuple[Arg, ...]:
    return tuple(Arg("", a.type, a.value) for a in args)


def eight(query: bytes | None = b"p=/etc/passwd", method: str = "GET") -> Message:
    # unique-id method path query req.ver req.hdrs_bin req.body_size req.body (HAProxy types)
    query_arg = null("") if query is None else s("", query)
    args = positional(
        s("", "uid-1"), s("", method), s("", "/login"), query_arg, s("", "1.1"),
        Arg("", DataType.BINARY, HEADERS_BIN), Arg("", DataType.INT32, 3),
        Arg("", DataType.BINARY, b"a=b"),
    )  # fmt: skip
    return Message("check-request", args)


def twelve(*extra: Arg) -> Message:
    # unique-id src src_port dst dst_port method path query req.ver req.hdrs_bin
    # req.body_size req.body
    args = positional(
        s("", "uid-2"), Arg("", DataType.IPV6, IPv6Address("::ffff:192.0.2.7")),
        Arg("", DataType.INT32, 40000), Arg("", DataType.IPV4, IPv4Address("127.0.0.1")),
        Arg("", DataType.INT32, 8080), s("", "POST"), s("", "/form"), null(""), s("", "1.1"),
        Arg("", DataType.BINARY, HEADERS_BIN), Arg("", DataType.INT32, 0),
        Arg("", DataType.BINARY, b"x=1"),
    )  # fmt: skip
    return Message("check-request", args + extra)


def test_eight_positional_arguments_are_read_like_a_coraza_request():
    parsed = parse_request_message(to_request_message(eight()), lambda: "generated")
    request = parsed.request
    assert request.transaction_id == "uid-1" and request.method == b"GET"
    assert (request.path, request.query, request.version) == (b"/login", b"p=/etc/passwd", b"1.1")
    assert request.headers == ((b"host", b"example.com"), (b"user-agent", b"curl/8"))
    assert request.body == b"a=b" and request.src_ip is None


def test_req_body_size_is_the_declared_size_so_a_cut_body_is_known():
    """The 7th of 8 (11th of 12) is req.body_size: a body HAProxy cut to fit the frame must
    be reported as cut (docs/haproxy.md "Request bodies"), never judged as if complete."""
    whole = parse_request_message(to_request_message(eight()), lambda: "x").request
    assert (whole.declared_body_size, whole.body_truncated) == (3, False)
    args = list(eight().args)
    args[6] = Arg("", DataType.INT32, 1_000_000)
    cut = parse_request_message(
        to_request_message(Message("check-request", tuple(args))), lambda: "x"
    ).request
    assert (cut.declared_body_size, cut.body_truncated) == (1_000_000, True)
    named = Message("check-request", (s("unique-id", "u"), Arg("req.body_size", DataType.INT32, 9)))
    assert (
        parse_request_message(to_request_message(named), lambda: "x").request.declared_body_size
        == 9
    )


def test_twelve_positional_arguments_carry_the_addresses():
    request = parse_request_message(to_request_message(twelve()), lambda: "x").request
    assert request.transaction_id == "uid-2" and request.method == b"POST"
    assert (request.src_ip, request.src_port) == (IPv4Address("192.0.2.7"), 40000)
    assert (request.dst_ip, request.dst_port) == (IPv4Address("127.0.0.1"), 8080)
    assert (request.path, request.query, request.body) == (b"/form", None, b"x=1")


def test_named_arguments_with_the_c_agents_names_or_ours():
    message = Message(
        "check-request",
        (
            s("unique-id", "uid-3"), s("method", "PUT"), s("path", "/p"), s("req.ver", "2.0"),
            Arg("req.hdrs_bin", DataType.BINARY, HEADERS_BIN), i64("req.body_size", 1),
            Arg("req.body", DataType.BINARY, b"z"), Arg("src", DataType.IPV4,
            IPv4Address("10.0.0.1")), i64("src_port", 5),
        ),
    )  # fmt: skip
    request = parse_request_message(to_request_message(message), lambda: "x").request
    assert (request.transaction_id, request.method, request.version) == ("uid-3", b"PUT", b"2.0")
    assert request.headers[0] == (b"host", b"example.com") and request.body == b"z"
    assert (request.src_ip, request.src_port) == (IPv4Address("10.0.0.1"), 5)


def test_an_empty_unique_id_gets_a_generated_one():
    message = eight()
    message = Message(message.name, (s("", ""), *message.args[1:]))
    parsed = parse_request_message(to_request_message(message), lambda: "generated")
    assert parsed.request.transaction_id == "generated" and parsed.id_generated


@pytest.mark.parametrize("count", [1, 7, 9, 11, 13])
def test_any_other_number_of_positional_arguments_is_malformed(count):
    message = Message("check-request", tuple(s("", "x") for _ in range(count)))
    with pytest.raises(MalformedArgumentError, match=f"{count} unnamed arguments"):
        to_request_message(message)


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        (None, ()),
        (b"", ()),
        (b"942100 930120", ("930120", "942100")),
        (b" 942100,930120  942100 ", ("930120", "942100")),
        (b"941000-941999", ("941000-941999",)),
    ],
)
def test_ignorerules_are_rule_ids_sorted_once_each(value, ids):
    arg = null("ignorerules") if value is None else s("ignorerules", value)
    assert ignored_rule_ids(arg) == ids


@pytest.mark.parametrize(
    "value", [b"942100\nSecRuleEngine Off", b"abc", b"1-", b"-1", b"12345678901", b"1 " * 65]
)
def test_ignorerules_that_are_not_ids_are_malformed(value):
    # the ids end up in a SecRuleRemoveById line: nothing but digits may get there
    with pytest.raises(MalformedArgumentError):
        ignored_rule_ids(s("ignorerules", value))


@pytest.mark.parametrize(
    ("verdict", "detect_only", "expected"),
    [
        (Verdict(), False, {"code": 0, "intervention": False}),
        (interrupted(status=403), False, {"code": 403, "intervention": True}),
        (interrupted(status=406), False, {"code": 406, "intervention": True}),
        (interrupted(action="redirect", status=0), False, {"code": 302, "intervention": True}),
        (interrupted(action="drop", status=0), False, {"code": 403, "intervention": True}),
        # detect-only never blocks: HAProxy's deny rule must not fire
        (interrupted(status=403), True, {"code": 0, "intervention": False}),
    ],
)
def test_the_verdict_is_spelled_as_code(verdict, detect_only, expected):
    actions = verdict_to_code(verdict, detect_only=detect_only)
    assert as_dict(actions) == expected
    types = {a.name: a.type for a in actions if isinstance(a, SetVar)}
    assert types == {"code": DataType.INT64, "intervention": DataType.BOOL}


def test_an_error_is_spelled_as_error_and_code():
    assert as_dict(error_to_code(1003)) == {"error": 1003, "code": 1003}


# ---- through the agent ---------------------------------------------------------------------


def make(name: str, engine: FakeEngine, **config: Any) -> Application:
    return Application(AppConfig(name=name, **config), engine, direct, clock=FakeClock())


def test_check_request_through_the_agent_clean_interrupted_and_errors():
    engine = FakeEngine(decide_request=lambda r: interrupted())
    agent = Agent({"a": make("a", engine)}, default_application="a")
    assert as_dict(agent.handle([eight()], NOW)) == {"code": 403, "intervention": True}
    clean_engine = FakeEngine()
    agent = Agent({"a": make("a", clean_engine)}, default_application="a")
    assert as_dict(agent.handle([eight(query=None)], NOW)) == {"code": 0, "intervention": False}
    # the transaction is closed by its own job: check-request has no response message
    assert clean_engine.transactions[0].closed == 1
    # malformed: 9 positional arguments, a bad method type
    bad = Message("check-request", eight().args + (s("", "x"),))
    assert as_dict(agent.handle([bad], NOW)) == {"error": 1001, "code": 1001}
    bad_type = Message("check-request", (eight().args[0], i64("", 1), *eight().args[2:]))
    assert as_dict(agent.handle([bad_type], NOW)) == {"error": 1001, "code": 1001}


def test_check_request_for_an_unknown_app_without_default_is_1002_in_code():
    agent = Agent({"a": make("a", FakeEngine()), "b": make("b", FakeEngine())}, None)
    message = twelve(s("app", "nope"))
    assert as_dict(agent.handle([message], NOW)) == {"error": 1002, "code": 1002}
    assert agent.unknown_applications == {"nope": 1}


def test_ignorerules_without_a_copy_provider_is_an_error_never_a_silent_pass():
    agent = Agent({"a": make("a", FakeEngine())}, default_application="a")
    message = twelve(s("ignorerules", "942100"))
    assert as_dict(agent.handle([message], NOW)) == {"error": 1003, "code": 1003}


# ---- check_request_apps ----------------------------------------------------------------------


class Compiler:
    def __init__(self, fail: bool = False) -> None:
        self.compiled: list[AppConfig] = []
        self.fail = fail

    def __call__(self, config: AppConfig) -> FakeEngine:
        self.compiled.append(config)
        if self.fail:
            raise RuntimeError("syntax error")
        return FakeEngine()


def build(config: AppConfig, engine: object) -> Application:
    return Application(config, engine, direct, clock=FakeClock())  # type: ignore[arg-type]


def test_check_request_runs_in_the_application_itself_and_keeps_no_transaction():
    """response_check on, no ignorerules: the real application (its counters, its metrics
    observer with the message's own name), and the transaction closed after the request."""
    engine = FakeEngine()
    app = make("a", engine, response_check=True)
    seen: list[tuple[str, str, bool]] = []
    app.observer = lambda name, message, orphan, verdict: seen.append((name, message, orphan))
    compiler = Compiler()
    agent = Agent(
        {"a": app}, default_application="a", check_request_app=CheckRequestApps(compiler, build)
    )
    assert as_dict(agent.handle([twelve()], NOW)) == {"code": 0, "intervention": False}
    assert engine.transactions[0].closed == 1 and compiler.compiled == []
    assert engine.transactions[0].close_whens == [CloseWhen.ALWAYS]
    assert app.stats.opened == app.stats.closed == 1 and app.stats.open == 0
    assert seen == [("a", "check-request", False)]
    # a coraza-req to the same application is still kept for its response
    agent.handle([request_message(s("id", "t1"))], NOW)
    assert app.has_open_transaction("t1")


def test_each_set_of_ids_is_compiled_once_with_secruleremovebyid():
    compiler = Compiler()
    apps = CheckRequestApps(compiler, build, limit=2)
    app = make("a", FakeEngine(), directives="Include crs.conf\n")
    first = apps(app, ("930120", "932160"))
    assert apps(app, ("930120", "932160")) is first
    (config,) = compiler.compiled
    assert config.directives == without_rules("Include crs.conf\n", ("930120", "932160"))
    assert config.directives.endswith("\nSecRuleRemoveById 930120 932160\n")
    assert config.directives.startswith("Include crs.conf\n")
    # least recently used goes first beyond the limit
    apps(app, ("1",))
    apps(app, ("2",))
    assert apps(app, ("930120", "932160")) is not first
    assert len(compiler.compiled) == 4


def test_a_copy_that_does_not_compile_is_an_engine_failure_for_its_requests():
    apps = CheckRequestApps(Compiler(fail=True), build)
    app = make("a", FakeEngine())
    agent = Agent({"a": app}, default_application="a", check_request_app=apps)
    message = twelve(s("ignorerules", "942100"))
    assert as_dict(agent.handle([message], NOW)) == {"error": 1003, "code": 1003}


def test_the_agent_runs_check_request_in_the_copy_without_the_rules():
    base_engine = FakeEngine(decide_request=lambda r: interrupted())
    copies: list[FakeEngine] = []

    def compile_clean(config: AppConfig) -> FakeEngine:
        copies.append(FakeEngine())
        return copies[-1]

    app = make("a", base_engine)
    seen: list[tuple[str, str, bool]] = []
    app.observer = lambda name, message, orphan, verdict: seen.append((name, message, orphan))
    agent = Agent(
        {"a": app},
        default_application="a",
        check_request_app=CheckRequestApps(compile_clean, build),
    )
    assert as_dict(agent.handle([twelve()], NOW))["code"] == 403
    assert as_dict(agent.handle([twelve(s("ignorerules", "949110"))], NOW))["code"] == 0
    assert len(base_engine.transactions) == 1 and len(copies[0].transactions) == 1
    # the unset variable (NULL) is no exclusion
    assert as_dict(agent.handle([twelve(null("ignorerules"))], NOW))["code"] == 403
    # the copy's transactions count with the agent's, its verdicts with the application's
    stats = agent.stats()
    assert stats.opened == stats.closed == 3
    assert seen == [("a", "check-request", False)] * 3


def test_counters_of_dropped_copies_stay_in_the_agents_totals():
    apps = CheckRequestApps(Compiler(), build, limit=1)
    agent = Agent({"a": make("a", FakeEngine())}, default_application="a", check_request_app=apps)
    for ids in ("1", "2", "3"):
        assert as_dict(agent.handle([twelve(s("ignorerules", ids))], NOW))["code"] == 0
    assert len(apps.copies()) == 1 and apps.dropped.opened == 2
    stats = agent.stats()
    assert stats.opened == stats.closed == 3


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        (s("id", "tx-1"), b"tx-1"),
        (Arg("id", DataType.BINARY, b"tx-2"), b"tx-2"),
        (s("id", ""), None),
        (null("id"), None),
        (Arg("id", DataType.INT32, 7), None),
    ],
)
def test_one_reading_of_the_id_for_the_agent_and_the_worker_router(arg, expected):
    """messages.transaction_id_arg is what both the agent (finding a response's transaction)
    and the worker router (claiming and routing it) read: an integer id is no id for either."""
    assert transaction_id_arg(arg) == expected
    assert message_transaction_id(Message("coraza-res", (s("app", "a"), arg))) == expected


# ---- the debug line of a check-request --------------------------------------------------------


def check_request_lines(records: list[dict[str, Any]]) -> list[str]:
    return [
        r["message"]
        for r in records
        if r["level"] == "DEBUG" and r["message"].startswith("check-request args=[")
    ]


def test_ignorerules_is_a_known_argument_in_the_debug_line(log_records):
    app = make("a", FakeEngine())
    apps = CheckRequestApps(Compiler(), build)
    agent = Agent({"a": app}, default_application="a", check_request_app=apps)
    agent.handle([twelve(s("ignorerules", "942100"), s("extra", "x"))], NOW)
    (line,) = check_request_lines(log_records)
    assert " ignored=[extra] " in line and "ignorerules" not in line.split(" ignored=")[1]
    assert "] ignored=[extra] -> fail=0 rules_hit=0 anomaly_score=0 cache=not-stored " in line


@pytest.mark.parametrize(
    ("ignorerules", "provider", "expected"),
    [
        ("942100 nope", True, "-> error=1001 (argument 'ignorerules'"),
        ("942100", False, "-> error=1003 (ignorerules is not available in this agent)"),
        ("942100", "broken", "-> error=1003 ("),
    ],
)
def test_a_check_request_failing_before_its_application_still_gets_its_line(
    log_records, ignorerules, provider, expected
):
    apps = CheckRequestApps(Compiler(fail=provider == "broken"), build) if provider else None
    agent = Agent({"a": make("a", FakeEngine())}, default_application="a", check_request_app=apps)
    agent.handle([twelve(s("ignorerules", ignorerules))], NOW)
    (line,) = check_request_lines(log_records)
    assert expected in line, line


def test_a_check_request_with_unreadable_arguments_still_gets_its_line(log_records):
    agent = Agent({"a": make("a", FakeEngine())}, default_application="a")
    bad = Message("check-request", eight().args + (s("", "x"),))
    agent.handle([bad], NOW)
    (line,) = check_request_lines(log_records)
    assert line.startswith("check-request args=[:STRING(5) :STRING(3)")
    assert "-> error=1001 (" in line
