"""AgentServer in-process: the connection caps and deadlines that keep idle, trickling or
never-greeting peers from starving HAProxy (issue 15): eviction order at ``max_connections``
and ``max_connections_per_source``, refusal when everything is busy, the HELLO deadline and the
per-frame deadline that more bytes do not extend."""

from __future__ import annotations

import time

import gevent
import pytest
from gevent import socket

from coraza_spoa_py.spop import frames, handshake
from tests.support.inprocess import GatedHandler, connect, path_notify, running_server
from tests.support.spop_client import SpopClient, message

pytestmark = pytest.mark.integration


def _connect_from(server, source: str) -> SpopClient:
    """A connection from another loopback address (127.0.0.2, ...): another source."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(5.0)
    sock.bind((source, 0))
    sock.connect((server.address.host, server.address.port))
    client = SpopClient(sock, timeout=5.0)
    client.hello()
    return client


def test_a_connection_that_never_says_hello_goes_before_an_idle_haproxy_one() -> None:
    """1. max_connections=2: an older connection said HELLO and is idle; a newer one said
    nothing. 2. A third connects and is served. 3. The silent one is closed, the HELLO one
    is still served."""
    with running_server(max_connections=2) as server:
        greeted = connect(server)
        silent = connect(server, hello=False)
        gevent.sleep(0.05)  # accepted
        newest = connect(server)
        assert silent.read_disconnect().status == 0
        assert silent.is_closed_by_peer()
        path_notify(greeted, 1, "/still-here")
        assert greeted.read_ack()[0] == 1
        assert server.evicted == 1
        for client in (greeted, silent, newest):
            client.close()


def test_every_connection_busy_refuses_the_new_one() -> None:
    """1. max_connections=1 and its one connection has a NOTIFY in the handler. 2. A second
    connection is closed at once without AGENT-HELLO. 3. The busy one is still answered."""
    handler = GatedHandler()
    with running_server(handler, max_connections=1) as server, connect(server) as busy:
        path_notify(busy, 1, "/slow")
        handler.wait_started(1)
        refused = connect(server, hello=False)
        refused.send(handshake.encode_haproxy_hello())
        assert refused.is_closed_by_peer()
        handler.open("/slow")
        assert busy.read_ack()[0] == 1
        assert (server.refused, server.evicted) == (1, 0)
        refused.close()


def test_the_per_source_cap_evicts_only_from_that_source() -> None:
    """1. max_connections_per_source=1, max_connections=10: one idle connection from
    127.0.0.1, one from 127.0.0.2. 2. A second from 127.0.0.2 is served. 3. The older
    127.0.0.2 one is closed; the 127.0.0.1 one is still answered."""
    with running_server(max_connections=10, max_connections_per_source=1) as server:
        local = connect(server)
        other = _connect_from(server, "127.0.0.2")
        newer_other = _connect_from(server, "127.0.0.2")
        assert other.read_disconnect().status == 0
        path_notify(local, 1, "/local")
        assert local.read_ack()[0] == 1
        path_notify(newer_other, 1, "/newer")
        assert newer_other.read_ack()[0] == 1
        assert server.evicted == 1
        for client in (local, other, newer_other):
            client.close()


def test_no_hello_within_the_deadline_closes_the_connection() -> None:
    """1. hello_timeout_s=0.3; a connection sends nothing. 2. It gets AGENT-DISCONNECT 2 and
    is closed, after the deadline and well before the idle timeout."""
    with running_server(hello_timeout_s=0.3, idle_timeout_s=60) as server:
        started = time.monotonic()
        client = connect(server, hello=False)
        assert client.read_disconnect().status == 2
        assert client.is_closed_by_peer()
        assert 0.3 <= time.monotonic() - started < 5
        client.close()


def _trickle(client: SpopClient, data: bytes, interval: float, until: float) -> int:
    """Send ``data`` one byte per ``interval`` until the agent closes or ``until``; returns
    how many bytes went out."""
    sent = 0
    while sent < len(data) and time.monotonic() < until:
        try:
            client.send(data[sent : sent + 1])
        except OSError:
            break
        sent += 1
        gevent.sleep(interval)
    return sent


def _assert_closed_while_trickling(client: SpopClient, data: bytes, within_s: float) -> None:
    """Trickle ``data`` one byte per 50 ms: the agent must answer AGENT-DISCONNECT 2 within
    ``within_s``, before the last byte."""
    started = time.monotonic()
    reader = gevent.spawn(client.read_disconnect)
    sent = _trickle(client, data, 0.05, started + 10)
    assert reader.get(timeout=5).status == 2
    assert sent < len(data)
    assert time.monotonic() - started < within_s
    client.close()


def test_a_trickled_hello_does_not_extend_the_hello_deadline() -> None:
    """1. hello_timeout_s=0.5; a HELLO sent one byte every 50 ms (it would take seconds).
    2. The connection is closed at the deadline although bytes keep coming."""
    with running_server(hello_timeout_s=0.5, idle_timeout_s=60) as server:
        client = connect(server, hello=False)
        _assert_closed_while_trickling(client, handshake.encode_haproxy_hello(), within_s=5)


def test_a_trickled_frame_is_closed_at_the_frame_deadline() -> None:
    """1. frame_timeout_s=0.5, idle_timeout_s=0.8; after HELLO, a NOTIFY sent one byte every
    50 ms (each byte used to reset the idle timer). 2. The connection gets AGENT-DISCONNECT 2
    within the frame deadline plus the watchdog's interval, before the NOTIFY completes."""
    with running_server(frame_timeout_s=0.5, idle_timeout_s=0.8) as server:
        client = connect(server)
        notify = frames.encode_notify(1, 1, [message("coraza-req", path="/" + "x" * 200)])
        _assert_closed_while_trickling(client, notify, within_s=2)


def test_whole_frames_keep_a_connection_open_past_the_frame_deadline() -> None:
    """frame_timeout_s=0.2: a NOTIFY every 0.1 s for 1 s, each whole, is always answered (the
    frame clock runs only while a frame is unfinished)."""
    with running_server(frame_timeout_s=0.2, hello_timeout_s=0.2) as server:
        client = connect(server)
        for stream_id in range(1, 11):
            path_notify(client, stream_id, f"/{stream_id}")
            assert client.read_ack()[0] == stream_id
            gevent.sleep(0.1)
        client.close()


def test_frames_split_across_reads_keep_a_busy_connection_open() -> None:
    """frame_timeout_s=0.3: for 1.5 s, every write ends in the middle of a NOTIFY (the rest of
    one frame and the start of the next, as pipelined traffic arrives). Each read completes a
    frame, so the frame clock restarts at each one: every NOTIFY is answered, never closed."""
    with running_server(frame_timeout_s=0.3, hello_timeout_s=0.3) as server:
        client = connect(server)
        notifies = [
            frames.encode_notify(n, 1, [message("coraza-req", path=f"/{n}")]) for n in range(1, 16)
        ]
        stream = b"".join(notifies)
        cuts = [sum(map(len, notifies[:n])) + len(notifies[n]) // 2 for n in range(15)]
        previous = 0
        for cut in [*cuts, len(stream)]:
            client.send(stream[previous:cut])
            previous = cut
            gevent.sleep(0.1)
        assert sorted(client.read_ack()[0] for _ in notifies) == list(range(1, 16))
        client.close()
