"""Agent: routing by message name and `app`, error codes answered at once, reload that keeps
the old caches readable, totals at shutdown."""

from __future__ import annotations

import pytest
from loguru import logger

from coraza_spoa_py.agent import Agent
from coraza_spoa_py.application import Application
from coraza_spoa_py.models import Verdict
from coraza_spoa_py.settings import AppConfig
from coraza_spoa_py.spop.events import Arg, DataType, Message
from tests.unit.waf_fakes import (
    FakeClock,
    FakeEngine,
    as_dict,
    direct,
    i64,
    interrupted,
    request_message,
    response_message,
    s,
)

NOW = FakeClock().now  # the fake clock's start: messages received "just now"


def make(name, engine=None, clock=None, **config):
    engine = engine or FakeEngine()
    app = Application(AppConfig(name=name, **config), engine, direct, clock=clock or FakeClock())
    return app, engine


@pytest.fixture
def records():
    captured = []
    sink = logger.add(lambda m: captured.append(m.record), level="DEBUG", format="{message}")
    yield captured
    logger.remove(sink)


def test_routes_by_app_argument():
    a, engine_a = make("a")
    b, engine_b = make("b")
    agent = Agent({"a": a, "b": b}, default_application=None)
    agent.handle([request_message(app="b")], NOW)
    assert len(engine_a.transactions) == 0 and len(engine_b.transactions) == 1


@pytest.mark.parametrize("app_arg", [None, "unknown", ""])
def test_absent_or_unknown_app_goes_to_the_default(app_arg):
    a, engine_a = make("a")
    b, engine_b = make("b")
    agent = Agent({"a": a, "b": b}, default_application="b")
    actions = as_dict(agent.handle([request_message(app=app_arg)], NOW))
    assert actions["fail"] == 0 and len(engine_b.transactions) == 1


def test_null_or_non_string_app_counts_as_absent():
    a, engine_a = make("a")
    agent = Agent({"a": a}, default_application=None)
    message = request_message(app=None)
    message = Message(message.name, (Arg("app", DataType.NULL, None), *message.args))
    assert as_dict(agent.handle([message], NOW))["fail"] == 0
    message = Message(message.name, (i64("app", 5), *message.args[1:]))
    assert as_dict(agent.handle([message], NOW))["fail"] == 0
    assert len(engine_a.transactions) == 2


def test_single_application_without_default_takes_messages_without_app():
    only, engine = make("only")
    agent = Agent({"only": only}, default_application=None)
    agent.handle([request_message(app=None), request_message(app=None)], NOW)
    assert len(engine.transactions) == 2


def test_a_named_unknown_app_is_1002_even_with_one_application(records):
    # a typo in `app` must not pass through whatever application happens to be the only one
    only, engine = make("only")
    agent = Agent({"only": only}, default_application=None)
    for _ in range(2):
        assert as_dict(agent.handle([request_message(app="other")], NOW)) == {"error": 1002}
    assert engine.transactions == []
    assert agent.unknown_applications == {"other": 2}
    warnings = [r for r in records if r["level"].name == "WARNING"]
    assert len(warnings) == 1 and "no application 'other'" in warnings[0]["message"]


@pytest.mark.parametrize(
    ("app_arg", "routed"),
    [("echo.domain:8080", "echo.domain"), ("echo.domain", "echo.domain"), ("[::1]:80", "[::1]")],
)
def test_a_host_with_a_port_routes_like_the_bare_host(app_arg, routed):
    echo, engine = make(routed)
    other, other_engine = make("other")
    agent = Agent({routed: echo, "other": other}, default_application=None)
    assert as_dict(agent.handle([request_message(app=app_arg)], NOW))["fail"] == 0
    assert len(engine.transactions) == 1 and other_engine.transactions == []


def test_no_application_is_error_1002_at_once():
    a, _ = make("a")
    b, _ = make("b")
    agent = Agent({"a": a, "b": b}, default_application=None)
    assert as_dict(agent.handle([request_message(app="c")], NOW)) == {"error": 1002}
    assert as_dict(agent.handle([response_message("x", app=None)], NOW)) == {"error": 1002}


def test_no_applications_at_all_is_1002():
    agent = Agent({}, default_application=None)
    assert as_dict(agent.handle([request_message()], NOW)) == {"error": 1002}


def test_an_unknown_message_name_is_error_1006_warned_once_and_counted(records):
    a, engine = make("a")
    agent = Agent({"a": a}, default_application="a")
    for _ in range(3):
        actions = agent.handle([Message("coraza-request", (s("x", "y"),))], NOW)
        # `code` too: the ModSecurity dialect's `code gt 0` deny rule fires as well
        assert as_dict(actions) == {"error": 1006, "code": 1006}
    agent.handle([Message("other", ())], NOW)
    assert engine.transactions == []
    assert agent.unknown_messages == {"coraza-request": 3, "other": 1}
    warnings = [r["message"] for r in records if r["level"].name == "WARNING"]
    # rate-limited per name: one line for each of the two names within the interval
    assert len(warnings) == 2
    assert "'coraza-request'" in warnings[0] and "'other'" in warnings[1]


@pytest.mark.parametrize(
    ("setup", "message", "code"),
    [
        ("plain", request_message(i64("method", 1)), 1001),
        ("broken", request_message(), 1003),
        ("response", response_message("never"), 1004),
        ("response", response_message(None), 1004),
    ],
)
def test_every_failure_is_answered_with_our_code(setup, message, code):
    engine = FakeEngine(fail_new=setup == "broken")
    app, _ = make(
        "sample_app", engine, response_check=setup == "response", orphan_responses="reject"
    )
    agent = Agent({"sample_app": app}, default_application="sample_app")
    assert as_dict(agent.handle([message], NOW)) == {"error": code}


def test_overload_is_1005():
    clock = FakeClock()
    app, _ = make("sample_app", clock=clock)
    agent = Agent({"sample_app": app}, default_application=None)
    received_at = clock()
    clock.advance(5)
    assert as_dict(agent.handle([request_message()], received_at)) == {"error": 1005}


def test_a_bug_in_the_application_is_still_answered_with_1003(records):
    app, _ = make("sample_app")

    def crash(message, received_at):
        raise KeyError("bug")

    app.handle_request = crash
    agent = Agent({"sample_app": app}, default_application=None)
    assert as_dict(agent.handle([request_message()], NOW)) == {"error": 1003}
    assert any(r["level"].name == "ERROR" for r in records)


def test_repeated_errors_are_logged_once_per_second(records):
    clock = FakeClock()
    app, _ = make("a", response_check=True, orphan_responses="reject")
    agent = Agent({"a": app}, default_application="a", clock=clock)
    for _ in range(10):
        agent.handle([response_message("missing")], NOW)
    clock.advance(1.0)
    agent.handle([response_message("missing")], NOW)
    lines = [r["message"] for r in records if "answered with error 1004" in r["message"]]
    assert len(lines) == 2 and "9 more" in lines[1]


def test_messages_of_one_frame_are_all_answered_in_order():
    app, _ = make("a", response_check=True)
    agent = Agent({"a": app}, default_application="a")
    actions = agent.handle(
        [request_message(s("id", "one")), Message("other", ()), response_message("one")], NOW
    )
    assert [a.name for a in actions] == [
        "id", "fail", "rules_hit", "anomaly_score", "error", "code", "fail", "rules_hit",
        "anomaly_score",
    ]  # fmt: skip


def test_verdict_variables_come_through_the_agent():
    engine = FakeEngine(decide_request=lambda r: interrupted(action="drop", status=0))
    app, _ = make("a", engine)
    agent = Agent({"a": app}, default_application="a")
    values = as_dict(agent.handle([request_message(s("id", "d"))], NOW))
    assert values["action"] == "drop" and values["fail"] == 1 and values["id"] == b"d"


# ---- reload -------------------------------------------------------------------------------


def test_reload_swaps_apps_and_old_responses_still_find_their_transaction():
    """1. request r1 on the old app  2. replace() with a new app of the same name
    3. new requests go to the new app  4. r1's response is processed by the OLD app
    5. once the old cache is empty, sweep() drops it and hands it to on_retired."""
    clock = FakeClock()
    old, old_engine = make("a", clock=clock, response_check=True)
    retired: list[Application] = []
    agent = Agent({"a": old}, default_application="a", on_retired=retired.append)
    agent.handle([request_message(s("id", "r1"))], clock())

    new, new_engine = make("a", clock=clock, response_check=True)
    previous = agent.replace({"a": new}, default_application="a")
    assert previous == {"a": old} and agent.applications == {"a": new}

    agent.handle([request_message(s("id", "r2"))], clock())
    assert len(new_engine.transactions) == 1

    assert as_dict(agent.handle([response_message("r1")], clock()))["fail"] == 0
    assert old_engine.transactions[0].closed == 1 and old_engine.transactions[0].responses
    assert as_dict(agent.handle([response_message("r2")], clock()))["fail"] == 0
    assert new_engine.transactions[0].closed == 1

    assert retired == []
    agent.sweep()
    assert retired == [old]
    stats = agent.stats()
    assert stats.opened == stats.closed == 2 and stats.open == 0


def test_reload_that_removes_the_app_still_answers_its_old_responses():
    clock = FakeClock()
    old, _ = make("gone", clock=clock, response_check=True)
    other, _ = make("b", clock=clock, response_check=True)
    agent = Agent({"gone": old}, default_application=None)
    agent.handle([request_message(s("id", "r1"), app="gone")], clock())
    agent.replace({"b": other, "c": make("c")[0]}, default_application=None)
    assert as_dict(agent.handle([response_message("r1", app="gone")], clock()))["fail"] == 0
    assert as_dict(agent.handle([response_message("r9", app="gone")], clock())) == {"error": 1002}


def test_retired_generation_is_swept_and_dropped_after_ttl():
    clock = FakeClock()
    old, old_engine = make("a", clock=clock, response_check=True, transaction_ttl_ms=1000)
    retired: list[Application] = []
    agent = Agent({"a": old}, default_application="a", on_retired=retired.append)
    agent.handle([request_message(s("id", "late"))], clock())
    agent.replace({"a": make("a", clock=clock)[0]}, default_application="a")
    assert agent.sweep() == 0 and retired == []
    clock.advance(1.0)
    assert agent.sweep() == 1
    assert retired == [old] and old_engine.transactions[0].closed == 1
    assert agent.all_applications() == list(agent.applications.values())


def test_reload_keeping_the_same_application_object_does_not_retire_it():
    app, _ = make("a", response_check=True)
    retired: list[Application] = []
    agent = Agent({"a": app}, default_application="a", on_retired=retired.append)
    agent.handle([request_message(s("id", "k"))], NOW)
    agent.replace({"a": app}, default_application="a")
    agent.sweep()
    assert retired == [] and app.stats.open == 1


def test_replace_with_a_bad_default_changes_nothing():
    app, _ = make("a")
    agent = Agent({"a": app}, default_application="a")
    with pytest.raises(ValueError):
        agent.replace({"b": make("b")[0]}, default_application="a")
    assert agent.applications == {"a": app} and agent.default_application == "a"


def test_reload_refreshes_the_default_application():
    a, engine_a = make("a")
    agent = Agent({"a": a}, default_application="a")
    b, engine_b = make("b")
    agent.replace({"a": make("a")[0], "b": b}, default_application="b")
    agent.handle([request_message(app=None)], NOW)
    assert len(engine_b.transactions) == 1 and engine_a.transactions == []


# ---- shutdown -------------------------------------------------------------------------------


def test_close_all_closes_everything_and_logs_the_totals(records):
    clock = FakeClock()
    engine = FakeEngine(decide_request=lambda r: Verdict())
    app, _ = make("a", engine, clock=clock, response_check=True)
    old, old_engine = make("a", clock=clock, response_check=True)
    agent = Agent({"a": old}, default_application="a")
    agent.handle([request_message(s("id", f"o{n}")) for n in range(3)], clock())
    agent.replace({"a": app}, default_application="a")
    agent.handle([request_message(s("id", f"n{n}")) for n in range(4)], clock())
    agent.handle([response_message("n0")], clock())
    assert agent.close_all() == 6
    assert engine.open_transactions == [] and old_engine.open_transactions == []
    (line,) = [r["message"] for r in records if r["message"].startswith("transactions ")]
    assert line == "transactions opened=7 closed=7 expired=0 evicted=0 shed=0 open=0"
