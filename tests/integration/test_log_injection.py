"""Nothing a client sends can forge a log line (issue 15): every client-controlled string that
reaches a record is escaped by the renderers, in the console and the JSON format alike. One
test per field, each through the code that logs it (the in-process server, the agent, the
application) into a real log file; a field is injected with a newline, a carriage return, an
ESC sequence and the Unicode line separators, each followed by a fake log line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
from loguru import logger

from coraza_spoa_py import logs
from coraza_spoa_py.agent import Agent
from coraza_spoa_py.application import Application
from coraza_spoa_py.settings import AppConfig, BindAddress, Config, LogConfig
from coraza_spoa_py.spop import handshake
from coraza_spoa_py.spop.events import Message
from tests.support.inprocess import connect, running_server
from tests.unit.waf_fakes import FakeClock, FakeEngine, direct, request_message, s

pytestmark = pytest.mark.integration

FORGED_TEXT = "2099-01-01 00:00:00.000 ERR forged line"
# each breaks a line somewhere: a terminal, `tail`, str.splitlines(), a JSON-lines reader
BREAKERS = ("\n", "\r", "\r\n", "\x1b[2K\r", "\u2028", "\u2029", "\x85", "\x0b", "\x0c")
INJECTED = "x" + "".join(f"{breaker}{FORGED_TEXT}" for breaker in BREAKERS)
FORMATS = ("console", "json")


@pytest.fixture(autouse=True)
def restore_loguru() -> Iterator[None]:
    yield
    logs.shutdown_logging()
    logger.add(sys.stderr)  # loguru's own default handler, as other tests expect it


@pytest.fixture(params=FORMATS)
def log_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    out = tmp_path / f"agent-{request.param}.log"
    logs.configure_logging(
        Config(
            bind=BindAddress("tcp", "127.0.0.1", 0),
            applications=(AppConfig("sample_app"),),
            log=LogConfig(level="debug", file=str(out), format=request.param),
        )
    )
    return out


def assert_not_forged(path: Path, *, expect: str) -> None:
    """Every line of the file is one record (JSON: one object), no line is the forged one,
    and a line with ``expect`` in it was written (the field did reach the log)."""
    logs.flush_log_files()
    raw = path.read_text()
    # every separator the test injected, Unicode ones too, counts as a line break here
    lines = raw.splitlines()
    assert lines, "nothing was logged"
    assert raw.count("\n") == len(lines)  # no other separator survived
    forged = [line for line in lines if line.removeprefix("\x1b[2K").startswith("2099-")]
    assert forged == []
    assert not any("\x1b" in line or "\r" in line for line in lines)
    if path.name.endswith("json.log"):
        records = [json.loads(line) for line in lines]
        assert any(expect in json.dumps(record) for record in records)
    assert any(expect in line for line in lines), lines


CLOCK = FakeClock()


def _app(name: str = "sample_app") -> Application:
    return Application(AppConfig(name), FakeEngine(), direct, clock=CLOCK)


def test_haproxy_disconnect_message(log_file: Path) -> None:
    """HAPROXY-DISCONNECT status 4 (a warning) with the injected message."""
    with running_server() as server, connect(server) as client:
        client.send(handshake.encode_haproxy_disconnect(4, INJECTED.encode()))
        assert client.read_disconnect().status == 0
        gevent.sleep(0.05)
    assert_not_forged(log_file, expect="haproxy disconnect 4 (x")


def test_hello_engine_id_and_capabilities(log_file: Path) -> None:
    """The debug line of HAProxy's HELLO: engine-id and capabilities as HAProxy sent them."""
    hello = handshake.encode_haproxy_hello(engine_id=INJECTED, capabilities="pipelining")
    with running_server() as server, connect(server, hello=False) as client:
        client.hello(hello)
    assert_not_forged(log_file, expect="engine-id=x")


def test_transaction_id(log_file: Path) -> None:
    """The ``tx`` field (the message's ``id`` argument) of the message's debug line."""
    _app().handle_request(request_message(s("id", INJECTED)), CLOCK())
    assert_not_forged(log_file, expect="coraza-req args=[")


def test_app_name(log_file: Path) -> None:
    """An ``app`` argument naming no application, with no default: the error warning."""
    agent = Agent({"one": _app(name="one"), "two": _app(name="two")}, None)
    agent.handle([request_message(app=INJECTED)], CLOCK())
    assert_not_forged(log_file, expect="no application 'x")


def test_argument_name(log_file: Path) -> None:
    """An unknown argument's name, listed as ignored in the message's debug line."""
    _app().handle_request(request_message(s(INJECTED, "v")), CLOCK())
    assert_not_forged(log_file, expect="ignored=[x")


def test_message_name(log_file: Path) -> None:
    """An SPOE message the agent does not know: its debug line and its warning name it."""
    agent = Agent({"sample_app": _app()}, "sample_app")
    agent.handle([Message(INJECTED, ())], CLOCK())
    assert_not_forged(log_file, expect="unknown SPOE message")


def test_peer(log_file: Path) -> None:
    """The ``peer`` field every connection's lines carry (a unix socket's path)."""
    logger.bind(peer=f"unix:{INJECTED}").warning("protocol error: test")
    assert_not_forged(log_file, expect="protocol error: test")


def test_rule_match_text(log_file: Path) -> None:
    """A rule match's engine text carries request data ([data "..."], [uri "..."])."""
    match = {"rule_id": 942100, "data": INJECTED, "raw": f'[id "942100"] [data "{INJECTED}"]'}
    logger.bind(app="sample_app", tx="t1", kind="rule_match", matches=[match]).warning("match")
    assert_not_forged(log_file, expect="942100")
