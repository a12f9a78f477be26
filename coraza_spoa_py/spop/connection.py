"""The agent side of one SPOP connection, sans-IO: bytes in, events out.

``Connection`` buffers what the transport read, cuts it into frames, enforces the protocol
rules of docs/protocol.md (HELLO first, FIN on every frame, size limits, version 2.0) and answers
the handshake and HAProxy's DISCONNECT itself (the replies wait in ``data_to_send()``). It never
touches a socket, a clock, a logger or gevent; the caller (``server``) owns all of that.

Usage (docs/architecture.md)::

    conn.receive_data(chunk)        # b"" = EOF
    while (event := conn.next_event()) is not NEED_DATA: ...
    sock.sendall(conn.data_to_send())
    sock.sendall(conn.send_ack(event.stream_id, event.frame_id, actions))

Every protocol error raises ``SpopError(status)``; the state becomes ERROR and the caller must
send ``send_disconnect(e.status, e.detail)`` and close.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Final

from coraza_spoa_py.spop.errors import STATUS_MESSAGES, SpopError, StatusCode
from coraza_spoa_py.spop.events import (
    Action,
    ConnectionClosed,
    Event,
    HaproxyDisconnect,
    HaproxyHello,
    Notify,
)
from coraza_spoa_py.spop.frames import (
    LENGTH,
    LENGTH_PREFIX_SIZE,
    MAX_FRAME_LENGTH,
    MIN_FRAME_LENGTH,
    MIN_MAX_FRAME_SIZE,
    FrameFlags,
    FrameType,
    RawFrame,
    decode_messages,
    encode_ack,
    parse_frame,
)
from coraza_spoa_py.spop.handshake import (
    CAPABILITY_PIPELINING,
    decode_disconnect,
    decode_haproxy_hello,
    encode_agent_disconnect,
    encode_agent_hello,
)

# HAProxy's own default: tune.bufsize (16384) - 4 (docs/protocol.md "HELLO keys"). Production
# passes its configured cap (settings.Config.max_frame_size); the negotiated size is
# min(offer, cap).
DEFAULT_MAX_FRAME_SIZE = 16380
# Before the HELLO nothing is negotiated; HAProxy's HELLO is ~130 bytes, and haproxy-go uses
# the same 64 KiB bound until negotiation (docs/protocol.md "Frame size").
PRE_HELLO_FRAME_LIMIT = 64 * 1024
# "2.0"; announcing a major implies all its minors (docs/protocol.md "HELLO keys")
SUPPORTED_MAJOR_VERSION = 2
_NORMAL_AGENT_DISCONNECT = encode_agent_disconnect(
    StatusCode.NORMAL, STATUS_MESSAGES[StatusCode.NORMAL]
)
_AGENT_SIDE_TYPES = frozenset({FrameType.AGENT_HELLO, FrameType.AGENT_DISCONNECT, FrameType.ACK})
_STATUSES = frozenset(int(s) for s in StatusCode)


class ConnectionState(Enum):
    AWAIT_HELLO = "await-hello"  # nothing but HAPROXY-HELLO is accepted
    READY = "ready"  # handshake done: NOTIFY and HAPROXY-DISCONNECT
    CLOSING = "closing"  # healthcheck answered, or DISCONNECT: flush data_to_send() and close
    CLOSED = "closed"  # the peer's EOF was reported as ConnectionClosed
    ERROR = "error"  # a SpopError was raised: send_disconnect(status) and close


class _NeedData(Enum):
    """Sentinel type of NEED_DATA (h11's idea): more bytes are needed for the next event. An
    enum member, so that ``if event is NEED_DATA`` narrows the type for mypy."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData.NEED_DATA


def supports_our_version(supported_versions: str) -> bool:
    """True if the comma list of ``Major.Minor`` (spaces allowed) has any 2.x (docs/protocol.md
    "HELLO keys"). Entries that do not parse are ignored rather than fatal: only "no 2.x at all"
    is an error."""
    for entry in supported_versions.split(","):
        major, dot, minor = entry.strip().partition(".")
        if dot and major.isdigit() and minor.isdigit() and int(major) == SUPPORTED_MAJOR_VERSION:
            return True
    return False


class Connection:
    """One SPOP connection seen from the agent. ``max_frame_size`` is our cap: the negotiated
    size is min(HAProxy's offer, cap), with no 64 KiB ceiling (docs/compatibility.md "Protocol")."""

    __slots__ = (
        "_buffer",
        "_eof",
        "_error",
        "_frame_limit",
        "_offset",
        "_outgoing",
        "_state",
        "configured_max_frame_size",
        "max_frame_size",
        "pipelining",
    )

    # the NOTIFY payload decoder and the ACK encoder; a subclass may swap in ones that give the
    # same results (coraza_spoa_py/spop_native.py: in C, these as their reference)
    _decode_messages = staticmethod(decode_messages)
    _encode_ack = staticmethod(encode_ack)

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        if not MIN_MAX_FRAME_SIZE <= max_frame_size <= MAX_FRAME_LENGTH:
            raise ValueError(f"max_frame_size must be in [256, 2^32-1], not {max_frame_size}")
        self.configured_max_frame_size = max_frame_size
        # the negotiated size once READY; until then our cap, which bounds what we send
        self.max_frame_size = max_frame_size
        self.pipelining = False
        self._frame_limit = PRE_HELLO_FRAME_LIMIT
        self._state = ConnectionState.AWAIT_HELLO
        self._error: SpopError | None = None
        # Buffer strategy: while everything received has been consumed, the next chunk is kept
        # as the immutable bytes it came in (no copy, and views into it stay valid); only a
        # frame split over several chunks is accumulated in a bytearray.
        self._buffer: bytes | bytearray = b""
        self._offset = 0
        self._eof = False
        self._outgoing: list[bytes] = []

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not yet consumed: the start of a frame still being received.
        The server's per-frame deadline runs while this is not 0."""
        return len(self._buffer) - self._offset

    # ---- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the transport; ``b""`` means EOF. Nothing is parsed here."""
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("receive_data() after EOF")
        chunk = data if isinstance(data, bytes) else bytes(data)
        buffer, offset = self._buffer, self._offset
        if offset >= len(buffer):
            self._buffer, self._offset = chunk, 0
            return
        if isinstance(buffer, bytes):
            buffer = bytearray(memoryview(buffer)[offset:])
        else:
            # CPython deletes from a bytearray's front in O(1) (it moves its start pointer)
            del buffer[:offset]
        buffer += chunk
        self._buffer, self._offset = buffer, 0

    def next_event(self) -> Event | _NeedData:
        """The next event, or NEED_DATA. Raises ``SpopError`` on any protocol error; after
        that, every call raises it again (state ERROR)."""
        state = self._state
        if state is ConnectionState.READY or state is ConnectionState.AWAIT_HELLO:
            try:
                return self._next_protocol_event()
            except SpopError as error:
                self._state = ConnectionState.ERROR
                self._error = error
                self._buffer, self._offset = b"", 0
                raise
        if state is ConnectionState.CLOSING:
            # After our AGENT-HELLO to a healthcheck or our AGENT-DISCONNECT, nothing HAProxy
            # sends matters any more (docs/protocol.md "Health checks", "Disconnect"): drop it
            # and wait for the close.
            self._buffer, self._offset = b"", 0
            return self._closed() if self._eof else NEED_DATA
        if state is ConnectionState.CLOSED:
            return ConnectionClosed()
        assert self._error is not None
        raise self._error

    def _closed(self) -> ConnectionClosed:
        # EOF (or RST) is a normal close (docs/protocol.md "EOF"); mid-frame we only report how
        # much of the unfinished frame was dropped.
        unparsed = len(self._buffer) - self._offset
        self._buffer, self._offset = b"", 0
        self._state = ConnectionState.CLOSED
        return ConnectionClosed(unparsed)

    def _next_protocol_event(self) -> Event | _NeedData:
        while True:
            frame = self._next_frame()
            if frame is None:
                return self._closed() if self._eof else NEED_DATA
            event = self._handle(frame)
            if event is not None:
                return event

    def _next_frame(self) -> RawFrame | None:
        buffer, offset = self._buffer, self._offset
        available = len(buffer) - offset
        if available < LENGTH_PREFIX_SIZE:
            if not available:
                # every byte read is parsed: hold none of them until the next read (an idle
                # connection kept its last chunk, maybe a whole response body: docs/performance.md
                # change 51)
                self._buffer, self._offset = b"", 0
            return None
        (length,) = LENGTH.unpack_from(buffer, offset)
        # judge LENGTH before waiting for (or buffering) the payload (docs/protocol.md "Judge
        # the length first")
        if length < MIN_FRAME_LENGTH:
            raise SpopError(StatusCode.INVALID, f"frame length {length} is below 7")
        if length > self._frame_limit:
            raise SpopError(
                StatusCode.TOO_BIG, f"frame of {length} bytes exceeds {self._frame_limit}"
            )
        end = offset + LENGTH_PREFIX_SIZE + length
        if len(buffer) < end:
            return None
        self._offset = end
        start = offset + LENGTH_PREFIX_SIZE
        if isinstance(buffer, bytes):
            body = memoryview(buffer)[start:end]
        else:
            # copy out: a view would pin the bytearray and forbid the next resize
            body = memoryview(memoryview(buffer)[start:end].tobytes())
        return parse_frame(body)

    def _handle(self, frame: RawFrame) -> Event | None:
        frame_type = frame.type
        # we never announce fragmentation, so a continuation (type 0) or a frame without FIN is
        # an error 10, what HAProxy 3.1+ does too (docs/protocol.md "Capabilities by version")
        if frame_type == FrameType.UNSET or not frame.flags & FrameFlags.FIN:
            raise SpopError(StatusCode.FRAG_NOT_SUPPORTED)
        if self._state is ConnectionState.AWAIT_HELLO:
            if frame_type != FrameType.HAPROXY_HELLO:
                raise SpopError(StatusCode.INVALID, f"frame type {frame_type} before HELLO")
            return self._on_hello(frame)
        if frame_type == FrameType.NOTIFY:
            return Notify(frame.stream_id, frame.frame_id, self._decode_messages(frame.payload))
        if frame_type == FrameType.HAPROXY_DISCONNECT:
            return self._on_disconnect(frame)
        if frame_type == FrameType.HAPROXY_HELLO:
            raise SpopError(StatusCode.INVALID, "second HELLO")
        if frame_type in _AGENT_SIDE_TYPES:
            raise SpopError(StatusCode.INVALID, f"agent frame type {frame_type} from HAProxy")
        # an unknown frame type is skipped, forward compatible (docs/protocol.md "Unknown frame
        # types"); it was already bounded by the negotiated size and had FIN
        return None

    @staticmethod
    def _check_zero_ids(frame: RawFrame) -> None:
        # HELLO and DISCONNECT carry stream-id = frame-id = 0 (docs/protocol.md "Frame layout")
        if frame.stream_id or frame.frame_id:
            raise SpopError(StatusCode.INVALID, "stream-id/frame-id must be 0")

    def _on_hello(self, frame: RawFrame) -> HaproxyHello:
        self._check_zero_ids(frame)
        hello = decode_haproxy_hello(frame.payload)
        # the handshake's status codes (docs/protocol.md "Status codes")
        if hello.supported_versions is None:
            raise SpopError(StatusCode.NO_VSN)
        if not supports_our_version(hello.supported_versions):
            raise SpopError(StatusCode.BAD_VSN)
        offered = hello.max_frame_size
        if offered is None:
            raise SpopError(StatusCode.NO_FRAME_SIZE)
        if offered < MIN_MAX_FRAME_SIZE:
            raise SpopError(StatusCode.BAD_FRAME_SIZE, f"max-frame-size {offered} is below 256")
        negotiated = min(offered, self.configured_max_frame_size)
        pipelining = CAPABILITY_PIPELINING in hello.capabilities
        self.max_frame_size = self._frame_limit = negotiated
        self.pipelining = pipelining
        self._outgoing.append(encode_agent_hello(negotiated, pipelining))
        # answer a healthcheck, then close: it never sends a NOTIFY (docs/protocol.md "Health
        # checks")
        healthcheck = hello.healthcheck
        self._state = ConnectionState.CLOSING if healthcheck else ConnectionState.READY
        return HaproxyHello(
            supported_versions=hello.supported_versions,
            offered_max_frame_size=offered,
            capabilities=hello.capabilities,
            engine_id=hello.engine_id,
            healthcheck=healthcheck,
            max_frame_size=negotiated,
            pipelining=pipelining,
        )

    def _on_disconnect(self, frame: RawFrame) -> HaproxyDisconnect:
        self._check_zero_ids(frame)
        disconnect = decode_disconnect(frame.payload)
        # answer AGENT-DISCONNECT, then close; in-flight ACKs no longer matter (docs/protocol.md
        # "Disconnect")
        self._outgoing.append(_NORMAL_AGENT_DISCONNECT)
        self._state = ConnectionState.CLOSING
        return HaproxyDisconnect(disconnect.status, disconnect.message)

    # ---- output --------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Frames the codec queued itself (AGENT-HELLO, the AGENT-DISCONNECT reply)."""
        if not self._outgoing:
            return b""
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        return data

    def send_ack(self, stream_id: int, frame_id: int, actions: Sequence[Action]) -> bytes:
        """One whole ACK frame (never empty: docs/protocol.md "NOTIFY and ACK"). Raises
        ``SpopError`` without changing the state when this ACK cannot be sent: TOO_BIG when it
        would exceed the negotiated max-frame-size (HAProxy would drop the whole connection,
        docs/protocol.md "Judge the length first"), UNKNOWN when an action cannot be encoded (bad
        name, value out of range). The connection is still usable: answer the NOTIFY with a
        smaller ACK."""
        try:
            frame = self._encode_ack(stream_id, frame_id, actions)
        except (TypeError, ValueError) as error:
            raise SpopError(StatusCode.UNKNOWN, f"cannot encode ACK: {error}") from error
        size = len(frame) - LENGTH_PREFIX_SIZE
        if size > self.max_frame_size:
            raise SpopError(
                StatusCode.TOO_BIG,
                f"ACK of {size} bytes exceeds max-frame-size {self.max_frame_size}",
            )
        return frame

    def send_disconnect(self, status: StatusCode | int, message: str | bytes = "") -> bytes:
        """An AGENT-DISCONNECT frame; the caller sends it and closes. ``message`` defaults to
        HAProxy's text for the status and is cut to 255 bytes (docs/protocol.md "Disconnect")."""
        if not message:
            message = STATUS_MESSAGES[StatusCode(status)] if status in _STATUSES else ""
        if self._state is ConnectionState.AWAIT_HELLO or self._state is ConnectionState.READY:
            self._state = ConnectionState.CLOSING
        return encode_agent_disconnect(status, message)


__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "NEED_DATA",
    "PRE_HELLO_FRAME_LIMIT",
    "Connection",
    "ConnectionState",
    "supports_our_version",
]
