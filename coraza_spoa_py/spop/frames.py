"""SPOP frames: the header (length, type, flags, stream-id, frame-id), and the per-request
frames in both directions: NOTIFY (decoded by the agent, encoded by test peers) and ACK
(encoded by the agent, decoded by test peers). HELLO and DISCONNECT live in ``handshake``.

This module checks the shape of each frame (counts, bounds, scopes) and raises
``SpopError(INVALID)`` when it is wrong. It does not keep state or decide which frame is
allowed when: that is ``connection``'s job.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from functools import lru_cache
from ipaddress import IPv4Address

from coraza_spoa_py.spop.events import (
    Action,
    Arg,
    DataType,
    Message,
    SetVar,
    UnsetVar,
    Value,
    VarScope,
)
from coraza_spoa_py.spop.wire import (
    Reader,
    encode_name,
    encode_typed,
    encode_value,
    encode_varint,
    infer_type,
    invalid_frame,
)


class FrameType(IntEnum):
    """Frame type ids, docs/protocol.md "Frame layout"."""

    UNSET = 0
    HAPROXY_HELLO = 1
    HAPROXY_DISCONNECT = 2
    NOTIFY = 3
    AGENT_HELLO = 101
    AGENT_DISCONNECT = 102
    ACK = 103


class FrameFlags(IntFlag):
    """Bit 0 FIN, bit 1 ABORT; bits 2-31 reserved (docs/protocol.md "Frame layout")."""

    FIN = 1
    ABORT = 2


class ActionType(IntEnum):
    """ACK action ids, docs/protocol.md "Payload shapes"."""

    SET_VAR = 1
    UNSET_VAR = 2


LENGTH = struct.Struct(">I")
TYPE_AND_FLAGS = struct.Struct(">BI")
LENGTH_PREFIX_SIZE = LENGTH.size
# type (1) + flags (4) + stream-id (>= 1) + frame-id (>= 1): HAProxy rejects less
# (docs/protocol.md "Frame layout")
MIN_FRAME_LENGTH = 7
MAX_FRAME_LENGTH = (1 << 32) - 1
# both peers must accept frames of at least 256 bytes (docs/protocol.md "HELLO keys")
MIN_MAX_FRAME_SIZE = 256
MAX_ARGS_PER_MESSAGE = 255  # NB-ARGS is one raw byte (docs/protocol.md "Payload shapes")
_STRING, _BINARY = int(DataType.STRING), int(DataType.BINARY)
_INT64, _IPV4 = int(DataType.INT64), int(DataType.IPV4)
_BYTES_TYPES = (_STRING, _BINARY)
_TYPES = {t: DataType(t) for t in (_STRING, _BINARY, _INT64, _IPV4)}
# HAProxy silently ignores an action whose name has any other character (docs/protocol.md
# "Variable names")
_VAR_NAME = re.compile(r"[A-Za-z0-9_.]{1,63}")

# an ACK always starts with these 5 bytes (type 103, FIN): built once
_ACK_TYPE_AND_FLAGS = TYPE_AND_FLAGS.pack(FrameType.ACK, FrameFlags.FIN)


# ---- header ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawFrame:
    """One frame as read: ``type`` is the raw byte (it may be an id we do not know) and
    ``payload`` a view over the bytes after the frame-id."""

    type: int
    flags: int
    stream_id: int
    frame_id: int
    payload: memoryview


def parse_frame(body: bytes | memoryview) -> RawFrame:
    """Parse the LENGTH bytes that follow the 4-byte prefix (docs/protocol.md "Frame layout")."""
    view = body if isinstance(body, memoryview) else memoryview(body)
    if len(view) < MIN_FRAME_LENGTH:
        raise invalid_frame(f"frame of {len(view)} bytes is shorter than {MIN_FRAME_LENGTH}")
    frame_type, flags = TYPE_AND_FLAGS.unpack_from(view)
    reader = Reader(view, TYPE_AND_FLAGS.size)
    stream_id = reader.varint()
    frame_id = reader.varint()
    return RawFrame(frame_type, flags, stream_id, frame_id, view[reader.pos :])


def encode_frame(
    frame_type: int,
    payload: bytes = b"",
    stream_id: int = 0,
    frame_id: int = 0,
    flags: int = FrameFlags.FIN,
) -> bytes:
    """Length prefix + header + payload, ready for one ``sendall`` (docs/protocol.md "One
    frame, one write")."""
    body = TYPE_AND_FLAGS.pack(frame_type, flags) + encode_varint(stream_id)
    body += encode_varint(frame_id) + payload
    return LENGTH.pack(len(body)) + body


def split_frame(data: bytes | memoryview, pos: int = 0) -> tuple[RawFrame, int] | None:
    """The frame that starts at ``pos`` and the offset after it, or None when incomplete.
    For test peers reading a byte stream; the agent's own reader is ``Connection``."""
    view = data if isinstance(data, memoryview) else memoryview(data)
    if len(view) - pos < LENGTH_PREFIX_SIZE:
        return None
    (length,) = LENGTH.unpack_from(view, pos)
    end = pos + LENGTH_PREFIX_SIZE + length
    if len(view) < end:
        return None
    return parse_frame(view[pos + LENGTH_PREFIX_SIZE : end]), end


def decode_frame(wire: bytes | memoryview) -> RawFrame:
    """Exactly one whole frame, length prefix included."""
    result = split_frame(wire)
    if result is None or result[1] != len(wire):
        raise invalid_frame("the length prefix does not match the data")
    return result[0]


# ---- NOTIFY --------------------------------------------------------------------------------


def decode_messages(payload: memoryview) -> tuple[Message, ...]:
    """LIST-OF-MESSAGES (docs/protocol.md "Payload shapes"). NB-ARGS is honoured, so the next
    message starts right after the last arg (docs/protocol.md "Honour NB-ARGS"). An empty
    payload is legal (docs/protocol.md "NOTIFY and ACK")."""
    reader = Reader(payload)
    buf, end = reader.buf, reader.end
    messages: list[Message] = []
    while not reader.at_end():
        name = reader.name()
        args: list[Arg] = []
        for _ in range(reader.byte()):
            pos = reader.pos
            # Hot path, taken by every arg HAProxy sends (docs/protocol.md "Typed data", "What
            # HAProxy sends"): a name shorter than 240 bytes, then a STRING/BINARY whose length,
            # or an INT64 whose value, is a varint of one to three bytes (below 264432: ports,
            # header blocks, bodies up to 258 KiB; docs/protocol.md "Varints"), or an IPV4. It
            # reads the same bytes as the Reader, with the bounds checks written out; anything
            # else (longer varints, other types, a frame cut short) goes through the Reader,
            # which also raises the errors.
            if (
                pos < end
                and (name_size := buf[pos]) < 240
                and (value_at := pos + 2 + name_size) < end
            ):
                type_byte = buf[value_at - 1]
                number = buf[value_at]
                after = value_at + 1
                if number >= 240:
                    # every byte is added whole, shifted by 4 then 7 more bits
                    # (docs/protocol.md "Varints")
                    if after < end and (second := buf[after]) < 128:
                        number += second << 4
                        after += 1
                    elif after + 1 < end and (third := buf[after + 1]) < 128:
                        number += (buf[after] << 4) + (third << 11)
                        after += 2
                    else:
                        number = -1  # longer, or cut short: the Reader's case
                if type_byte in _BYTES_TYPES and number >= 0 and (stop := after + number) <= end:
                    value: Value = bytes(buf[after:stop])
                elif type_byte == _INT64 and number >= 0:
                    value, stop = number, after
                elif type_byte == _IPV4 and (stop := value_at + 4) <= end:
                    value = _ipv4(bytes(buf[value_at:stop]))
                else:
                    args.append(Arg(reader.name(), *reader.typed()))
                    continue
                reader.pos = stop
                args.append(
                    Arg(str(buf[pos + 1 : value_at - 1], "latin-1"), _TYPES[type_byte], value)
                )
            else:
                args.append(Arg(reader.name(), *reader.typed()))
        messages.append(Message(name, tuple(args)))
    return tuple(messages)


# src-ip / dst-ip repeat from message to message: IPv4Address() costs more than the rest of
# the arg; bounded, as everything a peer controls (docs/development.md "Bounded input")
@lru_cache(maxsize=4096)
def _ipv4(packed: bytes) -> IPv4Address:
    return IPv4Address(packed)


def encode_messages(messages: Iterable[Message]) -> bytes:
    out = bytearray()
    for message in messages:
        if len(message.args) > MAX_ARGS_PER_MESSAGE:
            raise ValueError(f"message {message.name!r} has more than 255 args")
        out += encode_name(message.name)
        out.append(len(message.args))
        for arg in message.args:
            out += encode_name(arg.name)
            out += encode_typed(arg.type, arg.value)
    return bytes(out)


def encode_notify(stream_id: int, frame_id: int, messages: Iterable[Message]) -> bytes:
    """NOTIFY; for test peers."""
    return encode_frame(FrameType.NOTIFY, encode_messages(messages), stream_id, frame_id)


# ---- ACK -----------------------------------------------------------------------------------

# Some 3.1.x builds never wake the stream on an empty ACK (docs/protocol.md "NOTIFY and ACK"), so
# an ACK always carries at least this harmless action (txn.<prefix>.noop is never set by anyone).
NOOP_ACTION = UnsetVar(VarScope.TRANSACTION, "noop")


def _check_var_name(name: str) -> None:
    if _VAR_NAME.fullmatch(name) is None:
        raise ValueError(f"variable name {name!r} must be 1-63 characters of [A-Za-z0-9_.]")


@lru_cache(maxsize=512)
def _set_var_head(scope: VarScope, name: str) -> bytes:
    # ACTION-TYPE, NB-ARGS = 3, scope byte, untyped name: constant per variable
    # (docs/protocol.md "Payload shapes")
    _check_var_name(name)
    return bytes((ActionType.SET_VAR, 3, VarScope(scope))) + encode_name(name)


@lru_cache(maxsize=512)
def _unset_var(scope: VarScope, name: str) -> bytes:
    _check_var_name(name)
    return bytes((ActionType.UNSET_VAR, 2, VarScope(scope))) + encode_name(name)


def encode_actions(actions: Sequence[Action]) -> bytes:
    """LIST-OF-ACTIONS; never empty (adds NOOP_ACTION when ``actions`` is)."""
    if not actions:
        return _unset_var(NOOP_ACTION.scope, NOOP_ACTION.name)
    out = bytearray()
    for action in actions:
        if not isinstance(action, SetVar):
            out += _unset_var(action.scope, action.name)
        elif (value_class := action.value.__class__) is int or value_class is bool:
            # most SET-VARs of an ACK repeat (fail=0, rules_hit=0, ...): encoded once each;
            # bool is part of the key because True == 1 but BOOL and INT64 differ
            out += _small_set_var(
                action.scope, action.name, value_class is bool, action.value, action.type
            )
        else:
            out += _set_var_head(action.scope, action.name)
            out += encode_value(action.value, action.type)
    return bytes(out)


@lru_cache(maxsize=1024)
def _small_set_var(
    scope: VarScope, name: str, _is_bool: bool, value: int, data_type: DataType | None
) -> bytes:
    return _set_var_head(scope, name) + encode_value(value, data_type)


def encode_ack(stream_id: int, frame_id: int, actions: Sequence[Action]) -> bytes:
    """A whole ACK frame echoing the NOTIFY's ids (docs/protocol.md "NOTIFY and ACK")."""
    body = bytearray(LENGTH_PREFIX_SIZE)
    body += _ACK_TYPE_AND_FLAGS
    body += encode_varint(stream_id)
    body += encode_varint(frame_id)
    body += encode_actions(actions)
    LENGTH.pack_into(body, 0, len(body) - LENGTH_PREFIX_SIZE)
    return bytes(body)


def _scope(reader: Reader) -> VarScope:
    scope = reader.byte()
    if scope > VarScope.RESPONSE:
        raise invalid_frame(f"unknown variable scope {scope}")
    return VarScope(scope)


def decode_actions(payload: memoryview) -> tuple[Action, ...]:
    """LIST-OF-ACTIONS as HAProxy would read it; for test peers. Stricter than HAProxy, which
    stops silently at the first malformed action (docs/protocol.md "NOTIFY and ACK"): here it is
    an error."""
    reader = Reader(payload)
    actions: list[Action] = []
    while not reader.at_end():
        action_type = reader.byte()
        nb_args = reader.byte()
        if action_type == ActionType.SET_VAR and nb_args == 3:
            scope = _scope(reader)
            name = reader.name()
            data_type, value = reader.typed()
            actions.append(SetVar(scope, name, value, data_type))
        elif action_type == ActionType.UNSET_VAR and nb_args == 2:
            scope = _scope(reader)
            actions.append(UnsetVar(scope, reader.name()))
        else:
            raise invalid_frame(f"action {action_type} with {nb_args} args")
    return tuple(actions)


def typed_set_var(action: SetVar) -> SetVar:
    """The same SET-VAR with its type made explicit, as it reads back from the wire."""
    value = action.value
    data_type = infer_type(value) if action.type is None else action.type
    if isinstance(value, str):
        value = value.encode("utf-8")
    return SetVar(action.scope, action.name, value, data_type)
