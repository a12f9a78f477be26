"""frames.py: header, NOTIFY and ACK; the docs/protocol.md "Test vectors" vectors V6-V9 byte-exact,
round trips of
both frame kinds, and limits (7-byte frames, 255 args, 63-character names)."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coraza_spoa_py.spop import (
    Arg,
    DataType,
    Message,
    SetVar,
    SpopError,
    StatusCode,
    UnsetVar,
    VarScope,
    frames,
    wire,
)
from coraza_spoa_py.spop.frames import FrameType
from tests.unit.spop import helpers
from tests.unit.spop.test_wire import names, typed_values

V6_MESSAGES = (
    Message(
        "coraza-req",
        (
            Arg("id", DataType.STRING, b"abc"),
            Arg("src-ip", DataType.IPV4, IPv4Address("192.0.2.10")),
        ),
    ),
)
V7_ACTIONS = (
    SetVar(VarScope.TRANSACTION, "fail", 1, DataType.INT32),
    UnsetVar(VarScope.TRANSACTION, "error"),
)


_ids = st.integers(min_value=0, max_value=2**64 - 1)
_var_names = st.text(alphabet="abcXYZ019_.", min_size=1, max_size=63)
_scopes = st.sampled_from(list(VarScope))
_args = st.builds(lambda name, typed: Arg(name, typed.type, typed.value), names, typed_values)
_messages = st.builds(
    lambda name, args: Message(name, tuple(args)), names, st.lists(_args, max_size=5)
)
_actions = st.one_of(
    st.builds(
        lambda scope, name, typed: SetVar(scope, name, typed.value, typed.type),
        _scopes,
        _var_names,
        typed_values,
    ),
    st.builds(UnsetVar, _scopes, _var_names),
)
_text = st.text(alphabet=st.characters(max_codepoint=127), max_size=40)


# ---- docs/protocol.md "Test vectors" vectors
# -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wire_bytes", "stream_id", "frame_id"),
    [(helpers.V6_NOTIFY, 1, 1), (helpers.V6_NOTIFY_30, 300, 2)],
    ids=["V6", "V6-3.0"],
)
def test_notify_vectors(wire_bytes: bytes, stream_id: int, frame_id: int) -> None:
    frame = frames.decode_frame(wire_bytes)
    assert (frame.type, frame.stream_id, frame.frame_id) == (FrameType.NOTIFY, stream_id, frame_id)
    assert frames.decode_messages(frame.payload) == V6_MESSAGES
    assert frames.encode_notify(stream_id, frame_id, V6_MESSAGES) == wire_bytes


@pytest.mark.parametrize(
    ("wire_bytes", "stream_id", "frame_id", "actions"),
    [
        (helpers.V7_ACK, 1, 1, V7_ACTIONS),
        (
            helpers.V7_ACK_INT64,
            1,
            1,
            (SetVar(VarScope.TRANSACTION, "fail", 1, DataType.INT64), V7_ACTIONS[1]),
        ),
        (helpers.V7_ACK_30, 300, 2, V7_ACTIONS),
        (
            helpers.V9_ACK_MIXED,
            3,
            1,
            (
                SetVar(VarScope.TRANSACTION, "score", -5, DataType.INT64),
                SetVar(VarScope.TRANSACTION, "blocked", True, DataType.BOOL),
                SetVar(VarScope.TRANSACTION, "rule", b"942100", DataType.STRING),
            ),
        ),
    ],
    ids=["V7", "V7-int64", "V7-3.0", "V9"],
)
def test_ack_vectors(
    wire_bytes: bytes, stream_id: int, frame_id: int, actions: tuple[SetVar | UnsetVar, ...]
) -> None:
    frame = frames.decode_frame(wire_bytes)
    assert (frame.type, frame.stream_id, frame.frame_id) == (FrameType.ACK, stream_id, frame_id)
    assert frames.decode_actions(frame.payload) == actions
    assert frames.encode_ack(stream_id, frame_id, actions) == wire_bytes


def test_v9_with_inferred_types_is_the_same_bytes() -> None:
    """Auto-typing: int -> INT64, bool -> BOOL (before int), str -> STRING."""
    actions = [
        SetVar(VarScope.TRANSACTION, "score", -5),
        SetVar(VarScope.TRANSACTION, "blocked", True),
        SetVar(VarScope.TRANSACTION, "rule", "942100"),
    ]
    assert frames.encode_ack(3, 1, actions) == helpers.V9_ACK_MIXED


def test_v8_empty_ack_decodes_but_we_never_send_it() -> None:
    """docs/protocol.md "NOTIFY and ACK": an empty ACK is legal but stalls some 3.1.x builds; ours
    carries a
    harmless UNSET-VAR of txn.<prefix>.noop instead."""
    frame = frames.decode_frame(helpers.V8_EMPTY_ACK)
    assert frames.decode_actions(frame.payload) == ()
    assert frames.encode_frame(FrameType.ACK, b"", 1, 1) == helpers.V8_EMPTY_ACK
    ours = frames.encode_ack(1, 1, [])
    assert ours == bytes.fromhex("0000000f670000000101010202020" + "46e6f6f70")
    assert frames.decode_actions(frames.decode_frame(ours).payload) == (frames.NOOP_ACTION,)


# ---- header ------------------------------------------------------------------------------------


def test_minimum_frame_is_seven_bytes() -> None:
    """N = 7 parses (empty payload); N - 1 is invalid (docs/protocol.md "Frame layout")."""
    frame = frames.parse_frame(bytes.fromhex("03000000010000"))
    assert (frame.type, frame.stream_id, frame.frame_id, bytes(frame.payload)) == (3, 0, 0, b"")
    with pytest.raises(SpopError, match="shorter than 7"):
        frames.parse_frame(bytes.fromhex("030000000100"))


def test_header_varint_ids_must_fit_the_frame() -> None:
    with pytest.raises(SpopError, match="truncated varint"):
        frames.parse_frame(bytes.fromhex("0300000001f080"))


def test_split_frame_handles_partial_and_consecutive_frames() -> None:
    stream = helpers.V6_NOTIFY + helpers.V7_ACK
    first = frames.split_frame(stream)
    assert first is not None
    assert first[1] == len(helpers.V6_NOTIFY)
    second = frames.split_frame(memoryview(stream), first[1])
    assert second is not None
    assert second[0].type == FrameType.ACK
    assert second[1] == len(stream)
    assert frames.split_frame(stream[:3]) is None
    assert frames.split_frame(stream[:10]) is None


def test_decode_frame_requires_exactly_one_frame() -> None:
    with pytest.raises(SpopError, match="length prefix"):
        frames.decode_frame(helpers.V6_NOTIFY + b"\x00")
    with pytest.raises(SpopError, match="length prefix"):
        frames.decode_frame(helpers.V6_NOTIFY[:-1])


def test_flags_and_ids_are_written_as_given() -> None:
    data = frames.encode_frame(FrameType.NOTIFY, b"", 2**32, 7, flags=0)
    frame = frames.decode_frame(data)
    assert (frame.flags, frame.stream_id, frame.frame_id) == (0, 2**32, 7)


# ---- NOTIFY ------------------------------------------------------------------------------------


def test_notify_with_several_messages_and_odd_args() -> None:
    """Two messages, NB-ARGS 0, an empty arg name and a repeated one (docs/protocol.md "Payload
    shapes", "Test vectors")."""
    messages = (
        Message("coraza-req", (Arg("", DataType.NULL, None), Arg("", DataType.INT64, 1))),
        Message("empty", ()),
        Message("coraza-res", (Arg("h", DataType.BINARY, b"1"), Arg("h", DataType.BINARY, b"2"))),
    )
    data = frames.encode_notify(5, 1, messages)
    assert frames.decode_messages(frames.decode_frame(data).payload) == messages


def test_empty_notify_payload_has_no_messages() -> None:
    """docs/protocol.md "NOTIFY and ACK": some 3.1+ builds send it; it still needs an ACK."""
    assert frames.decode_messages(memoryview(b"")) == ()


def test_nb_args_is_honoured() -> None:
    """The bytes after the last counted arg are the next message, not another arg."""
    payload = b"\x01a\x01\x01x\x04\x01" + b"\x01b\x00"
    assert frames.decode_messages(memoryview(payload)) == (
        Message("a", (Arg("x", DataType.INT64, 1),)),
        Message("b", ()),
    )


def test_nb_args_larger_than_the_frame_is_invalid() -> None:
    with pytest.raises(SpopError, match="truncated"):
        frames.decode_messages(memoryview(b"\x01a\x02\x01x\x04\x01"))


def test_255_args_is_the_limit() -> None:
    """N = 255 args encodes and decodes; N + 1 cannot be written (NB-ARGS is one byte)."""
    args = tuple(Arg(str(i), DataType.INT64, i) for i in range(255))
    data = frames.encode_messages([Message("m", args)])
    assert frames.decode_messages(memoryview(data)) == (Message("m", args),)
    with pytest.raises(ValueError, match="more than 255"):
        frames.encode_messages([Message("m", (*args, Arg("x", DataType.NULL, None)))])


def _reference_messages(payload: bytes) -> object:
    """decode_messages without its hot path: the Reader alone (the specification of it)."""
    reader = wire.Reader(payload)
    try:
        messages = []
        while not reader.at_end():
            name = reader.name()
            args = []
            for _ in range(reader.byte()):
                arg_name = reader.name()
                args.append(Arg(arg_name, *reader.typed()))
            messages.append(Message(name, tuple(args)))
        return tuple(messages)
    except SpopError as error:
        return error.status


def _fast_messages(payload: bytes) -> Any:
    try:
        return frames.decode_messages(memoryview(payload))
    except SpopError as error:
        return error.status


_LONG = b"h" * 240
HOT_PATH_CASES = {
    "string": b"\x01m\x01\x01a\x08\x03abc",
    "binary-empty": b"\x01m\x01\x01a\x09\x00",
    "string-240": b"\x01m\x01\x01a\x08\xf0\x00" + _LONG,
    "string-cut": b"\x01m\x01\x01a\x08\x05abc",
    "string-length-missing": b"\x01m\x01\x01a\x08",
    "int64-small": b"\x01m\x01\x01a\x04\x50",
    "int64-large": b"\x01m\x01\x01a\x04\xf0\x00",
    "int64-missing": b"\x01m\x01\x01a\x04",
    "int64-negative": b"\x01m\x01\x01a\x04\xfb\xf0\xfe\xfe\xfe\xfe\xfe\xfe\xfe\x0e",
    "ipv4": b"\x01m\x01\x01a\x06\xc0\x00\x02\x0a",
    "ipv4-cut": b"\x01m\x01\x01a\x06\xc0\x00\x02",
    "null-then-string": b"\x01m\x02\x01a\x00\x01b\x08\x01x",
    "name-240": b"\x01m\x01\xf0\x00" + _LONG + b"\x04\x01",
    "name-to-the-end": b"\x01m\x01\x03abc",
    "no-arg-bytes": b"\x01m\x01",
    "flagged-string": b"\x01m\x01\x01a\x18\x01x",
    "two-messages": b"\x01m\x01\x01a\x04\x01\x01n\x01\x00\x09\x01z",
    # varints of two and three bytes (docs/protocol.md "Varints" table): lengths and values on the
    # hot path
    "string-2287": b"\x01m\x01\x01a\x08\xff\x7f" + b"h" * 2287,
    "string-2288": b"\x01m\x01\x01a\x08\xf0\x80\x00" + b"h" * 2288,
    "string-264431-cut": b"\x01m\x01\x01a\x08\xff\xff\x7f" + b"h" * 100,
    "string-4-byte-length": b"\x01m\x01\x01a\x08\xf0\x80\x80\x00" + b"h" * 64,
    "int64-port": b"\x01m\x01\x01a\x04" + wire.encode_varint(40000),
    "int64-2287": b"\x01m\x01\x01a\x04\xff\x7f",
    "int64-3-bytes-cut": b"\x01m\x01\x01a\x04\xf0\x80",
    "int64-2-bytes-cut": b"\x01m\x01\x01a\x04\xf0",
    "int64-4-bytes": b"\x01m\x01\x01a\x04\xf0\x80\x80\x00",
    "two-ipv4-same-address": b"\x01m\x02\x01a\x06\xc0\x00\x02\x0a\x01b\x06\xc0\x00\x02\x0a",
}


@pytest.mark.parametrize("payload", HOT_PATH_CASES.values(), ids=HOT_PATH_CASES.keys())
def test_notify_hot_path_matches_the_reader(payload: bytes) -> None:
    """Every branch of decode_messages' hot path gives what the plain Reader gives: the same
    messages, or the same error status."""
    assert _fast_messages(payload) == _reference_messages(payload)


def test_notify_hot_path_values() -> None:
    assert _fast_messages(HOT_PATH_CASES["ipv4"]) == (
        Message("m", (Arg("a", DataType.IPV4, IPv4Address("192.0.2.10")),)),
    )
    assert _fast_messages(HOT_PATH_CASES["int64-negative"]) == (
        Message("m", (Arg("a", DataType.INT64, -5),)),
    )
    assert _fast_messages(HOT_PATH_CASES["string-cut"]) is StatusCode.INVALID
    assert _fast_messages(HOT_PATH_CASES["int64-port"]) == (
        Message("m", (Arg("a", DataType.INT64, 40000),)),
    )
    assert _fast_messages(HOT_PATH_CASES["string-2288"])[0].args[0].value == b"h" * 2288
    assert _fast_messages(HOT_PATH_CASES["int64-3-bytes-cut"]) is StatusCode.INVALID


@given(st.binary(max_size=80))
@settings(max_examples=300)
def test_notify_hot_path_matches_the_reader_on_any_bytes(payload: bytes) -> None:
    assert _fast_messages(payload) == _reference_messages(payload)


@given(st.lists(_messages, max_size=3))
@settings(max_examples=100)
def test_notify_hot_path_matches_the_reader_on_valid_payloads(messages: list[Message]) -> None:
    payload = frames.encode_messages(messages)
    assert _fast_messages(payload) == _reference_messages(payload) == tuple(messages)


# ---- ACK ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "a-b", "txn.coraza:fail", "x" * 64, "é"])
def test_ack_refuses_variable_names_haproxy_would_ignore(name: str) -> None:
    """docs/protocol.md "Variable names": only [A-Za-z0-9_.], at most 63 characters."""
    with pytest.raises(ValueError, match="variable name"):
        frames.encode_ack(1, 1, [UnsetVar(VarScope.TRANSACTION, name)])
    with pytest.raises(ValueError, match="variable name"):
        frames.encode_ack(1, 1, [SetVar(VarScope.TRANSACTION, name, 1)])


def test_ack_with_63_character_name() -> None:
    name = "v" * 63
    data = frames.encode_ack(1, 1, [SetVar(VarScope.REQUEST, name, None)])
    action = SetVar(VarScope.REQUEST, name, None, DataType.NULL)
    assert frames.decode_actions(frames.decode_frame(data).payload) == (action,)


@pytest.mark.parametrize(
    "payload",
    ["010205", "0203020161", "030200", "01030503616263" + "00", "0202"],
    ids=["set-var-2-args", "unset-var-3-args", "unknown-action", "bad-scope", "truncated"],
)
def test_malformed_actions_are_invalid(payload: str) -> None:
    with pytest.raises(SpopError) as info:
        frames.decode_actions(memoryview(bytes.fromhex(payload)))
    assert info.value.status is StatusCode.INVALID


def test_repeated_small_set_vars_keep_their_types() -> None:
    """Integer and boolean SET-VARs are encoded once and reused: True == 1 and hash alike,
    yet BOOL and INT64 (and an explicit INT32) must each come back as sent, in any order."""
    actions = [
        SetVar(VarScope.TRANSACTION, "v", 1),
        SetVar(VarScope.TRANSACTION, "v", True),
        SetVar(VarScope.TRANSACTION, "v", 1, DataType.INT32),
        SetVar(VarScope.REQUEST, "v", 1),
    ]
    for ordering in (actions, actions[::-1], actions):
        decoded = frames.decode_actions(memoryview(frames.encode_actions(ordering)))
        assert decoded == tuple(frames.typed_set_var(a) for a in ordering)


def test_typed_set_var_makes_the_type_explicit() -> None:
    assert frames.typed_set_var(SetVar(VarScope.TRANSACTION, "a", "é")) == SetVar(
        VarScope.TRANSACTION, "a", b"\xc3\xa9", DataType.STRING
    )
    explicit = SetVar(VarScope.SESSION, "b", 3, DataType.UINT32)
    assert frames.typed_set_var(explicit) == explicit


# ---- hypothesis round trips of every frame kind -----------------------------------------------


@given(_ids, _ids, st.lists(_messages, max_size=4))
@settings(max_examples=100)
def test_notify_round_trip(stream_id: int, frame_id: int, messages: list[Message]) -> None:
    data = frames.encode_notify(stream_id, frame_id, messages)
    frame = frames.decode_frame(data)
    assert (frame.type, frame.flags, frame.stream_id, frame.frame_id) == (
        FrameType.NOTIFY,
        1,
        stream_id,
        frame_id,
    )
    assert frames.decode_messages(frame.payload) == tuple(messages)


@given(_ids, _ids, st.lists(_actions, min_size=1, max_size=6))
@settings(max_examples=100)
def test_ack_round_trip(stream_id: int, frame_id: int, actions: list[SetVar | UnsetVar]) -> None:
    data = frames.encode_ack(stream_id, frame_id, actions)
    frame = frames.decode_frame(data)
    assert (frame.type, frame.stream_id, frame.frame_id) == (FrameType.ACK, stream_id, frame_id)
    assert frames.decode_actions(frame.payload) == tuple(actions)
