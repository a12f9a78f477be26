"""AgentServer in-process: handshake, NOTIFY/ACK, pipelining, many connections, listeners."""

from __future__ import annotations

import errno
import socket
import struct
import time
from pathlib import Path

import gevent
import pytest

from coraza_spoa_py import spop
from coraza_spoa_py.server import ENGINE_FAILURE_ERROR, AgentServer
from coraza_spoa_py.settings import BindAddress
from coraza_spoa_py.spop import frames, handshake
from tests.support.inprocess import GatedHandler, connect, path_notify, running_server
from tests.support.spop_client import actions_by_name, message

pytestmark = pytest.mark.integration


def test_handshake_negotiates_version_frame_size_and_pipelining() -> None:
    """1. HELLO offering 16380 and pipelining to a server capped at 8192.
    2. AGENT-HELLO: version 2.0, max-frame-size = min(offer, cap) = 8192, pipelining.
    3. A HELLO without pipelining gets capabilities "" (docs/protocol.md "HELLO keys")."""
    with running_server(max_frame_size=8192) as server:
        with connect(server, hello=False) as client:
            hello = client.hello()
            assert (hello.version, hello.max_frame_size, hello.capabilities) == (
                "2.0",
                8192,
                ("pipelining",),
            )
        with connect(server, hello=False) as client:
            hello = client.hello(
                handshake.encode_haproxy_hello(max_frame_size=4000, capabilities="")
            )
            assert (hello.max_frame_size, hello.capabilities) == (4000, ())


def test_notify_is_acked_with_the_handler_actions_and_the_same_ids() -> None:
    """1. NOTIFY sid=300 fid=2 (≤3.0 style) with two messages.
    2. The handler receives both messages and a monotonic received_at from the read.
    3. The ACK echoes sid/fid and carries the handler's actions in order."""
    calls: list[tuple[tuple[spop.Message, ...], float]] = []

    def handler(messages, received_at):
        calls.append((messages, received_at))
        return [
            spop.SetVar(spop.VarScope.TRANSACTION, "fail", 1),
            spop.UnsetVar(spop.VarScope.TRANSACTION, "error"),
        ]

    with running_server(handler) as server, connect(server) as client:
        before = time.monotonic()
        client.notify(300, 2, [message("coraza-req", path="/a"), message("coraza-res", status=200)])
        sid, fid, actions = client.read_ack()
        assert (sid, fid) == (300, 2)
        assert actions == (
            spop.SetVar(spop.VarScope.TRANSACTION, "fail", 1, spop.DataType.INT64),
            spop.UnsetVar(spop.VarScope.TRANSACTION, "error"),
        )
        [(messages, received_at)] = calls
        assert [m.name for m in messages] == ["coraza-req", "coraza-res"]
        assert messages[0].args == (spop.Arg("path", spop.DataType.STRING, b"/a"),)
        assert before <= received_at <= time.monotonic()


def test_empty_notify_and_empty_actions_still_get_a_non_empty_ack() -> None:
    """An empty NOTIFY payload (3.1.0–3.3-dev6) and a handler returning [] are ACKed with the
    codec's harmless UNSET-VAR, never an empty ACK (docs/protocol.md "Every NOTIFY gets a non-empty
    ACK")."""
    with running_server(lambda messages, received_at: []) as server, connect(server) as client:
        client.notify(1, 1, [])
        assert client.read_ack() == (1, 1, (frames.NOOP_ACTION,))


def test_handler_exception_is_answered_with_error_1003_and_logged(log_records) -> None:
    """1. The handler raises on the first NOTIFY.
    2. The ACK sets txn error = 1003 (never silence) and an ERROR record is logged.
    3. The same connection keeps serving the next NOTIFY."""

    def handler(messages, received_at):
        if messages[0].args[0].value == b"/boom":
            raise RuntimeError("boom")
        return [spop.SetVar(spop.VarScope.TRANSACTION, "fail", 0)]

    with running_server(handler) as server, connect(server) as client:
        path_notify(client, 1, "/boom")
        sid, _, actions = client.read_ack()
        assert sid == 1
        assert actions_by_name(actions) == {"error": ENGINE_FAILURE_ERROR}
        assert [r["message"] for r in log_records if r["level"] == "ERROR"] == ["handler failed"]
        path_notify(client, 3, "/fine")
        assert actions_by_name(client.read_ack()[2]) == {"fail": 0}


@pytest.mark.parametrize(
    "bad_action",
    [
        spop.SetVar(spop.VarScope.TRANSACTION, "bad name!", 1),  # not [A-Za-z0-9_.]
        spop.SetVar(spop.VarScope.TRANSACTION, "big", b"x" * 20_000),  # > max-frame-size
    ],
    ids=["invalid-name", "above-max-frame-size"],
)
def test_an_ack_the_codec_refuses_becomes_error_1003(bad_action, log_records) -> None:
    """The handler returns an action that cannot be sent (HAProxy would ignore it or drop the
    connection): the NOTIFY is still answered, with error = 1003, and the reason is logged."""
    with running_server(lambda m, t: [bad_action]) as server, connect(server) as client:
        path_notify(client, 1, "/x")
        assert client.read_ack() == (
            1,
            1,
            (
                spop.SetVar(
                    spop.VarScope.TRANSACTION, "error", ENGINE_FAILURE_ERROR, spop.DataType.INT64
                ),
            ),
        )
    errors = [r["message"] for r in log_records if r["level"] == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("cannot encode ACK")


def test_pipelined_notifies_run_concurrently_and_are_acked_in_completion_order() -> None:
    """1. Three NOTIFYs in ONE write (sid 1, 3, 5): all three handlers start (concurrency).
    2. The test finishes them in the order 5, 1, 3.
    3. ACKs arrive in that completion order, each with its own ids (docs/protocol.md "Stream and
    frame ids by version")."""
    handler = GatedHandler()
    with running_server(handler) as server, connect(server) as client:
        client.send(
            b"".join(
                frames.encode_notify(sid, 1, [message("coraza-req", path=f"/{sid}")])
                for sid in (1, 3, 5)
            )
        )
        handler.wait_started(3)
        received = []
        for sid in (5, 1, 3):
            handler.open(f"/{sid}")
            ack_sid, _, actions = client.read_ack()
            received.append((ack_sid, actions_by_name(actions)["path"]))
        assert received == [(5, b"/5"), (1, b"/1"), (3, b"/3")]


def test_acks_completed_together_leave_in_one_write(monkeypatch) -> None:
    """1. 20 NOTIFYs in one write, answered by an instant handler.
    2. All 20 ACKs arrive, each whole and with its own ids.
    3. The server wrote them in a few sends, not 20 (one flush per batch that completes in
       the same loop turn; frames are never split)."""
    from coraza_spoa_py import workers

    sent: list[bytes] = []
    original_send = workers.FrameWriter._send

    def counting_send(self, data, *, may_wait):
        if data and not self.closed:
            sent.append(data)
        return original_send(self, data, may_wait=may_wait)

    monkeypatch.setattr(workers.FrameWriter, "_send", counting_send)
    with running_server() as server, connect(server) as client:
        sent.clear()  # the AGENT-HELLO
        sids = list(range(1, 41, 2))
        client.send(
            b"".join(frames.encode_notify(sid, 1, [message("m", path=f"/{sid}")]) for sid in sids)
        )
        acks = [client.read_ack() for _ in sids]
        assert sorted(sid for sid, _, _ in acks) == sids
        assert all(actions_by_name(a)["path"] == f"/{sid}".encode() for sid, _, a in acks)
        assert 1 <= len(sent) <= 3
        assert sum(len(chunk) for chunk in sent) == sum(
            len(frames.encode_ack(sid, 1, a)) for sid, _, a in acks
        )


def test_inflight_bound_stops_reading_until_a_slot_frees() -> None:
    """1. max_inflight_per_connection=2; four NOTIFYs sent at once.
    2. Only two handlers start; the other two wait unread (back-pressure).
    3. Finishing one lets exactly one more start; in the end all four are ACKed."""
    handler = GatedHandler()
    with running_server(handler, max_inflight_per_connection=2) as server, connect(server) as c:
        for sid in (1, 3, 5, 7):
            path_notify(c, sid, f"/{sid}")
        handler.wait_started(2)
        gevent.sleep(0.1)
        assert handler.started == [b"/1", b"/3"]
        handler.open("/1")
        assert c.read_ack()[0] == 1
        handler.wait_started(3)
        assert handler.started == [b"/1", b"/3", b"/5"]
        for sid in (3, 5, 7):
            handler.open(f"/{sid}")
        assert sorted(c.read_ack()[0] for _ in range(3)) == [3, 5, 7]


def test_many_connections_are_served_at_once() -> None:
    """50 connections, each HELLO + 4 pipelined NOTIFYs: every ACK comes back on the
    connection that sent the NOTIFY (the path echo proves it)."""
    with running_server() as server:

        def one_client(index: int) -> list[bytes]:
            with connect(server) as client:
                for sid in (1, 3, 5, 7):
                    path_notify(client, sid, f"/c{index}/{sid}")
                acks = [client.read_ack() for _ in range(4)]
                return sorted(actions_by_name(a)["path"] for _, _, a in acks)

        jobs = [gevent.spawn(one_client, i) for i in range(50)]
        gevent.joinall(jobs, timeout=20, raise_error=True)
        assert [job.value for job in jobs] == [
            sorted(f"/c{i}/{sid}".encode() for sid in (1, 3, 5, 7)) for i in range(50)
        ]


def test_max_connections_closes_the_longest_idle_to_serve_a_new_one() -> None:
    """1. max_connections=2: two connections said HELLO, the first one's NOTIFY is answered
    after the second's, so the second is idle the longest. 2. A third connects: it is served
    at once. 3. The second gets AGENT-DISCONNECT 0 and is closed; the first stays usable."""
    with running_server(max_connections=2) as server:
        first, second = connect(server), connect(server)
        path_notify(second, 1, "/second")
        assert second.read_ack()[0] == 1
        path_notify(first, 1, "/first")
        assert first.read_ack()[0] == 1
        third = connect(server)  # connect() fails unless AGENT-HELLO comes back
        assert second.read_disconnect().status == 0
        assert second.is_closed_by_peer()
        path_notify(first, 2, "/first-again")
        assert first.read_ack()[0] == 2
        assert (server.connection_count, server.evicted, server.refused) == (2, 1, 0)
        for client in (first, second, third):
            client.close()


def test_health_check_hello_gets_agent_hello_then_close() -> None:
    """`option spop-check` (docs/protocol.md "Health checks", vector V3): AGENT-HELLO with
    capabilities, then the
    agent closes the connection."""
    with running_server() as server, connect(server, hello=False) as client:
        client.send(handshake.encode_haproxy_hello(capabilities="", healthcheck=True))
        hello = handshake.decode_agent_hello(client.read_frame().payload)
        assert (hello.version, hello.capabilities) == ("2.0", ())
        assert client.is_closed_by_peer()


def test_haproxy_disconnect_is_answered_and_inflight_acks_are_dropped(log_records) -> None:
    """1. A NOTIFY is in the handler when HAProxy sends HAPROXY-DISCONNECT 2 (idle timeout).
    2. The agent answers AGENT-DISCONNECT and closes; the late ACK is never written.
    3. Status 2 is routine: logged at debug, nothing at warning or above."""
    handler = GatedHandler()
    with running_server(handler) as server, connect(server) as client:
        path_notify(client, 1, "/slow")
        handler.wait_started(1)
        client.send(handshake.encode_haproxy_disconnect(2, "a timeout occurred"))
        assert client.read_disconnect().status == 0
        handler.open("/slow")
        assert client.is_closed_by_peer()
        gevent.sleep(0.05)
        assert handler.finished == [b"/slow"]
    assert [r for r in log_records if r["level"] in ("WARNING", "ERROR")] == []


def test_peer_reset_is_a_quiet_close(log_records) -> None:
    """HAProxy 3.1+ drops idle connections with RST (docs/protocol.md "Disconnect"): the server
    closes its side
    and logs nothing at warning or above; other connections are unaffected."""
    with running_server() as server:
        victim, other = connect(server), connect(server)
        victim.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        victim.close()  # RST
        path_notify(other, 1, "/still-here")
        assert actions_by_name(other.read_ack()[2]) == {"path": b"/still-here"}
        other.close()
        gevent.sleep(0.05)
    assert [r for r in log_records if r["level"] in ("WARNING", "ERROR")] == []


def test_unix_socket_listener(tmp_path: Path) -> None:
    """bind unix://<path>: served like TCP; the socket file is removed at stop."""
    path = tmp_path / "agent.sock"
    with running_server(bind=BindAddress(kind="unix", path=str(path))) as server:
        assert server.address == BindAddress(kind="unix", path=str(path))
        with connect(server) as client:
            path_notify(client, 1, "/unix")
            assert actions_by_name(client.read_ack()[2]) == {"path": b"/unix"}
    assert not path.exists()


def test_unix_socket_of_a_live_agent_is_not_stolen_but_a_stale_one_is_replaced(
    tmp_path: Path,
) -> None:
    """1. A second server on the unix path of a running one fails with EADDRINUSE.
    2. A socket file nobody listens on (a crashed agent's) is replaced at start.
    3. A regular file at the path is never deleted: binding fails."""
    path = tmp_path / "agent.sock"
    unix = BindAddress(kind="unix", path=str(path))
    with running_server(bind=unix):
        with pytest.raises(OSError) as excinfo, running_server(bind=unix):
            pass
        assert excinfo.value.errno == errno.EADDRINUSE
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    assert path.exists()
    with running_server(bind=unix) as server, connect(server) as client:
        path_notify(client, 1, "/replaced")
        assert actions_by_name(client.read_ack()[2]) == {"path": b"/replaced"}
    regular = tmp_path / "not-a-socket"
    regular.write_text("keep me")
    with pytest.raises(OSError), running_server(bind=BindAddress(kind="unix", path=str(regular))):
        pass
    assert regular.read_text() == "keep me"


def test_max_frame_size_below_256_is_refused_at_construction() -> None:
    """The cap is checked when the server is built, not at the first connection."""
    with pytest.raises(ValueError):
        AgentServer(BindAddress(kind="tcp", host="127.0.0.1"), lambda m, t: [], max_frame_size=255)


def test_ipv6_listener() -> None:
    """bind [::1]:0: the bound address is IPv6 with a real port, and it serves SPOP."""
    with running_server(bind=BindAddress(kind="tcp", host="::1", port=0)) as server:
        assert server.address.host == "::1"
        assert server.address.port > 0
        assert str(server.address) == f"[::1]:{server.address.port}"
        with connect(server) as client:
            path_notify(client, 1, "/v6")
            assert actions_by_name(client.read_ack()[2]) == {"path": b"/v6"}
