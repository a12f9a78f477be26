"""AgentServer in-process: idle timeout and graceful stop."""

from __future__ import annotations

import gevent
import pytest

from coraza_spoa_py.server import AgentServer
from coraza_spoa_py.spop import frames
from tests.support.inprocess import LOCALHOST, GatedHandler, connect, path_notify, running_server
from tests.support.spop_client import SpopClient, actions_by_name

pytestmark = pytest.mark.integration


def test_idle_connection_is_closed_with_disconnect_timeout() -> None:
    """1. idle_timeout_s=0.2; a connection says HELLO and then nothing.
    2. The agent sends AGENT-DISCONNECT 2 ("timeout") and closes it."""
    with running_server(idle_timeout_s=0.2) as server, connect(server) as client:
        assert client.read_disconnect().status == 2
        assert client.is_closed_by_peer()


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
