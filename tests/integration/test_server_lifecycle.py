"""AgentServer in-process: idle timeout, graceful stop, start/stop edges, failure isolation."""

from __future__ import annotations

import errno
import time
from typing import Any

import gevent
import pytest

from coraza_spoa_py.server import AgentServer
from coraza_spoa_py.settings import BindAddress
from coraza_spoa_py.spop import Connection, Notify, frames, handshake
from tests.support.inprocess import LOCALHOST, GatedHandler, connect, path_notify, running_server
from tests.support.spop_client import SpopClient, actions_by_name

pytestmark = pytest.mark.integration


def test_idle_connection_is_closed_with_disconnect_timeout() -> None:
    """1. idle_timeout_s=0.2; a connection says HELLO and then nothing.
    2. The agent sends AGENT-DISCONNECT 2 ("timeout") and closes it."""
    with running_server(idle_timeout_s=0.2) as server, connect(server) as client:
        assert client.read_disconnect().status == 2
        assert client.is_closed_by_peer()


def test_every_idle_connection_is_closed_not_only_the_first() -> None:
    """1. idle_timeout_s=0.2; connection A goes idle and is closed. 2. Connection B, opened
    after that, goes idle too. Result: B is closed as well (the watchdog lives on after it
    interrupted a reader)."""
    with running_server(idle_timeout_s=0.2) as server:
        with connect(server) as first:
            assert first.read_disconnect().status == 2
        with connect(server) as second:
            assert second.read_disconnect().status == 2
            assert second.is_closed_by_peer()


def test_connection_waiting_on_its_own_work_is_not_idle() -> None:
    """A NOTIFY whose handler takes longer than the idle timeout is still ACKed: waiting on
    our own in-flight work is not idleness."""
    handler = GatedHandler()
    with running_server(handler, idle_timeout_s=0.1) as server, connect(server) as client:
        path_notify(client, 1, "/slow")
        handler.wait_started(1)
        gevent.sleep(0.35)
        handler.open("/slow")
        assert client.read_ack()[0] == 1


def test_a_connection_in_use_is_never_idle_however_long_it_lives() -> None:
    """1. idle_timeout_s=0.3; one NOTIFY every 0.1 s for 1.2 s (four idle timeouts).
    2. Every one is ACKed and the connection stays open: reads and writes count as activity.
    3. Then silence: AGENT-DISCONNECT 2, within the timeout plus the watchdog's interval."""
    with running_server(idle_timeout_s=0.3) as server, connect(server) as client:
        for stream_id in range(1, 13):
            path_notify(client, stream_id, f"/{stream_id}")
            assert client.read_ack()[0] == stream_id
            gevent.sleep(0.1)
        started = time.monotonic()
        assert client.read_disconnect().status == 2
        assert time.monotonic() - started < 0.3 + 0.3 / 4 + 0.5


def test_graceful_stop_finishes_inflight_work_then_disconnects() -> None:
    """1. Connection A has a NOTIFY in the handler; connection B is idle after HELLO.
    2. stop(5) starts: the listener closes at once (new connections are refused) and B gets
       AGENT-DISCONNECT 0 right away (nothing in flight).
    3. When A's handler finishes, A gets its ACK, then AGENT-DISCONNECT 0, then EOF.
    4. stop() returns."""
    handler = GatedHandler()
    server = AgentServer(LOCALHOST, handler)
    server.start()
    busy, idle = connect(server), connect(server)
    path_notify(busy, 7, "/inflight")
    handler.wait_started(1)
    stopper = gevent.spawn(server.stop, 5.0)
    assert idle.read_disconnect().status == 0
    assert idle.is_closed_by_peer()
    with pytest.raises(ConnectionRefusedError):
        SpopClient.connect((server.address.host, server.address.port), green=True)
    assert not stopper.ready()
    handler.open("/inflight")
    sid, _, actions = busy.read_ack()
    assert (sid, actions_by_name(actions)) == (7, {"path": b"/inflight"})
    assert busy.read_disconnect().status == 0
    assert busy.is_closed_by_peer()
    stopper.get(timeout=5)
    assert server.connection_count == 0
    busy.close()
    idle.close()


def test_graceful_stop_gives_up_after_its_timeout() -> None:
    """A handler that never finishes: stop(0.2) returns after the timeout and the connection
    is closed without an ACK (HAProxy's processing timeout handles that event)."""
    handler = GatedHandler()
    server = AgentServer(LOCALHOST, handler)
    server.start()
    client = connect(server)
    path_notify(client, 1, "/never")
    handler.wait_started(1)
    with gevent.Timeout(5):
        server.stop(0.2)
    assert client.is_closed_by_peer()
    assert server.connection_count == 0
    client.close()


def test_serve_forever_returns_after_stop() -> None:
    """serve_forever() blocks until stop() (what cli's SIGTERM handler calls)."""
    server = AgentServer(LOCALHOST, lambda messages, received_at: [])
    server.start()
    serving = gevent.spawn(server.serve_forever)
    gevent.sleep(0.05)
    assert not serving.ready()
    with connect(server) as client:
        client.notify(1, 1, [])
        assert client.read_ack()[2] == (frames.NOOP_ACTION,)
    server.stop(1.0)
    serving.get(timeout=5)


def test_handlers_of_a_closed_connection_finish_before_its_slot_is_released() -> None:
    """1. A NOTIFY is in the handler when the peer closes the connection.
    2. The connection keeps its slot (and stop() would wait) until the handler returns, so
       the application's transaction is never abandoned half-way.
    3. Once the handler finishes, the connection is gone; its ACK was dropped."""
    handler = GatedHandler()
    with running_server(handler) as server:
        client = connect(server)
        path_notify(client, 1, "/orphan")
        handler.wait_started(1)
        client.close()
        gevent.sleep(0.1)
        assert (server.connection_count, handler.finished) == (1, [])
        handler.open("/orphan")
        with gevent.Timeout(5):
            while server.connection_count:
                gevent.sleep(0.01)
        assert handler.finished == [b"/orphan"]


def test_lifecycle_edges() -> None:
    """address before start() is an error; serve_forever() starts a server that was not
    started; a second stop() returns once the first is done."""
    server = AgentServer(LOCALHOST, lambda messages, received_at: [])
    with pytest.raises(RuntimeError, match="start"):
        _ = server.address
    serving = gevent.spawn(server.serve_forever)
    with gevent.Timeout(5):
        while server._address is None:
            gevent.sleep(0.01)
    with connect(server) as client:
        client.notify(1, 1, [])
        assert client.read_ack()[0] == 1
    first = gevent.spawn(server.stop, 1.0)
    second = gevent.spawn(server.stop, 1.0)
    greenlets: list[gevent.Greenlet[..., Any]] = [first, second, serving]
    gevent.joinall(greenlets, timeout=5, raise_error=True)
    assert server.stopping and first.ready() and second.ready() and serving.ready()


def test_port_in_use_fails_at_start() -> None:
    """A TCP port that another listener holds: start() raises EADDRINUSE (cli reports it)."""
    with running_server() as first:
        second = AgentServer(first.address, lambda messages, received_at: [])
        with pytest.raises(OSError) as excinfo:
            second.start()
        assert excinfo.value.errno == errno.EADDRINUSE


def test_empty_host_listens_on_every_interface() -> None:
    """bind ":PORT" (host "", coraza-spoa's Go form): IPv4 and IPv6 loopback both reach it."""
    with running_server(bind=BindAddress(kind="tcp", host="", port=0)) as server:
        port = server.address.port
        for host in ("127.0.0.1", "::1"):
            client = SpopClient.connect((host, port), green=True)
            try:
                assert client.hello().version == "2.0"
            finally:
                client.close()


def test_unusual_haproxy_disconnect_status_is_a_warning(log_records) -> None:
    """HAPROXY-DISCONNECT 10 is not routine (unlike 0/1/2): still answered, logged as warning."""
    with running_server() as server, connect(server) as client:
        client.send(handshake.encode_haproxy_disconnect(10, "fragmentation not supported"))
        assert client.read_disconnect().status == 0
        assert client.is_closed_by_peer()
    warnings = [r["message"] for r in log_records if r["level"] == "WARNING"]
    assert warnings == ["haproxy disconnect 10 (fragmentation not supported)"]


def test_a_codec_bug_costs_that_connection_only(monkeypatch, log_records) -> None:
    """If the codec raised anything but SpopError (a bug), the server sends AGENT-DISCONNECT
    99, logs the traceback, closes that connection, and keeps serving the others."""
    original = Connection.next_event

    def buggy_next_event(self):
        event = original(self)
        if isinstance(event, Notify) and event.stream_id == 13:
            raise IndexError("codec bug")
        return event

    monkeypatch.setattr(Connection, "next_event", buggy_next_event)
    with running_server() as server, connect(server) as victim, connect(server) as other:
        path_notify(victim, 13, "/bug")
        assert victim.read_disconnect().status == 99
        assert victim.is_closed_by_peer()
        path_notify(other, 1, "/fine")
        assert actions_by_name(other.read_ack()[2]) == {"path": b"/fine"}
    assert [r["message"] for r in log_records if r["level"] == "ERROR"] == [
        "unexpected error while decoding"
    ]
