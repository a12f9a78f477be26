"""connection.py: the handshake, negotiation, state machine, limits and error statuses. Every
codec case is fed whole, byte by byte and with trailing bytes (h11's tr())."""

from __future__ import annotations

import sys
from ipaddress import IPv4Address

import pytest

from coraza_spoa_py import spop
from coraza_spoa_py.spop import (
    NEED_DATA,
    Arg,
    Connection,
    ConnectionClosed,
    ConnectionState,
    DataType,
    HaproxyDisconnect,
    HaproxyHello,
    Message,
    Notify,
    SetVar,
    SpopError,
    StatusCode,
    UnsetVar,
    VarScope,
    frames,
    handshake,
)
from coraza_spoa_py.spop.connection import PRE_HELLO_FRAME_LIMIT, supports_our_version
from coraza_spoa_py.spop.frames import FrameType
from coraza_spoa_py.spop_native import NativeConnection
from tests.unit.spop import helpers
from tests.unit.spop.helpers import FEEDS, drain, feed_error, feed_events, ready_connection

V6_NOTIFY_EVENT = Notify(
    1,
    1,
    (
        Message(
            "coraza-req",
            (
                Arg("id", DataType.STRING, b"abc"),
                Arg("src-ip", DataType.IPV4, IPv4Address("192.0.2.10")),
            ),
        ),
    ),
)


def _hello(**kwargs: object) -> bytes:
    return handshake.encode_haproxy_hello(**kwargs)  # type: ignore[arg-type]


# ---- handshake --------------------------------------------------------------------------------


@pytest.mark.parametrize("feed", FEEDS)
def test_hello_v1_negotiates_and_queues_agent_hello(feed: str) -> None:
    """1. Feed HAProxy 3.1+'s HELLO (V1). 2. Expect one HaproxyHello event, AGENT-HELLO V5 queued,
    state READY, and (with trailing bytes) nothing else yet."""
    conn = Connection(max_frame_size=4 * 1024 * 1024)
    assert conn.state is ConnectionState.AWAIT_HELLO
    events = feed_events(conn, helpers.V1_HELLO_31, feed)
    assert events == [
        HaproxyHello(
            supported_versions="2.0",
            offered_max_frame_size=16380,
            capabilities=("pipelining",),
            engine_id=helpers.ENGINE_ID,
            healthcheck=False,
            max_frame_size=16380,
            pipelining=True,
        )
    ]
    assert conn.data_to_send() == helpers.V5_AGENT_HELLO
    assert conn.data_to_send() == b""
    assert conn.state is ConnectionState.READY
    assert (conn.max_frame_size, conn.pipelining) == (16380, True)


def test_hello_v2_answers_pipelining_but_never_async() -> None:
    conn = Connection()
    assert feed_events(conn, helpers.V2_HELLO_30, "whole")[0].capabilities == (  # type: ignore[union-attr]
        "pipelining",
        "async",
    )
    reply = frames.decode_frame(conn.data_to_send())
    assert handshake.decode_agent_hello(reply.payload).capabilities == ("pipelining",)


def test_hello_without_pipelining_answers_empty_capabilities() -> None:
    """docs/protocol.md "HELLO keys": the capabilities key is always sent, even empty."""
    conn = Connection()
    feed_events(conn, _hello(capabilities=""), "whole")
    assert conn.data_to_send() == helpers.V5_AGENT_HELLO_NO_CAPS
    assert conn.pipelining is False


@pytest.mark.parametrize(
    ("offered", "ours", "negotiated"),
    [
        (16380, 4 * 1024 * 1024, 16380),
        (1024 * 1024, 4 * 1024 * 1024, 1024 * 1024),  # above 64 KiB: no cap (coraza-spoa#194)
        (16380, 1000, 1000),
        (256, 256, 256),
        (2**32 - 1, 2**32 - 1, 2**32 - 1),
    ],
)
def test_max_frame_size_is_the_minimum_of_both(offered: int, ours: int, negotiated: int) -> None:
    conn = Connection(max_frame_size=ours)
    (event,) = feed_events(conn, _hello(max_frame_size=offered), "whole")
    assert isinstance(event, HaproxyHello)
    assert (event.offered_max_frame_size, event.max_frame_size) == (offered, negotiated)
    reply = handshake.decode_agent_hello(frames.decode_frame(conn.data_to_send()).payload)
    assert reply.max_frame_size == negotiated


@pytest.mark.parametrize("feed", FEEDS)
def test_healthcheck_hello_answers_then_closes(feed: str) -> None:
    """docs/protocol.md "Health checks": 1. V3 arrives. 2. AGENT-HELLO is queued, state CLOSING. 3.
    Whatever
    follows is dropped; EOF gives ConnectionClosed and state CLOSED."""
    conn = Connection()
    (event,) = feed_events(conn, helpers.V3_HEALTHCHECK, feed)
    assert isinstance(event, HaproxyHello)
    assert event.healthcheck is True
    assert event.engine_id is None
    assert conn.data_to_send() == helpers.V5_AGENT_HELLO_NO_CAPS
    assert conn.state is ConnectionState.CLOSING
    conn.receive_data(helpers.V6_NOTIFY)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed(0)
    assert conn.state is ConnectionState.CLOSED
    assert conn.next_event() == ConnectionClosed(0)


@pytest.mark.parametrize(
    ("hello", "status"),
    [
        (
            helpers.kv_frame(FrameType.HAPROXY_HELLO, ("max-frame-size", DataType.UINT32, 16380)),
            StatusCode.NO_VSN,
        ),
        (_hello(supported_versions="1.0, 3.0"), StatusCode.BAD_VSN),
        (_hello(supported_versions=""), StatusCode.BAD_VSN),
        (_hello(supported_versions="2,x.y"), StatusCode.BAD_VSN),
        (
            helpers.kv_frame(
                FrameType.HAPROXY_HELLO, ("supported-versions", DataType.STRING, b"2.0")
            ),
            StatusCode.NO_FRAME_SIZE,
        ),
        (_hello(max_frame_size=255), StatusCode.BAD_FRAME_SIZE),
        (
            helpers.kv_frame(
                FrameType.HAPROXY_HELLO,
                ("supported-versions", DataType.STRING, b"2.0"),
                ("max-frame-size", DataType.INT32, -1),
            ),
            StatusCode.BAD_FRAME_SIZE,
        ),
        (
            helpers.kv_frame(FrameType.HAPROXY_HELLO, ("supported-versions", DataType.INT64, 2)),
            StatusCode.INVALID,
        ),
        (frames.encode_frame(FrameType.HAPROXY_HELLO, b"", 1, 0), StatusCode.INVALID),
        (frames.encode_frame(FrameType.HAPROXY_HELLO, b"", 0, 1), StatusCode.INVALID),
    ],
    ids=[
        "no-version",
        "no-2.x",
        "empty-versions",
        "unparsable-versions",
        "no-frame-size",
        "frame-size-255",
        "frame-size-negative",
        "version-not-string",
        "hello-stream-id",
        "hello-frame-id",
    ],
)
@pytest.mark.parametrize("feed", FEEDS)
def test_bad_hello_statuses(hello: bytes, status: StatusCode, feed: str) -> None:
    error = feed_error(Connection(), hello, feed)
    assert error.status is status


def test_max_frame_size_256_is_accepted() -> None:
    """N = 256 works; N - 1 = 255 is status 9 (above)."""
    conn = Connection(max_frame_size=256)
    (event,) = feed_events(conn, _hello(max_frame_size=256), "whole")
    assert isinstance(event, HaproxyHello)
    assert event.max_frame_size == 256


@pytest.mark.parametrize(
    ("versions", "ok"),
    [("2.0", True), (" 1.0 , 2.3 ", True), ("2.999", True), ("1.0", False), ("20", False)],
)
def test_supported_versions_parsing(versions: str, ok: bool) -> None:
    assert supports_our_version(versions) is ok


@pytest.mark.parametrize("size", [255, 2**32])
def test_configured_max_frame_size_must_be_valid(size: int) -> None:
    with pytest.raises(ValueError, match="max_frame_size"):
        Connection(max_frame_size=size)


# ---- order and framing errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        helpers.V6_NOTIFY,
        helpers.V11_HAPROXY_DISCONNECT,
        helpers.V5_AGENT_HELLO,
        frames.encode_frame(50, b""),
    ],
    ids=["notify", "disconnect", "agent-hello", "unknown"],
)
@pytest.mark.parametrize("feed", FEEDS)
def test_anything_before_hello_is_invalid(frame: bytes, feed: str) -> None:
    assert feed_error(Connection(), frame, feed).status is StatusCode.INVALID


@pytest.mark.parametrize("feed", FEEDS)
def test_second_hello_is_invalid(feed: str) -> None:
    assert feed_error(ready_connection(), helpers.V4_HELLO_MIN, feed).status is StatusCode.INVALID


@pytest.mark.parametrize(
    "frame",
    [
        frames.encode_frame(FrameType.NOTIFY, b"", 1, 1, flags=0),
        frames.encode_frame(FrameType.NOTIFY, b"", 1, 1, flags=frames.FrameFlags.ABORT),
        frames.encode_frame(FrameType.UNSET, b"", 1, 1),
        frames.encode_frame(FrameType.HAPROXY_HELLO, b"", flags=0),
    ],
    ids=["notify-no-fin", "notify-abort-only", "type-0", "hello-no-fin"],
)
@pytest.mark.parametrize("ready", [True, False])
def test_fragmentation_is_status_10(frame: bytes, ready: bool) -> None:
    conn = ready_connection() if ready else Connection()
    assert feed_error(conn, frame, "whole").status is StatusCode.FRAG_NOT_SUPPORTED


@pytest.mark.parametrize("ready", [True, False])
@pytest.mark.parametrize("length", [0, 6])
def test_length_below_seven_is_invalid(length: int, ready: bool) -> None:
    """Judged from the prefix alone: no payload byte is needed."""
    conn = ready_connection() if ready else Connection()
    conn.receive_data(length.to_bytes(4, "big"))
    with pytest.raises(SpopError) as info:
        conn.next_event()
    assert info.value.status is StatusCode.INVALID


def test_negotiated_frame_size_limit_at_n_and_n_plus_one() -> None:
    """N = the negotiated size is accepted; N + 1 is status 3 from the 4-byte prefix, before
    any payload is buffered."""
    conn = ready_connection(max_frame_size=1000)
    # header 7 + name 2 + NB-ARGS 1 + arg name 2 + type 1 + 2-byte length = 15
    message = Message("m", (Arg("a", DataType.BINARY, b"x" * 985),))
    data = frames.encode_notify(1, 1, [message])
    assert len(data) == 4 + 1000
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, Notify)
    conn.receive_data((1001).to_bytes(4, "big"))
    with pytest.raises(SpopError) as info:
        conn.next_event()
    assert info.value.status is StatusCode.TOO_BIG


def test_pre_hello_limit_at_n_and_n_plus_one() -> None:
    """Before the HELLO the bound is 64 KiB, whatever our configured cap."""
    big = frames.encode_frame(FrameType.HAPROXY_HELLO, b"\x00\x00" * 40000)
    conn = Connection(max_frame_size=4 * 1024 * 1024)
    conn.receive_data(PRE_HELLO_FRAME_LIMIT.to_bytes(4, "big"))
    assert conn.next_event() is NEED_DATA
    conn = Connection(max_frame_size=4 * 1024 * 1024)
    conn.receive_data(big[:4])
    with pytest.raises(SpopError) as info:
        conn.next_event()
    assert info.value.status is StatusCode.TOO_BIG


def test_frame_larger_than_64k_after_negotiation() -> None:
    conn = ready_connection(max_frame_size=1 << 20, hello=_hello(max_frame_size=1 << 20))
    message = Message("m", (Arg("body", DataType.BINARY, b"b" * 200_000),))
    assert feed_events(conn, frames.encode_notify(7, 1, [message]), "whole") == [
        Notify(7, 1, (message,))
    ]


def test_error_state_is_sticky() -> None:
    """After a SpopError every next_event raises it again; receive_data is harmless."""
    conn = Connection()
    error = feed_error(conn, helpers.V6_NOTIFY, "whole")
    conn.receive_data(helpers.V4_HELLO_MIN)
    with pytest.raises(SpopError) as again:
        conn.next_event()
    assert again.value is error


def test_truncated_typed_data_inside_notify_is_invalid() -> None:
    frame = frames.encode_frame(FrameType.NOTIFY, b"\x01m\x01\x01a\x0a", 1, 1)
    assert feed_error(ready_connection(), frame, "whole").status is StatusCode.INVALID


# ---- READY: NOTIFY, DISCONNECT, unknown frames ---------------------------------------------------


@pytest.mark.parametrize("feed", FEEDS)
def test_notify_v6(feed: str) -> None:
    assert feed_events(ready_connection(), helpers.V6_NOTIFY, feed) == [V6_NOTIFY_EVENT]


@pytest.mark.parametrize("feed", FEEDS)
def test_several_frames_in_one_chunk(feed: str) -> None:
    """Handshake, two NOTIFYs (3.0 ids: stream-id 300, and stream-id 0, which is valid in
    NOTIFY, docs/protocol.md "Stream-id 0 in a NOTIFY") and an empty NOTIFY, all in one read."""
    data = (
        helpers.V4_HELLO_MIN
        + helpers.V6_NOTIFY_30
        + frames.encode_notify(0, 1, V6_NOTIFY_EVENT.messages)
        + frames.encode_notify(9, 1, [])
    )
    events = feed_events(Connection(), data, feed)
    assert [type(e) for e in events] == [HaproxyHello, Notify, Notify, Notify]
    assert events[1] == Notify(300, 2, V6_NOTIFY_EVENT.messages)
    assert events[2] == Notify(0, 1, V6_NOTIFY_EVENT.messages)
    assert events[3] == Notify(9, 1, ())


@pytest.mark.parametrize("codec", [Connection, NativeConnection])
def test_bytes_parsed_to_the_end_are_not_held(codec: type[Connection]) -> None:
    """1. A read holding two whole NOTIFYs; both events taken, then NEED_DATA. Result: the
    codec holds no reference to that read (an idle connection keeps none of its last read,
    docs/performance.md change 51). 2. A read ending inside a frame: that one is held."""
    conn = ready_connection() if codec is Connection else _ready(NativeConnection())
    chunk = frames.encode_notify(1, 1, V6_NOTIFY_EVENT.messages) * 2
    held_by_us = sys.getrefcount(chunk)
    conn.receive_data(chunk)
    assert [type(e) for e in drain(conn)] == [Notify, Notify]
    assert sys.getrefcount(chunk) == held_by_us
    assert conn.pending_bytes == 0
    partial = frames.encode_notify(3, 1, V6_NOTIFY_EVENT.messages)[:-1]
    conn.receive_data(partial)
    assert conn.next_event() is spop.NEED_DATA
    assert sys.getrefcount(partial) > held_by_us
    assert conn.pending_bytes == len(partial)


def _ready(conn: Connection) -> Connection:
    conn.receive_data(helpers.V4_HELLO_MIN)
    assert isinstance(conn.next_event(), HaproxyHello)
    conn.data_to_send()
    return conn


@pytest.mark.parametrize("feed", FEEDS)
def test_haproxy_disconnect_answers_and_closes(feed: str) -> None:
    """docs/protocol.md "Disconnect": V11 gives HaproxyDisconnect, AGENT-DISCONNECT V10 queued, then
    CLOSING."""
    conn = ready_connection()
    events = feed_events(conn, helpers.V11_HAPROXY_DISCONNECT, feed)
    assert events == [HaproxyDisconnect(2, b"a timeout occurred")]
    assert conn.data_to_send() == helpers.V10_AGENT_DISCONNECT
    assert conn.state is ConnectionState.CLOSING


def test_disconnect_with_ids_is_invalid() -> None:
    frame = frames.encode_frame(FrameType.HAPROXY_DISCONNECT, b"", 1, 1)
    assert feed_error(ready_connection(), frame, "whole").status is StatusCode.INVALID


@pytest.mark.parametrize(
    "frame_type", [FrameType.AGENT_HELLO, FrameType.AGENT_DISCONNECT, FrameType.ACK]
)
def test_agent_frame_types_from_haproxy_are_invalid(frame_type: FrameType) -> None:
    frame = frames.encode_frame(frame_type, b"")
    assert feed_error(ready_connection(), frame, "whole").status is StatusCode.INVALID


@pytest.mark.parametrize("feed", FEEDS)
def test_unknown_frame_type_after_hello_is_skipped(feed: str) -> None:
    """docs/protocol.md: forward compatible (docs/protocol.md "Unknown frame types"); the next frame
    still parses."""
    data = (
        frames.encode_frame(4, b"future", 1, 1) + frames.encode_frame(200, b"") + helpers.V6_NOTIFY
    )
    assert feed_events(ready_connection(), data, feed) == [V6_NOTIFY_EVENT]


# ---- EOF -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ready", [True, False])
def test_eof_at_a_frame_boundary(ready: bool) -> None:
    conn = ready_connection() if ready else Connection()
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed(0)
    assert conn.state is ConnectionState.CLOSED


def test_eof_after_frames_still_delivers_them() -> None:
    conn = ready_connection()
    conn.receive_data(helpers.V6_NOTIFY)
    conn.receive_data(b"")
    assert helpers.drain(conn) == [V6_NOTIFY_EVENT, ConnectionClosed(0)]


@pytest.mark.parametrize("cut", [1, 4, 10, len(helpers.V6_NOTIFY) - 1])
def test_eof_mid_frame_is_a_quiet_close(cut: int) -> None:
    """docs/protocol.md "Disconnect": a RST or EOF mid-frame is no protocol error; the dropped byte
    count is
    reported."""
    conn = ready_connection()
    conn.receive_data(helpers.V6_NOTIFY[:cut])
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed(cut)


def test_receive_after_eof_is_a_caller_bug() -> None:
    conn = Connection()
    conn.receive_data(b"")
    with pytest.raises(RuntimeError, match="after EOF"):
        conn.receive_data(b"x")


def test_buffer_accepts_bytearray_and_memoryview_chunks() -> None:
    """The caller may reuse its receive buffer: the codec copies what it keeps."""
    conn = ready_connection()
    scratch = bytearray(helpers.V6_NOTIFY[:20])
    conn.receive_data(memoryview(scratch))
    scratch[:] = b"\xff" * 20
    conn.receive_data(bytearray(helpers.V6_NOTIFY[20:30]))
    conn.receive_data(helpers.V6_NOTIFY[30:] + helpers.V6_NOTIFY)
    assert helpers.drain(conn) == [V6_NOTIFY_EVENT, V6_NOTIFY_EVENT]


# ---- sending ------------------------------------------------------------------------------


def test_send_ack_v7_and_never_empty() -> None:
    conn = ready_connection()
    actions: list[SetVar | UnsetVar] = [
        SetVar(VarScope.TRANSACTION, "fail", 1, DataType.INT32),
        UnsetVar(VarScope.TRANSACTION, "error"),
    ]
    assert conn.send_ack(1, 1, actions) == helpers.V7_ACK
    empty = frames.decode_frame(conn.send_ack(1, 1, []))
    assert frames.decode_actions(empty.payload) == (frames.NOOP_ACTION,)
    assert conn.state is ConnectionState.READY


def test_send_ack_larger_than_max_frame_size_is_refused() -> None:
    """N = the negotiated size is sent; N + 1 raises TOO_BIG and leaves the connection READY."""
    conn = ready_connection(max_frame_size=300)
    # overhead with a two-byte length varint (values of 240..2287 bytes)
    fixed = len(conn.send_ack(1, 1, [SetVar(VarScope.TRANSACTION, "d", b"x" * 240)])) - 4 - 240
    fits = conn.send_ack(1, 1, [SetVar(VarScope.TRANSACTION, "d", b"x" * (300 - fixed))])
    assert len(fits) == 304
    with pytest.raises(SpopError) as info:
        conn.send_ack(1, 1, [SetVar(VarScope.TRANSACTION, "d", b"x" * (301 - fixed))])
    assert info.value.status is StatusCode.TOO_BIG
    assert conn.state is ConnectionState.READY


def test_send_ack_with_unencodable_action_raises_spop_error() -> None:
    conn = ready_connection()
    with pytest.raises(SpopError) as info:
        conn.send_ack(1, 1, [SetVar(VarScope.TRANSACTION, "bad name", 1)])
    assert info.value.status is StatusCode.UNKNOWN
    assert conn.state is ConnectionState.READY


def test_send_disconnect() -> None:
    conn = ready_connection()
    assert conn.send_disconnect(StatusCode.NORMAL, "normal") == helpers.V10_AGENT_DISCONNECT
    assert conn.state is ConnectionState.CLOSING
    frame = frames.decode_frame(conn.send_disconnect(StatusCode.TOO_BIG))
    assert handshake.decode_disconnect(frame.payload) == handshake.DisconnectFrame(
        3, b"frame is too big"
    )
    frame = frames.decode_frame(conn.send_disconnect(4242))
    assert handshake.decode_disconnect(frame.payload) == handshake.DisconnectFrame(4242, b"")


def test_send_disconnect_after_error_keeps_error_state() -> None:
    conn = Connection()
    error = feed_error(conn, helpers.V6_NOTIFY, "whole")
    data = conn.send_disconnect(error.status, error.detail)
    assert handshake.decode_disconnect(frames.decode_frame(data).payload).status == 4
    assert conn.state is ConnectionState.ERROR


def test_public_names() -> None:
    assert repr(spop.NEED_DATA) == "NEED_DATA"
    assert {"Connection", "ConnectionState", "NEED_DATA", "SpopError"} <= set(spop.__all__)


def test_pending_bytes_counts_the_unfinished_frame() -> None:
    """1. Feed HAProxy's HELLO in two parts, then whole. 2. Expect ``pending_bytes`` to be the
    part received while the frame is unfinished, and 0 once the frame is consumed."""
    conn = Connection()
    assert conn.pending_bytes == 0
    conn.receive_data(helpers.V1_HELLO_31[:10])
    assert conn.next_event() is NEED_DATA
    assert conn.pending_bytes == 10
    conn.receive_data(helpers.V1_HELLO_31[10:])
    assert isinstance(conn.next_event(), HaproxyHello)
    assert conn.pending_bytes == 0
