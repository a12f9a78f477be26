"""Events the codec produces and the actions an agent answers with.

All are frozen, slotted dataclasses. Strings and binaries from the wire stay ``bytes`` and are
never decoded (docs/protocol.md "Strings are bytes"); only names that HAProxy's config spells
(message and argument names, KV keys) are turned into ``str``, with latin-1 so that no byte can
fail."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address

from coraza_spoa_py.spop.errors import StatusCode


class DataType(IntEnum):
    """Typed-data type ids, docs/protocol.md "Typed data" (the low nibble of the type byte)."""

    NULL = 0
    BOOL = 1
    INT32 = 2
    UINT32 = 3
    INT64 = 4
    UINT64 = 5
    IPV4 = 6
    IPV6 = 7
    STRING = 8
    BINARY = 9


class VarScope(IntEnum):
    """SET-VAR / UNSET-VAR scopes, docs/protocol.md "Payload shapes"."""

    PROCESS = 0
    SESSION = 1
    TRANSACTION = 2
    REQUEST = 3
    RESPONSE = 4


# What a typed value holds once decoded: NULL -> None, BOOL -> bool, the four integer types ->
# int, IPV4/IPV6 -> ipaddress objects, STRING/BINARY -> bytes.
Value = None | bool | int | IPv4Address | IPv6Address | bytes


@dataclass(frozen=True, slots=True)
class TypedValue:
    type: DataType
    value: Value


@dataclass(frozen=True, slots=True)
class Arg:
    """One NOTIFY message argument. ``name`` may be empty and may repeat (docs/protocol.md "Payload
    shapes")."""

    name: str
    type: DataType
    value: Value


@dataclass(frozen=True, slots=True)
class Message:
    name: str
    args: tuple[Arg, ...]


# ---- events produced by Connection.next_event() -------------------------------------------


@dataclass(frozen=True, slots=True)
class HaproxyHello:
    """HAProxy's HELLO after negotiation; the AGENT-HELLO reply is already queued."""

    supported_versions: str
    offered_max_frame_size: int
    capabilities: tuple[str, ...]
    engine_id: str | None
    healthcheck: bool
    # what we answered
    max_frame_size: int
    pipelining: bool


@dataclass(frozen=True, slots=True)
class Notify:
    stream_id: int
    frame_id: int
    messages: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class HaproxyDisconnect:
    """HAProxy closes; the AGENT-DISCONNECT reply is already queued (docs/protocol.md
    "Disconnect")."""

    status: int
    message: bytes


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the TCP stream (``receive_data(b"")``). ``unparsed_bytes`` > 0 means it
    closed in the middle of a frame: those bytes were dropped (a quiet close, docs/protocol.md
    "Disconnect")."""

    unparsed_bytes: int = 0


# ---- actions, for ACK frames ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetVar:
    """SET-VAR. ``type`` None picks one from the Python value: bool -> BOOL (checked before int,
    docs/protocol.md "Booleans before integers"), int -> INT64, bytes -> BINARY, str -> STRING
    (utf-8), None -> NULL, IPv4Address/IPv6Address -> IPV4/IPV6."""

    scope: VarScope
    name: str
    value: Value | str
    type: DataType | None = None


@dataclass(frozen=True, slots=True)
class UnsetVar:
    scope: VarScope
    name: str


Action = SetVar | UnsetVar
Event = HaproxyHello | Notify | HaproxyDisconnect | ConnectionClosed

__all__ = [
    "Action",
    "Arg",
    "ConnectionClosed",
    "DataType",
    "Event",
    "HaproxyDisconnect",
    "HaproxyHello",
    "Message",
    "Notify",
    "SetVar",
    "StatusCode",
    "TypedValue",
    "UnsetVar",
    "Value",
    "VarScope",
]
