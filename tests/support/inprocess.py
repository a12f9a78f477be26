"""In-process ``AgentServer`` for integration tests: start one on an ephemeral port and
talk to it with gevent sockets (a blocking stdlib socket would stall the hub, docs/development.md
"Blocking calls in tests")."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import gevent
import gevent.event

from coraza_spoa_py import spop
from coraza_spoa_py.server import AgentServer
from coraza_spoa_py.settings import BindAddress
from tests.support.spop_client import SpopClient, message

LOCALHOST = BindAddress(kind="tcp", host="127.0.0.1", port=0)


def echo_path_handler(messages: tuple[spop.Message, ...], received_at: float) -> list[spop.Action]:
    """Sets ``path`` to the message's path argument (so each ACK says which NOTIFY it answers)."""
    actions: list[spop.Action] = []
    for msg in messages:
        for arg in msg.args:
            if arg.name == "path":
                actions.append(spop.SetVar(spop.VarScope.TRANSACTION, "path", arg.value))
    return actions


@contextmanager
def running_server(
    handler: Callable[[tuple[spop.Message, ...], float], Sequence[spop.Action]] = echo_path_handler,
    bind: BindAddress = LOCALHOST,
    **kwargs: Any,
) -> Iterator[AgentServer]:
    server = AgentServer(bind, handler, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop(graceful_timeout_s=1.0)


def connect(server: AgentServer, *, hello: bool = True, timeout: float = 5.0) -> SpopClient:
    address = server.address
    target: Any = address.path if address.kind == "unix" else (address.host, address.port)
    client = SpopClient.connect(target, green=True, timeout=timeout)
    if hello:
        client.hello()
    return client


def path_notify(client: SpopClient, stream_id: int, path: str, frame_id: int = 1) -> None:
    client.notify(stream_id, frame_id, [message("coraza-req", path=path)])


class GatedHandler:
    """A handler whose calls block until the test opens their gate (keyed by the path arg), so
    tests decide completion order without timing. ``started`` lists paths as calls begin."""

    def __init__(self) -> None:
        self.gates: dict[bytes, gevent.event.Event] = {}
        self.started: list[bytes] = []
        self.finished: list[bytes] = []

    def gate(self, path: str) -> gevent.event.Event:
        return self.gates.setdefault(path.encode(), gevent.event.Event())

    def open(self, path: str) -> None:
        self.gate(path).set()

    def __call__(self, messages: tuple[spop.Message, ...], received_at: float) -> list[spop.Action]:
        path = next(a.value for a in messages[0].args if a.name == "path")
        assert isinstance(path, bytes)
        self.started.append(path)
        self.gates.setdefault(path, gevent.event.Event()).wait()
        self.finished.append(path)
        return [spop.SetVar(spop.VarScope.TRANSACTION, "path", path)]

    def wait_started(self, count: int, timeout: float = 5.0) -> None:
        with gevent.Timeout(
            timeout, AssertionError(f"{count} calls never started: {self.started}")
        ):
            while len(self.started) < count:
                gevent.sleep(0.005)
