"""SPOP status codes and the one exception root of the codec.

Every protocol failure the codec detects is raised as ``SpopError`` carrying the status the
caller must put in the AGENT-DISCONNECT frame it sends before closing (h11's
``error_status_hint`` idea). Nothing else may escape the codec: a ``ValueError`` or
``IndexError`` from a bad frame is a bug.
"""

from __future__ import annotations

from enum import IntEnum


class StatusCode(IntEnum):
    """The status codes of an AGENT-DISCONNECT (docs/protocol.md "Status codes"; HAProxy's
    ``spop_err_reasons`` has the same numbers and texts)."""

    NORMAL = 0
    IO = 1
    TIMEOUT = 2
    TOO_BIG = 3
    INVALID = 4
    NO_VSN = 5
    NO_FRAME_SIZE = 6
    NO_CAP = 7
    BAD_VSN = 8
    BAD_FRAME_SIZE = 9
    FRAG_NOT_SUPPORTED = 10
    INTERLACED_FRAMES = 11
    FRAMEID_NOTFOUND = 12
    RES = 13
    UNKNOWN = 99


STATUS_MESSAGES: dict[StatusCode, str] = {
    StatusCode.NORMAL: "normal",
    StatusCode.IO: "I/O error",
    StatusCode.TIMEOUT: "a timeout occurred",
    StatusCode.TOO_BIG: "frame is too big",
    StatusCode.INVALID: "invalid frame received",
    StatusCode.NO_VSN: "version value not found",
    StatusCode.NO_FRAME_SIZE: "max-frame-size value not found",
    StatusCode.NO_CAP: "capabilities value not found",
    StatusCode.BAD_VSN: "unsupported version",
    StatusCode.BAD_FRAME_SIZE: "max-frame-size too big or too small",
    StatusCode.FRAG_NOT_SUPPORTED: "fragmentation not supported",
    StatusCode.INTERLACED_FRAMES: "invalid interlaced frames",
    StatusCode.FRAMEID_NOTFOUND: "frame-id not found",
    StatusCode.RES: "resource allocation error",
    StatusCode.UNKNOWN: "an unknown error occurred",
}


class SpopError(Exception):
    """A protocol error: send AGENT-DISCONNECT with ``status`` and close the connection."""

    def __init__(self, status: StatusCode, detail: str = "") -> None:
        self.status = status
        self.detail = detail or STATUS_MESSAGES[status]
        super().__init__(f"{self.detail} (SPOP status {int(status)})")
