"""handshake.py: HELLO and DISCONNECT both ways; vectors V1-V5, V10, V11 byte-exact, key
rules (unknown and duplicate keys, wrong types, missing keys) and round trips."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coraza_spoa_py.spop import DataType, SpopError, StatusCode, TypedValue, frames, handshake, wire
from coraza_spoa_py.spop.frames import FrameType
from tests.unit.spop import helpers
from tests.unit.spop.test_wire import names, typed_values

_text = st.text(alphabet=st.characters(max_codepoint=127), max_size=40)


@pytest.mark.parametrize(
    ("wire_bytes", "capabilities", "engine_id", "healthcheck"),
    [
        (helpers.V1_HELLO_31, "pipelining", helpers.ENGINE_ID, False),
        (helpers.V2_HELLO_30, "pipelining,async", helpers.ENGINE_ID, False),
        (helpers.V3_HEALTHCHECK, "", None, True),
        (helpers.V4_HELLO_MIN, "pipelining", None, False),
    ],
    ids=["V1", "V2", "V3", "V4"],
)
def test_haproxy_hello_vectors(
    wire_bytes: bytes, capabilities: str, engine_id: str | None, healthcheck: bool
) -> None:
    frame = frames.decode_frame(wire_bytes)
    assert (frame.type, frame.flags, frame.stream_id, frame.frame_id) == (1, 1, 0, 0)
    hello = handshake.decode_haproxy_hello(frame.payload)
    assert hello == handshake.HaproxyHelloFrame(
        supported_versions="2.0",
        max_frame_size=16380,
        capabilities=tuple(c for c in capabilities.split(",") if c),
        engine_id=engine_id,
        healthcheck=healthcheck,
    )
    again = handshake.encode_haproxy_hello(
        capabilities=capabilities, engine_id=engine_id, healthcheck=healthcheck
    )
    assert again == wire_bytes


@pytest.mark.parametrize(
    ("wire_bytes", "pipelining"),
    [(helpers.V5_AGENT_HELLO, True), (helpers.V5_AGENT_HELLO_NO_CAPS, False)],
    ids=["V5", "V5-no-capabilities"],
)
def test_agent_hello_vectors(wire_bytes: bytes, pipelining: bool) -> None:
    assert handshake.encode_agent_hello(16380, pipelining) == wire_bytes
    frame = frames.decode_frame(wire_bytes)
    assert frame.type == FrameType.AGENT_HELLO
    hello = handshake.decode_agent_hello(frame.payload)
    assert hello == handshake.AgentHelloFrame("2.0", 16380, ("pipelining",) if pipelining else ())


@pytest.mark.parametrize(
    ("wire_bytes", "frame_type", "status", "message", "encode"),
    [
        (
            helpers.V10_AGENT_DISCONNECT,
            FrameType.AGENT_DISCONNECT,
            0,
            b"normal",
            handshake.encode_agent_disconnect,
        ),
        (
            helpers.V11_HAPROXY_DISCONNECT,
            FrameType.HAPROXY_DISCONNECT,
            2,
            b"a timeout occurred",
            handshake.encode_haproxy_disconnect,
        ),
    ],
    ids=["V10", "V11"],
)
def test_disconnect_vectors(
    wire_bytes: bytes, frame_type: FrameType, status: int, message: bytes, encode: object
) -> None:
    frame = frames.decode_frame(wire_bytes)
    assert frame.type == frame_type
    assert handshake.decode_disconnect(frame.payload) == handshake.DisconnectFrame(status, message)
    assert encode(status, message) == wire_bytes  # type: ignore[operator]
    assert encode(status, message.decode()) == wire_bytes  # type: ignore[operator]


def _hello_payload(*items: tuple[str, DataType, object]) -> memoryview:
    return frames.decode_frame(helpers.kv_frame(FrameType.HAPROXY_HELLO, *items)).payload


def test_hello_tolerates_unknown_and_duplicate_keys() -> None:
    payload = _hello_payload(
        ("supported-versions", DataType.STRING, b"1.0"),
        ("future-key", DataType.IPV4, IPv4Address("1.2.3.4")),
        ("supported-versions", DataType.STRING, b"2.0"),
        ("max-frame-size", DataType.INT64, 300),
        ("capabilities", DataType.STRING, b" pipelining , async,,"),
        ("healthcheck", DataType.BOOL, False),
    )
    hello = handshake.decode_haproxy_hello(payload)
    assert hello == handshake.HaproxyHelloFrame("2.0", 300, ("pipelining", "async"), None, False)


def test_hello_with_no_keys_reports_them_missing() -> None:
    hello = handshake.decode_haproxy_hello(memoryview(b""))
    assert hello == handshake.HaproxyHelloFrame(None, None, (), None, False)
    agent = handshake.decode_agent_hello(memoryview(b""))
    assert agent == handshake.AgentHelloFrame(None, None, None)


@pytest.mark.parametrize(
    "item",
    [
        ("supported-versions", DataType.BINARY, b"2.0"),
        ("max-frame-size", DataType.STRING, b"16380"),
        ("capabilities", DataType.NULL, None),
        ("engine-id", DataType.INT64, 1),
        ("healthcheck", DataType.INT64, 1),
    ],
)
def test_hello_known_key_with_wrong_type_is_invalid(item: tuple[str, DataType, object]) -> None:
    with pytest.raises(SpopError) as info:
        handshake.decode_haproxy_hello(_hello_payload(item))
    assert info.value.status is StatusCode.INVALID


def test_disconnect_defaults_when_keys_are_missing() -> None:
    assert handshake.decode_disconnect(memoryview(b"")) == handshake.DisconnectFrame(99, b"")


def test_disconnect_message_is_cut_to_255_bytes() -> None:
    """docs/protocol.md "Disconnect": HAProxy <= 3.0 rejects a longer message."""
    frame = frames.decode_frame(handshake.encode_agent_disconnect(StatusCode.INVALID, "x" * 300))
    assert handshake.decode_disconnect(frame.payload) == handshake.DisconnectFrame(4, b"x" * 255)


@given(
    st.integers(min_value=0, max_value=2**32 - 1),
    _text,
    _text,
    st.one_of(st.none(), _text),
    st.booleans(),
)
@settings(max_examples=100)
def test_haproxy_hello_round_trip(
    max_frame_size: int, versions: str, capabilities: str, engine_id: str | None, check: bool
) -> None:
    data = handshake.encode_haproxy_hello(
        supported_versions=versions,
        max_frame_size=max_frame_size,
        capabilities=capabilities,
        engine_id=engine_id,
        healthcheck=check,
    )
    hello = handshake.decode_haproxy_hello(frames.decode_frame(data).payload)
    assert hello.supported_versions == versions
    assert hello.max_frame_size == max_frame_size
    assert hello.capabilities == handshake.split_capabilities(capabilities.encode())
    assert (hello.engine_id, hello.healthcheck) == (engine_id, check)


@given(st.integers(min_value=256, max_value=2**32 - 1), st.booleans())
@settings(max_examples=50)
def test_agent_hello_round_trip(max_frame_size: int, pipelining: bool) -> None:
    data = handshake.encode_agent_hello(max_frame_size, pipelining)
    hello = handshake.decode_agent_hello(frames.decode_frame(data).payload)
    expected = ("pipelining",) if pipelining else ()
    assert hello == handshake.AgentHelloFrame("2.0", max_frame_size, expected)


@given(st.integers(min_value=0, max_value=2**32 - 1), st.binary(max_size=255), st.booleans())
@settings(max_examples=50)
def test_disconnect_round_trip(status: int, message: bytes, from_agent: bool) -> None:
    encode = (
        handshake.encode_agent_disconnect if from_agent else handshake.encode_haproxy_disconnect
    )
    frame = frames.decode_frame(encode(status, message))
    expected = FrameType.AGENT_DISCONNECT if from_agent else FrameType.HAPROXY_DISCONNECT
    assert frame.type == expected
    assert handshake.decode_disconnect(frame.payload) == handshake.DisconnectFrame(status, message)


@given(st.lists(st.tuples(names, typed_values), max_size=6))
@settings(max_examples=50)
def test_kv_frame_round_trip(items: list[tuple[str, TypedValue]]) -> None:
    data = frames.encode_frame(FrameType.HAPROXY_HELLO, wire.encode_kv_list(items))
    payload = frames.decode_frame(data).payload
    assert wire.encode_kv_list(dict(items).items()) == wire.encode_kv_list(
        handshake._kv(payload).items()
    )
