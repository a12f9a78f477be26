"""Free ports and waiting for a listener. Never bind fixed ports: other tests run in parallel."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Protocol


class _Liveness(Protocol):
    def raise_if_exited(self) -> None: ...


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind port 0, read it, close).

    There is a small race until the real server binds it; every server we start uses
    SO_REUSEADDR, and the port comes from the kernel's ephemeral range, so collisions are rare.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str,
    port: int,
    *,
    timeout: float = 15.0,
    process: _Liveness | None = None,
) -> None:
    """Poll until something accepts TCP connections on host:port.

    If ``process`` is given and it exits meanwhile, fail at once with its logs instead of
    waiting for the timeout.
    """
    deadline = time.monotonic() + timeout
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        if process is not None:
            process.raise_if_exited()
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect((host, port))
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


def wait_for_unix_socket(
    path: str | Path, *, timeout: float = 15.0, process: _Liveness | None = None
) -> None:
    """Poll until something accepts connections on the unix socket ``path``."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None:
            process.raise_if_exited()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(1.0)
                sock.connect(str(path))
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {path} after {timeout}s") from None
            time.sleep(0.05)
