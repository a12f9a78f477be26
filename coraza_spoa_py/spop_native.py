"""The SPOP codec with its NOTIFY decoder in C (``native/spop_fast.c``), for the server.

``NativeConnection`` is ``spop.Connection`` with one difference: NOTIFY frames are cut and
their messages decoded by ``_spop_fast`` (docs/performance.md change 22). That decoder takes
only the shapes HAProxy sends and hands every other payload, well-formed or not, back to the
pure-Python ``spop.frames.decode_messages``, which stays the reference: the errors are always
its own, and tests/integration/test_spop_native.py feeds both the same bytes and requires the same
result. Without the compiled module (``python -m coraza_spoa_py.native.build`` not run) this is
the pure codec, and ``NATIVE`` says so.
"""

from __future__ import annotations

from ipaddress import IPv6Address

from coraza_spoa_py.spop import Connection, ConnectionState
from coraza_spoa_py.spop.connection import _NeedData
from coraza_spoa_py.spop.events import Arg, DataType, Event, Message, Notify
from coraza_spoa_py.spop.frames import _ipv4
from coraza_spoa_py.spop.frames import decode_messages as python_decode_messages

try:
    from coraza_spoa_py import _spop_fast
except ImportError:  # pragma: no cover (the build is part of make install)
    NATIVE = False
else:
    NATIVE = True
    _spop_fast.setup(Arg, Message, Notify, DataType, _ipv4, IPv6Address)
    _native_decode = _spop_fast.decode_messages
    _next_notify = _spop_fast.next_notify


def decode_messages(payload: memoryview) -> tuple[Message, ...]:
    """``spop.frames.decode_messages``, in C when the payload has HAProxy's shapes."""
    if NATIVE:
        messages: tuple[Message, ...] | None = _native_decode(payload)
        if messages is not None:
            return messages
    return python_decode_messages(payload)


class NativeConnection(Connection):
    """``spop.Connection`` reading NOTIFY frames in C: once READY, a whole NOTIFY of HAProxy's
    shapes is cut, checked and decoded by ``_spop_fast.next_notify`` in one call; every other
    frame (handshake, DISCONNECT, unknown types, anything malformed, a frame not yet complete)
    takes ``Connection``'s own path, whose NOTIFY decoder is ``decode_messages`` above."""

    __slots__ = ()
    _decode_messages = staticmethod(decode_messages)

    def _next_protocol_event(self) -> Event | _NeedData:
        if NATIVE and self._state is ConnectionState.READY:
            found = _next_notify(self._buffer, self._offset, self._frame_limit)
            if found is not None:
                self._offset = found[1]
                return found[0]
        return super()._next_protocol_event()


__all__ = ["NATIVE", "NativeConnection", "decode_messages", "python_decode_messages"]
