"""Shared test helpers for the SPOP codec: the docs/protocol.md "Test vectors" vectors, a HELLO'd
connection, and
h11's three feeding strategies (whole, byte by byte, with trailing bytes)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from coraza_spoa_py import spop
from coraza_spoa_py.spop import frames, wire

# ---- docs/protocol.md "Test vectors" hex vectors (wire bytes, length prefix included)
# ----------------------------
ENGINE_ID = "3f1c2a5e-8b9d-4e7f-a012-3456789abcde"
V1_HELLO_31 = bytes.fromhex(
    "0000007b0100000001000012737570706f727465642d76657273696f6e730803322e300e6d61782d6672616d65"
    "2d73697a6503fcf0060c6361706162696c6974696573080a706970656c696e696e6709656e67696e652d696408"
    "2433663163326135652d386239642d346537662d613031322d333435363738396162636465"
)
V2_HELLO_30 = bytes.fromhex(
    "000000810100000001000012737570706f727465642d76657273696f6e730803322e300e6d61782d6672616d65"
    "2d73697a6503fcf0060c6361706162696c69746965730810706970656c696e696e672c6173796e6309656e6769"
    "6e652d6964082433663163326135652d386239642d346537662d613031322d333435363738396162636465"
)
V3_HEALTHCHECK = bytes.fromhex(
    "0000004e0100000001000012737570706f727465642d76657273696f6e730803322e300e6d61782d6672616d65"
    "2d73697a6503fcf0060c6361706162696c697469657308000b6865616c7468636865636b11"
)
V4_HELLO_MIN = bytes.fromhex(
    "0000004b0100000001000012737570706f727465642d76657273696f6e730803322e300e6d61782d6672616d65"
    "2d73697a6503fcf0060c6361706162696c6974696573080a706970656c696e696e67"
)
V5_AGENT_HELLO = bytes.fromhex(
    "00000040650000000100000776657273696f6e0803322e300e6d61782d6672616d652d73697a6503fcf0060c63"
    "61706162696c6974696573080a706970656c696e696e67"
)
V5_AGENT_HELLO_NO_CAPS = bytes.fromhex(
    "00000036650000000100000776657273696f6e0803322e300e6d61782d6672616d652d73697a6503fcf0060c63"
    "61706162696c69746965730800"
)
V6_NOTIFY = bytes.fromhex(
    "00000027030000000101010a636f72617a612d726571020269640803616263067372632d697006c000020a"
)
V6_NOTIFY_30 = bytes.fromhex(
    "000000280300000001fc03020a636f72617a612d726571020269640803616263067372632d697006c000020a"
)
V7_ACK = bytes.fromhex("0000001a67000000010101010302046661696c0201020202056572726f72")
V7_ACK_INT64 = bytes.fromhex("0000001a67000000010101010302046661696c0401020202056572726f72")
V7_ACK_30 = bytes.fromhex("0000001b6700000001fc0302010302046661696c0201020202056572726f72")
V8_EMPTY_ACK = bytes.fromhex("0000000767000000010101")
V9_ACK_MIXED = bytes.fromhex(
    "00000037670000000103010103020573636f726504fbf0fefefefefefefe0e01030207626c6f636b656411010302"
    "0472756c650806393432313030"
)
V10_AGENT_DISCONNECT = bytes.fromhex(
    "00000025660000000100000b7374617475732d636f64650300076d65737361676508066e6f726d616c"
)
V11_HAPROXY_DISCONNECT = bytes.fromhex(
    "00000031020000000100000b7374617475732d636f64650302076d6573736167650812612074696d656f7574206f"
    "63637572726564"
)
V12_HDRS_BIN = bytes.fromhex(
    "092704686f73740b6578616d706c652e636f6d0a757365722d6167656e74086375726c2f382e300000"
)
V12_HDRS = bytes.fromhex(
    "082b686f73743a206578616d706c652e636f6d0d0a757365722d6167656e743a206375726c2f382e300d0a0d0a"
)
V12_IPV6 = bytes.fromhex("0720010db8000000000000000000000001")

# A frame the codec has no use for, to show that trailing bytes stay buffered: the first bytes
# of another NOTIFY (a length prefix and part of the header).
TRAILING = V6_NOTIFY[:9]


def ready_connection(max_frame_size: int = 16380, hello: bytes = V4_HELLO_MIN) -> spop.Connection:
    conn = spop.Connection(max_frame_size=max_frame_size)
    conn.receive_data(hello)
    event = conn.next_event()
    assert isinstance(event, spop.HaproxyHello)
    conn.data_to_send()
    assert conn.state is spop.ConnectionState.READY
    return conn


def drain(conn: spop.Connection) -> list[spop.Event]:
    """Every event available now, stopping at NEED_DATA or after ConnectionClosed."""
    events: list[spop.Event] = []
    while True:
        event = conn.next_event()
        if event is spop.NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, spop.ConnectionClosed):
            return events


FEEDS = ("whole", "byte_by_byte", "trailing")


def chunks(data: bytes, feed: str) -> Iterator[bytes]:
    if feed == "byte_by_byte":
        yield from (data[i : i + 1] for i in range(len(data)))
    elif feed == "trailing":
        yield data + TRAILING
    else:
        yield data


def feed_events(conn: spop.Connection, data: bytes, feed: str) -> list[spop.Event]:
    """h11's tr(): feed ``data`` one way, collecting the events after each chunk. With
    trailing bytes, they must stay buffered: no event, and no error, come from them."""
    events: list[spop.Event] = []
    for chunk in chunks(data, feed):
        conn.receive_data(chunk)
        events += drain(conn)
    return events


def feed_error(conn: spop.Connection, data: bytes, feed: str) -> spop.SpopError:
    """Feed ``data`` one way and return the SpopError it must raise."""
    with pytest.raises(spop.SpopError) as info:
        for chunk in chunks(data, feed):
            conn.receive_data(chunk)
            drain(conn)
    assert conn.state is spop.ConnectionState.ERROR
    return info.value


def kv_frame(frame_type: int, *items: tuple[str, spop.DataType, object]) -> bytes:
    payload = wire.encode_kv_list(
        (key, spop.TypedValue(data_type, value))  # type: ignore[arg-type]
        for key, data_type, value in items
    )
    return frames.encode_frame(frame_type, payload)
