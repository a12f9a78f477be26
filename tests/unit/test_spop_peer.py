"""spop_peer.py: the HAProxy side's read of AGENT-HELLO over a ``recv`` loop (outside the
sans-IO codec): a HELLO split over reads, what follows it kept, any other frame or a close
refused."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from coraza_spoa_py.spop import StatusCode, handshake
from coraza_spoa_py.spop.frames import FrameType
from coraza_spoa_py.spop_peer import read_agent_hello


def _chunks(*parts: bytes) -> Callable[[], bytes]:
    """A ``recv`` that returns ``parts`` one by one, then b"" (closed)."""
    pending = list(parts)
    return lambda: pending.pop(0) if pending else b""


def test_read_agent_hello_reassembles_a_split_hello_and_keeps_what_follows() -> None:
    hello = handshake.encode_agent_hello(16380, True)
    after = handshake.encode_agent_disconnect(StatusCode.NORMAL, "bye")
    frame, rest = read_agent_hello(_chunks(hello[:3], hello[3:9], hello[9:] + after))
    assert frame.type == FrameType.AGENT_HELLO
    assert handshake.decode_agent_hello(frame.payload).max_frame_size == 16380
    assert rest == after


def test_read_agent_hello_refuses_another_frame_or_a_close() -> None:
    disconnect = handshake.encode_agent_disconnect(StatusCode.NORMAL, "bye")
    with pytest.raises(ConnectionError, match="instead of AGENT-HELLO"):
        read_agent_hello(_chunks(disconnect))
    hello = handshake.encode_agent_hello(16380, True)
    with pytest.raises(ConnectionError, match="closed before AGENT-HELLO"):
        read_agent_hello(_chunks(hello[:5]))
