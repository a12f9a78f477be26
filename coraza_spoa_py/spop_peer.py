"""The HAProxy side of a SPOP handshake over a blocking ``recv``: the one read loop a peer
playing HAProxy needs (the hand-off client, ``handoff.HandoffClient``, and the benchmark's
client). The codec ``spop/`` stays sans-IO: it only cuts frames (``frames.split_frame``).
"""

from __future__ import annotations

from collections.abc import Callable

from coraza_spoa_py.spop.frames import FrameType, RawFrame, split_frame


def read_agent_hello(recv: Callable[[], bytes]) -> tuple[RawFrame, bytes]:
    """After sending HAPROXY-HELLO: call ``recv()`` (a socket's next bytes, b"" once closed)
    until one whole frame is in, which must be AGENT-HELLO (docs/protocol.md "HELLO keys");
    returns it and the bytes that came after it. Raises ``ConnectionError`` otherwise."""
    data = b""
    while (found := split_frame(data)) is None:
        chunk = recv()
        if not chunk:
            raise ConnectionError("closed before AGENT-HELLO")
        data += chunk
    frame, end = found
    if frame.type != FrameType.AGENT_HELLO:
        raise ConnectionError(f"frame type {frame.type} instead of AGENT-HELLO")
    return frame, data[end:]
