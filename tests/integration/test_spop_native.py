"""The C NOTIFY decoder and ACK encoder (native/spop_fast.c, through spop_native) against the
pure-Python codec, their reference: the same bytes must give equal messages with the same
types, or the same SpopError; the same actions the same ACK bytes, or the same error. Fed the
captures of real HAProxy, the vectors of docs/protocol.md "Test vectors", generated messages of
every type, and those messages cut, flipped and garbled; the agent's own ACKs and generated
actions of every kind, valid or not."""

from __future__ import annotations

import json
import random
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coraza_spoa_py import spop, spop_native, verdicts
from coraza_spoa_py.models import Verdict
from coraza_spoa_py.spop import Action, Arg, DataType, Message, SetVar, UnsetVar, VarScope, frames
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


# ---- the ACK encoder (docs/performance.md change 27) ----------------------------------------


def _ack_outcome(encode: object, stream_id: int, frame_id: int, actions: list[Action]) -> object:
    try:
        return encode(stream_id, frame_id, actions)  # type: ignore[operator]
    except Exception as error:  # the reference's own error, whatever it is
        return ("error", type(error), str(error))


def _same_ack(stream_id: int, frame_id: int, actions: list[Action]) -> object:
    expected = _ack_outcome(frames.encode_ack, stream_id, frame_id, actions)
    assert _ack_outcome(spop_native.encode_ack, stream_id, frame_id, actions) == expected
    return expected


def _agent_acks() -> list[list[Action]]:
    clean = Verdict(interrupted=False)
    blocked = Verdict(
        interrupted=True,
        status=403,
        action="deny",
        rule_id=942100,
        matched_rule_ids=(920350, 942100),
        rules_hit=2,
        anomaly_score=10,
    )
    return [
        verdicts.verdict_actions(
            clean, transaction_id="tx-1", export_rule_ids=False, detect_only=False
        ),
        verdicts.verdict_actions(
            blocked, transaction_id="tx-\u00e9", export_rule_ids=True, detect_only=False
        ),
        verdicts.verdict_actions(
            blocked, transaction_id=None, export_rule_ids=True, detect_only=True
        ),
        verdicts.error_actions(next(iter(verdicts.ErrorCode))),
        [],
    ]


@pytest.mark.parametrize("actions", _agent_acks())
def test_the_agents_acks_are_encoded_in_c_alike(actions: list[Action]) -> None:
    assert spop_native._native_encode_ack(7, 300, actions) is not None  # the agent's shapes
    frame = _same_ack(7, 300, actions)
    assert isinstance(frame, bytes)
    raw = frames.decode_frame(frame)
    assert (raw.type, raw.stream_id, raw.frame_id) == (frames.FrameType.ACK, 7, 300)
    decoded = frames.decode_actions(raw.payload)
    assert [a.name for a in decoded] == [a.name for a in actions or [frames.NOOP_ACTION]]


_GOOD_NAMES = st.text("abcXYZ019_.", min_size=1, max_size=63)
# the shapes the C encoder takes: each value with its type, or with none (inferred)
_GOOD_VALUES = st.one_of(
    st.tuples(st.booleans(), st.sampled_from([None, DataType.BOOL])),
    st.tuples(st.integers(-(2**63), 2**63 - 1), st.sampled_from([None, DataType.INT64])),
    st.tuples(st.integers(-(2**31), 2**31 - 1), st.just(DataType.INT32)),
    st.tuples(st.integers(0, 2**63 - 1), st.sampled_from([DataType.UINT32, DataType.UINT64])),
    st.tuples(st.binary(max_size=300), st.sampled_from([None, DataType.BINARY, DataType.STRING])),
    st.tuples(st.text(max_size=40), st.sampled_from([None, DataType.STRING, DataType.BINARY])),
    st.tuples(st.none(), st.sampled_from([None, DataType.NULL])),
)
_GOOD_ACTIONS = st.lists(
    st.one_of(
        st.builds(
            lambda scope, name, typed: SetVar(scope, name, typed[0], typed[1]),
            st.sampled_from(list(VarScope)),
            _GOOD_NAMES,
            _GOOD_VALUES,
        ),
        st.builds(UnsetVar, st.sampled_from(list(VarScope)), _GOOD_NAMES),
    ),
    max_size=6,
)
# anything else, mostly what the reference refuses: the C encoder must leave it to Python
_ANY_NAMES = st.one_of(_GOOD_NAMES, st.text(st.characters(max_codepoint=300), max_size=70))
_ANY_SCOPES = st.one_of(st.sampled_from(list(VarScope)), st.integers(-2, 7))
_ANY_VALUES = st.one_of(
    st.booleans(),
    st.integers(-(2**64), 2**65),
    st.binary(max_size=3000),
    st.text(max_size=40),
    st.none(),
    st.binary(min_size=4, max_size=4).map(IPv4Address),
    st.builds(bytearray, st.binary(max_size=8)),
    st.floats(allow_nan=False),
)
_ANY_TYPES = st.one_of(st.none(), st.sampled_from(list(DataType)), st.integers(-1, 12))
_ANY_ACTIONS = st.lists(
    st.one_of(
        st.builds(SetVar, _ANY_SCOPES, _ANY_NAMES, _ANY_VALUES, _ANY_TYPES),
        st.builds(UnsetVar, _ANY_SCOPES, _ANY_NAMES),
    ),
    max_size=3,
)
_IDS = st.one_of(st.integers(0, 2**18), st.integers(-3, 2**64 + 3))


_TXN = VarScope.TRANSACTION
_EDGE_ACTIONS = [
    SetVar(_TXN, "n", -1, DataType.UINT32),
    SetVar(_TXN, "n", -1, DataType.UINT64),
    SetVar(_TXN, "n", 2**63, DataType.UINT64),
    SetVar(_TXN, "n", 2**64, DataType.UINT64),
    SetVar(_TXN, "n", -(2**63) - 1, DataType.INT64),
    SetVar(_TXN, "n", -(2**63), DataType.INT32),
    SetVar(_TXN, "n", True, DataType.INT64),
    SetVar(_TXN, "n", 1, DataType.BOOL),
    SetVar(_TXN, "n", "1", DataType.INT64),
    SetVar(_TXN, "n", None, DataType.STRING),
    SetVar(_TXN, "n", b"", DataType.NULL),
    SetVar(_TXN, "n", bytearray(b"x"), None),  # type: ignore[arg-type]
    SetVar(_TXN, "n", "\ud800", None),
    SetVar(_TXN, "n", IPv4Address("10.0.0.1"), None),
    SetVar(_TXN, "n", IPv6Address("::1"), DataType.IPV6),
    SetVar(_TXN, "n", 1.5, None),  # type: ignore[arg-type]
    SetVar(_TXN, "n", 1, 12),  # type: ignore[arg-type]
    SetVar(_TXN, "", 1),
    SetVar(_TXN, "a" * 64, 1),
    SetVar(_TXN, "a-b", 1),
    SetVar(_TXN, "\u00e9", 1),
    SetVar(5, "n", 1),  # type: ignore[arg-type]
    SetVar(-1, "n", 1),  # type: ignore[arg-type]
    UnsetVar(7, "n"),  # type: ignore[arg-type]
    UnsetVar(_TXN, "a b"),
    SetVar(_TXN, "big", b"x" * 5000),
]


@pytest.mark.parametrize("action", _EDGE_ACTIONS, ids=repr)
def test_edge_actions_encode_alike(action: Action) -> None:
    """Each beside a valid action: one the C encoder cannot take sends the whole ACK to Python,
    whose frame or error it must be."""
    _same_ack(1, 1, [SetVar(_TXN, "fail", 0, DataType.INT64), action])


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**63 - 1), st.integers(0, 2**63 - 1), _GOOD_ACTIONS)
def test_generated_agent_shaped_acks_are_encoded_in_c_alike(
    stream_id: int, frame_id: int, actions: list[Action]
) -> None:
    if len(frames.encode_ack(stream_id, frame_id, actions)) <= 2048:  # the C buffer
        assert spop_native._native_encode_ack(stream_id, frame_id, actions) is not None
    _same_ack(stream_id, frame_id, actions)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(_IDS, _IDS, _ANY_ACTIONS)
def test_any_generated_acks_encode_alike(
    stream_id: int, frame_id: int, actions: list[Action]
) -> None:
    _same_ack(stream_id, frame_id, actions)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_GOOD_ACTIONS, _ANY_ACTIONS), st.integers(256, 4096))
def test_send_ack_answers_alike_within_the_frame_limit(
    actions: list[Action], max_frame_size: int
) -> None:
    outcomes: list[object] = []
    for codec in (spop.Connection(max_frame_size), spop_native.NativeConnection(max_frame_size)):
        try:
            outcomes.append(codec.send_ack(1, 2, actions))
        except spop.SpopError as error:
            outcomes.append(("error", error.status, str(error)))
    assert outcomes[0] == outcomes[1]
