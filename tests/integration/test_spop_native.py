"""The C NOTIFY decoder (native/spop_fast.c, through spop_native) against the pure-Python
codec, its reference: the same bytes must give equal messages with the same types, or the
same SpopError. Fed the captures of real HAProxy, the vectors of docs/protocol.md "Test
vectors", generated messages of every type, and those messages cut, flipped and garbled."""

from __future__ import annotations

import json
import random
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coraza_spoa_py import spop, spop_native
from coraza_spoa_py.spop import Arg, DataType, Message, frames
from tests.unit.spop import helpers

CAPTURES = Path(__file__).parents[1] / "unit" / "spop" / "data"
# the compiled module: not a unit test (docs/development.md "Layout")
pytestmark = pytest.mark.integration


def _outcome(decode: object, payload: bytes) -> object:
    try:
        messages = decode(memoryview(payload))  # type: ignore[operator]
    except spop.SpopError as error:
        return ("error", error.status, str(error))
    # equal values, and the same types (True == 1, but BOOL and INT64 are different answers)
    return [(m.name, [(a.name, a.type, type(a.value), a.value) for a in m.args]) for m in messages]


def _same(payload: bytes) -> object:
    expected = _outcome(frames.decode_messages, payload)
    assert _outcome(spop_native.decode_messages, payload) == expected
    return expected


def test_the_native_decoder_is_built_and_used() -> None:
    # without it the server would quietly run the pure decoder: make install builds it
    assert spop_native.NATIVE
    payload = frames.decode_frame(helpers.V6_NOTIFY).payload
    assert spop_native._native_decode(payload) is not None
    codec = spop_native.NativeConnection()
    codec.receive_data(helpers.V4_HELLO_MIN + helpers.V6_NOTIFY)
    events = helpers.drain(codec)
    assert events[1] == spop.Notify(1, 1, frames.decode_messages(payload))


def _capture_payloads() -> list[bytes]:
    payloads = []
    for path in sorted(CAPTURES.glob("haproxy-*.json")):
        for frame in json.loads(path.read_text(encoding="utf-8"))["frames"]:
            raw = frames.decode_frame(bytes.fromhex(frame["hex"]))
            if raw.type == frames.FrameType.NOTIFY:
                payloads.append(bytes(raw.payload))
    return payloads


CAPTURED = _capture_payloads()


@pytest.mark.parametrize("payload", CAPTURED)
def test_real_haproxy_notifies_decode_alike_in_c(payload: bytes) -> None:
    assert spop_native._native_decode(memoryview(payload)) is not None  # HAProxy's shapes
    _same(payload)


def test_the_vectors_decode_alike() -> None:
    for frame in (helpers.V6_NOTIFY, helpers.V6_NOTIFY_30):
        assert _same(bytes(frames.decode_frame(frame).payload)) != []


_VALUES = st.one_of(
    st.tuples(st.just(DataType.STRING), st.binary(max_size=300)),
    st.tuples(st.just(DataType.BINARY), st.binary(max_size=70_000)),
    st.tuples(st.just(DataType.INT64), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just(DataType.INT32), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.just(DataType.UINT32), st.integers(0, 2**32 - 1)),
    st.tuples(st.just(DataType.UINT64), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(DataType.BOOL), st.booleans()),
    st.tuples(st.just(DataType.NULL), st.none()),
    st.tuples(st.just(DataType.IPV4), st.binary(min_size=4, max_size=4).map(IPv4Address)),
    st.tuples(st.just(DataType.IPV6), st.binary(min_size=16, max_size=16).map(IPv6Address)),
)
_NAMES = st.text(st.characters(max_codepoint=255), max_size=300)
_MESSAGES = st.lists(
    st.builds(
        Message,
        _NAMES,
        st.lists(
            st.builds(lambda name, typed: Arg(name, typed[0], typed[1]), _NAMES, _VALUES),
            max_size=14,
        ).map(tuple),
    ),
    max_size=3,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_MESSAGES)
def test_generated_messages_decode_alike(messages: list[Message]) -> None:
    payload = frames.encode_messages(messages)
    assert _same(payload) == _outcome(lambda _: tuple(messages), payload)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_MESSAGES, st.data())
def test_cut_and_garbled_payloads_fail_or_decode_alike(
    messages: list[Message], data: st.DataObject
) -> None:
    payload = bytearray(frames.encode_messages(messages))
    if payload:
        for _ in range(data.draw(st.integers(0, 4))):
            at = data.draw(st.integers(0, len(payload) - 1))
            payload[at] = data.draw(st.integers(0, 255))
        payload = payload[: data.draw(st.integers(0, len(payload)))]
    _same(bytes(payload))


def test_a_seeded_corpus_of_mutated_captures_decodes_alike() -> None:
    # without hypothesis' shrinking, but many more cases near HAProxy's real shapes
    rng = random.Random(17)
    errors = 0
    for _ in range(20_000):
        payload = bytearray(rng.choice(CAPTURED))
        for _ in range(rng.randint(1, 3)):
            payload[rng.randrange(len(payload))] = rng.randrange(256)
        cut = payload[: rng.randint(0, len(payload))] if rng.random() < 0.3 else payload
        errors += isinstance(_same(bytes(cut)), tuple)
    assert errors > 1_000  # the corpus does reach the error paths


def test_names_cached_in_c_are_not_confused() -> None:
    # the C name cache keys on the bytes: names that collide in its table stay distinct
    names = [f"n{i}" for i in range(2_000)]
    for start in range(0, 2_000, 200):
        messages = [
            Message(
                f"m{start}", tuple(Arg(n, DataType.INT64, 1) for n in names[start : start + 200])
            )
        ]
        decoded = spop_native.decode_messages(memoryview(frames.encode_messages(messages)))
        assert [a.name for a in decoded[0].args] == names[start : start + 200]


# ---- whole frames: NativeConnection against Connection -------------------------------------


def _stream_outcome(connection: spop.Connection, chunks: list[bytes]) -> list[object]:
    seen: list[object] = []
    try:
        for chunk in chunks:
            connection.receive_data(chunk)
            while (event := connection.next_event()) is not spop.NEED_DATA:
                seen.append(event)
                if isinstance(event, spop.ConnectionClosed):
                    return seen
        seen.append(("pending", connection.pending_bytes, connection.data_to_send()))
    except spop.SpopError as error:
        seen.append(("error", error.status, str(error), connection.state))
    return seen


def _same_stream(chunks: list[bytes]) -> list[Any]:
    expected = _stream_outcome(spop.Connection(), chunks)
    assert _stream_outcome(spop_native.NativeConnection(), chunks) == expected
    return expected


def _capture_frames() -> list[bytes]:
    return [
        bytes.fromhex(frame["hex"])
        for path in sorted(CAPTURES.glob("haproxy-*.json"))
        for frame in json.loads(path.read_text(encoding="utf-8"))["frames"]
    ]


NOTIFY_FRAMES = [f for f in _capture_frames() if frames.decode_frame(f).type == 3]


@pytest.mark.parametrize("feed", helpers.FEEDS)
def test_captured_notifies_read_alike_whole_split_and_trailing(feed: str) -> None:
    stream = helpers.V4_HELLO_MIN + b"".join(NOTIFY_FRAMES) + helpers.V11_HAPROXY_DISCONNECT
    events = _same_stream(list(helpers.chunks(stream, feed)))
    assert sum(isinstance(e, spop.Notify) for e in events) == len(NOTIFY_FRAMES)
    codec = spop_native.NativeConnection()
    codec.receive_data(helpers.V4_HELLO_MIN)
    codec.next_event()
    # the C path is the one taken for HAProxy's frames (not the fallback)
    assert spop_native._next_notify(NOTIFY_FRAMES[0], 0, codec.max_frame_size) is not None


def test_notify_frames_the_c_reader_leaves_to_python_read_alike() -> None:
    notify = frames.decode_frame(helpers.V6_NOTIFY)
    payload = bytes(notify.payload)
    cases = [
        frames.encode_frame(3, payload, 1, 1, flags=0),  # no FIN: status 10
        frames.encode_frame(3, payload, 1, 1, flags=3),  # FIN + ABORT
        frames.encode_frame(3, payload, 2**40, 7),  # a long stream-id varint
        frames.encode_frame(3, b"", 1, 1),  # no messages
        frames.encode_frame(0, payload, 1, 1),  # a continuation
        frames.encode_frame(99, payload, 1, 1),  # an unknown type: skipped
        bytes.fromhex("00000006") + bytes(6),  # LENGTH below 7
        helpers.V6_NOTIFY[:3] + b"\xff" + helpers.V6_NOTIFY[4:],  # LENGTH beyond the data
    ]
    for case in cases:
        _same_stream([helpers.V4_HELLO_MIN + case + helpers.V6_NOTIFY])
    # above the negotiated max-frame-size (256 here): TOO_BIG, from the Python path
    small = helpers.kv_frame(
        1,
        ("supported-versions", DataType.STRING, "2.0"),
        ("max-frame-size", DataType.UINT32, 256),
        ("capabilities", DataType.STRING, "pipelining"),
    )
    big = frames.encode_notify(1, 1, [Message("m", (Arg("a", DataType.BINARY, b"x" * 300),))])
    assert _same_stream([small, big])[-1][1] == spop.StatusCode.TOO_BIG


def test_a_seeded_corpus_of_mutated_streams_reads_alike() -> None:
    rng = random.Random(22)
    for _ in range(3_000):
        frames_in = [rng.choice(NOTIFY_FRAMES) for _ in range(rng.randint(1, 3))]
        stream = bytearray(b"".join(frames_in))
        for _ in range(rng.randint(0, 3)):
            stream[rng.randrange(len(stream))] = rng.randrange(256)
        data = helpers.V4_HELLO_MIN + bytes(stream)
        cut = rng.randint(len(helpers.V4_HELLO_MIN), len(data))
        _same_stream([data[:cut], data[cut:]] if rng.random() < 0.5 else [data])
