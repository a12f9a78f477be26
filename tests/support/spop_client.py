"""A HAProxy-side SPOP peer over a real socket, built on ``spop.frames``: for raw protocol tests.

With an in-process gevent server, connect with ``green=True`` (gevent sockets, so the hub keeps
running while the test waits); against a subprocess agent, plain sockets are fine.
"""

from __future__ import annotations

import socket as stdlib_socket
from collections.abc import Iterable
from typing import Any

from coraza_spoa_py import spop
from coraza_spoa_py.spop import frames, handshake

# the HAPROXY-HELLO every version sends, minus the engine-id (docs/protocol.md "Test vectors" V4)
DEFAULT_HELLO = handshake.encode_haproxy_hello(max_frame_size=16380, capabilities="pipelining")


class SpopClient:
    """Plays HAProxy on one connection. Every read has ``timeout`` seconds."""

    def __init__(self, sock: Any, timeout: float = 10.0) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self._buffer = b""

    @classmethod
    def connect(cls, address: Any, *, green: bool = True, timeout: float = 10.0) -> SpopClient:
        """``address``: (host, port), or a str path for a unix socket."""
        module: Any = stdlib_socket
        if green:
            from gevent import socket as gevent_socket

            module = gevent_socket
        if isinstance(address, str):
            sock = module.socket(module.AF_UNIX, module.SOCK_STREAM)
        else:
            family = module.AF_INET6 if ":" in address[0] else module.AF_INET
            sock = module.socket(family, module.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return cls(sock, timeout)

    # ---- writing ------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def hello(self, data: bytes = DEFAULT_HELLO) -> handshake.AgentHelloFrame:
        """Send a HAPROXY-HELLO and return the decoded AGENT-HELLO (fails on anything else)."""
        self.send(data)
        frame = self.read_frame()
        assert frame.type == frames.FrameType.AGENT_HELLO, f"expected AGENT-HELLO, got {frame}"
        return handshake.decode_agent_hello(frame.payload)

    def notify(self, stream_id: int, frame_id: int, messages: Iterable[spop.Message]) -> None:
        self.send(frames.encode_notify(stream_id, frame_id, messages))

    # ---- reading ------------------------------------------------------------------------

    def read_frame(self) -> frames.RawFrame:
        """The next whole frame; raises ConnectionError on EOF before one arrives."""
        while True:
            result = frames.split_frame(self._buffer)
            if result is not None:
                frame, end = result
                self._buffer = self._buffer[end:]
                return frame
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"EOF with {len(self._buffer)} unparsed bytes")
            self._buffer += chunk

    def read_ack(self) -> tuple[int, int, tuple[spop.Action, ...]]:
        """The next frame, which must be an ACK: (stream_id, frame_id, actions)."""
        frame = self.read_frame()
        assert frame.type == frames.FrameType.ACK, f"expected ACK, got type {frame.type}"
        return frame.stream_id, frame.frame_id, frames.decode_actions(frame.payload)

    def read_disconnect(self) -> handshake.DisconnectFrame:
        """The next frame, which must be an AGENT-DISCONNECT."""
        frame = self.read_frame()
        assert frame.type == frames.FrameType.AGENT_DISCONNECT, f"expected DISCONNECT: {frame}"
        return handshake.decode_disconnect(frame.payload)

    def is_closed_by_peer(self) -> bool:
        """True when the agent has closed: a read returns EOF (or a reset) with no frame."""
        if self._buffer:
            return False
        try:
            return bool(self.sock.recv(65536) == b"")
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SpopClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def actions_by_name(actions: Iterable[spop.Action]) -> dict[str, Any]:
    """{name: value} of the SET-VARs (UNSET-VARs map to None)."""
    return {a.name: (a.value if isinstance(a, spop.SetVar) else None) for a in actions}


def message(name: str, **args: Any) -> spop.Message:
    """A NOTIFY message from keyword args; str values are sent as STRING bytes, int as INT64."""
    built = []
    for key, value in args.items():
        if isinstance(value, str):
            built.append(spop.Arg(key, spop.DataType.STRING, value.encode()))
        elif isinstance(value, bool):
            built.append(spop.Arg(key, spop.DataType.BOOL, value))
        elif isinstance(value, int):
            built.append(spop.Arg(key, spop.DataType.INT64, value))
        elif isinstance(value, bytes):
            built.append(spop.Arg(key, spop.DataType.BINARY, value))
        else:
            built.append(spop.Arg(key, spop.DataType.NULL, None))
    return spop.Message(name, tuple(built))
