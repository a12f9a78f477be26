"""AgentServer in-process: an idle connection goes dormant (its reader greenlet ends, the
socket stays open and watched) and everything a connection with a reader does still happens
to it: the next NOTIFY is answered, a stop disconnects it, the idle timeout closes it, an
eviction makes room with it, and a peer's close is seen."""

from __future__ import annotations

import time

import gevent
import pytest

from coraza_spoa_py.connection import AgentConnection
from coraza_spoa_py.server import AgentServer
from tests.support.inprocess import LOCALHOST, connect, path_notify, running_server
from tests.support.spop_client import actions_by_name

pytestmark = pytest.mark.integration

DORMANT_AFTER_S = 0.1


def _only_connection(server: AgentServer) -> AgentConnection:
    [connection] = server._connections
    return connection


def _wait_until(predicate, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        gevent.sleep(0.01)


def _dormant(connection: AgentConnection) -> bool:
    return connection.dormant and connection.reader is None


def test_an_idle_connection_goes_dormant_and_its_next_notify_is_answered() -> None:
    """1. dormant_after_s=0.1; a NOTIFY, then silence. Result: the connection goes dormant
    (no reader greenlet) but stays open. 2. A NOTIFY on it: ACKed, by a new reader. 3. Twice
    more, dormant in between: each ACKed, the connection the same one."""
    with running_server(dormant_after_s=DORMANT_AFTER_S) as server, connect(server) as client:
        path_notify(client, 1, "/first")
        assert actions_by_name(client.read_ack()[2]) == {"path": b"/first"}
        connection = _only_connection(server)
        first_reader = connection.reader
        _wait_until(lambda: _dormant(connection))
        assert first_reader is not None and first_reader.dead
        assert server.connection_count == 1
        for stream_id in (3, 5, 7):
            path_notify(client, stream_id, f"/after-{stream_id}")
            sid, _, actions = client.read_ack()
            assert (sid, actions_by_name(actions)) == (
                stream_id,
                {"path": f"/after-{stream_id}".encode()},
            )
            assert not connection.dormant
            _wait_until(lambda: _dormant(connection))
        assert _only_connection(server) is connection


def test_a_connection_in_use_never_goes_dormant() -> None:
    """A NOTIFY every 0.03 s for 0.5 s with dormant_after_s=0.1: the same reader greenlet
    answers every one (nothing idle long enough)."""
    with running_server(dormant_after_s=DORMANT_AFTER_S) as server, connect(server) as client:
        path_notify(client, 1, "/0")
        client.read_ack()
        connection = _only_connection(server)
        reader = connection.reader
        for stream_id in range(3, 35, 2):
            gevent.sleep(0.03)
            path_notify(client, stream_id, f"/{stream_id}")
            assert client.read_ack()[0] == stream_id
        assert connection.reader is reader and not connection.dormant


def test_graceful_stop_disconnects_a_dormant_connection() -> None:
    """1. A connection goes dormant. 2. stop(5). Result: AGENT-DISCONNECT 0, then EOF, and
    stop() returns with no connection left."""
    server = AgentServer(LOCALHOST, lambda m, t: [], dormant_after_s=DORMANT_AFTER_S)
    server.start()
    client = connect(server)
    connection = _only_connection(server)
    _wait_until(lambda: _dormant(connection))
    stopper = gevent.spawn(server.stop, 5.0)
    assert client.read_disconnect().status == 0
    assert client.is_closed_by_peer()
    stopper.get(timeout=5)
    assert server.connection_count == 0
    client.close()


def test_the_idle_timeout_closes_a_dormant_connection() -> None:
    """dormant_after_s=0.1, idle_timeout_s=0.4: the connection goes dormant first, then gets
    AGENT-DISCONNECT 2 (timeout) and EOF at the idle timeout, and leaves the server."""
    with (
        running_server(dormant_after_s=DORMANT_AFTER_S, idle_timeout_s=0.4) as server,
        connect(server) as client,
    ):
        connection = _only_connection(server)
        _wait_until(lambda: _dormant(connection))
        assert client.read_disconnect().status == 2
        assert client.is_closed_by_peer()
        _wait_until(lambda: server.connection_count == 0)


def test_a_dormant_connection_closed_by_the_peer_leaves_the_server() -> None:
    """A dormant connection whose peer closes: the EOF wakes it, it closes and is released
    (a new connection is admitted under max_connections=1)."""
    with running_server(dormant_after_s=DORMANT_AFTER_S, max_connections=1) as server:
        client = connect(server)
        connection = _only_connection(server)
        _wait_until(lambda: _dormant(connection))
        client.close()
        _wait_until(lambda: server.connection_count == 0)
        with connect(server) as second:
            path_notify(second, 1, "/second")
            assert actions_by_name(second.read_ack()[2]) == {"path": b"/second"}


def test_a_dormant_connection_is_evicted_to_make_room() -> None:
    """max_connections=1: the first connection goes dormant; a second one arrives. Result: the
    first gets AGENT-DISCONNECT 0 and EOF (evicted as an idle connection), the second is
    served."""
    with running_server(dormant_after_s=DORMANT_AFTER_S, max_connections=1) as server:
        first = connect(server)
        connection = _only_connection(server)
        _wait_until(lambda: _dormant(connection))
        with connect(server) as second:
            assert first.read_disconnect().status == 0
            assert first.is_closed_by_peer()
            path_notify(second, 1, "/second")
            assert actions_by_name(second.read_ack()[2]) == {"path": b"/second"}
        first.close()
