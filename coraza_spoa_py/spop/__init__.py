"""Sans-IO SPOP (HAProxy SPOE <-> agent protocol), version 2.0.

Bytes in, events out; ``send_*`` return bytes. Standard library only: no sockets, no logging, no
clock, no gevent (a test enforces it). Reference: docs/protocol.md.
"""

from __future__ import annotations

from coraza_spoa_py.spop.connection import NEED_DATA, Connection, ConnectionState
from coraza_spoa_py.spop.errors import STATUS_MESSAGES, SpopError, StatusCode
from coraza_spoa_py.spop.events import (
    Action,
    Arg,
    ConnectionClosed,
    DataType,
    Event,
    HaproxyDisconnect,
    HaproxyHello,
    Message,
    Notify,
    SetVar,
    TypedValue,
    UnsetVar,
    Value,
    VarScope,
)

__all__ = [
    "NEED_DATA",
    "STATUS_MESSAGES",
    "Action",
    "Arg",
    "Connection",
    "ConnectionClosed",
    "ConnectionState",
    "DataType",
    "Event",
    "HaproxyDisconnect",
    "HaproxyHello",
    "Message",
    "Notify",
    "SetVar",
    "SpopError",
    "StatusCode",
    "TypedValue",
    "UnsetVar",
    "Value",
    "VarScope",
]
