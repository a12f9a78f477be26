"""SPOP connection state machine (placeholder: full implementation in progress)."""

from __future__ import annotations

from enum import Enum


class ConnectionState(Enum):
    AWAIT_HELLO = "await-hello"
    READY = "ready"
    CLOSING = "closing"
    CLOSED = "closed"


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


class Connection:
    def __init__(self, max_frame_size: int = 16380) -> None:
        self.max_frame_size = max_frame_size
        self.state = ConnectionState.AWAIT_HELLO
