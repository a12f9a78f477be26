"""The SPOP codec with its NOTIFY decoder and ACK encoder in C (``native/spop_fast.c``), for
the server.

``NativeConnection`` is ``spop.Connection`` with two differences: NOTIFY frames are cut and
their messages decoded by ``_spop_fast`` (docs/performance.md changes 22 and 23), and ACK frames
are encoded by it (change 27). The C code takes only the shapes HAProxy sends and the actions
the agent answers with, and hands everything else, well-formed or not, back to the pure-Python
``spop.frames`` functions, which stay the reference: the errors are always their own, and
tests/integration/test_spop_native.py feeds both the same input and requires the same result.
Without the compiled module (``python -m coraza_spoa_py.native.build`` not run) this is the
pure codec, and ``NATIVE`` says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv6Address

from coraza_spoa_py.spop import Connection, ConnectionState
from coraza_spoa_py.spop.connection import _NeedData
from coraza_spoa_py.spop.events import (
    Action,
    Arg,
    DataType,
    Event,
    Message,
    Notify,
    SetVar,
    UnsetVar,
)
from coraza_spoa_py.spop.frames import _ipv4
from coraza_spoa_py.spop.frames import decode_messages as python_decode_messages
from coraza_spoa_py.spop.frames import encode_ack as python_encode_ack

try:
    from coraza_spoa_py import _spop_fast
except ImportError:  # pragma: no cover (the build is part of make install)
    NATIVE = False
else:
    NATIVE = True
    _spop_fast.setup(Arg, Message, Notify, DataType, _ipv4, IPv6Address)
    _native_decode = _spop_fast.decode_messages
    _next_notify = _spop_fast.next_notify
    _spop_fast.setup_actions(SetVar, UnsetVar)
    _native_encode_ack = _spop_fast.encode_ack


def decode_messages(payload: memoryview) -> tuple[Message, ...]:
    """``spop.frames.decode_messages``, in C when the payload has HAProxy's shapes."""
    if NATIVE:
        messages: tuple[Message, ...] | None = _native_decode(payload)
        if messages is not None:
            return messages
    return python_decode_messages(payload)


def encode_ack(stream_id: int, frame_id: int, actions: Sequence[Action]) -> bytes:
    """``spop.frames.encode_ack``, in C when the actions have the agent's shapes."""
    if NATIVE:
        frame: bytes | None = _native_encode_ack(stream_id, frame_id, actions)
        if frame is not None:
            return frame
    return python_encode_ack(stream_id, frame_id, actions)


class NativeConnection(Connection):
    """``spop.Connection`` reading NOTIFY frames in C: once READY, a whole NOTIFY of HAProxy's
    shapes is cut, checked and decoded by ``_spop_fast.next_notify`` in one call; every other
    frame (handshake, DISCONNECT, unknown types, anything malformed, a frame not yet complete)
    takes ``Connection``'s own path, whose NOTIFY decoder is ``decode_messages`` above."""

    __slots__ = ()
    _decode_messages = staticmethod(decode_messages)
    _encode_ack = staticmethod(encode_ack)

    def _next_protocol_event(self) -> Event | _NeedData:
        if NATIVE and self._state is ConnectionState.READY:
            found = _next_notify(self._buffer, self._offset, self._frame_limit)
            if found is not None:
                self._offset = found[1]
                return found[0]
        return super()._next_protocol_event()


__all__ = [
    "NATIVE",
    "NativeConnection",
    "decode_messages",
    "encode_ack",
    "python_decode_messages",
    "python_encode_ack",
]
