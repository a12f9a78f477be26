"""Free ports and waiting for a listener. Never bind fixed ports: other tests run in parallel."""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path
from typing import Protocol


class _Liveness(Protocol):
    def raise_if_exited(self) -> None: ...


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (ip-sysctl.rst)."""
    try:
        low, high = Path(_EPHEMERAL_RANGE_FILE).read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


_EPHEMERAL_RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
_FIRST_PORT = 10000
_LAST_PORT = 65535
_ENOUGH_PORTS = 5000  # a full run hands out a few hundred
_handed_out: set[int] = set()
_random = random.Random()


def _listener_range() -> tuple[int, int]:
    """Ports no outgoing connection takes: the larger stretch below or above the ephemeral
    range (Linux's default leaves 10000-32767). A kernel whose range covers nearly everything
    leaves neither, and then any port will do."""
    ephemeral_low, ephemeral_high = _ephemeral_range()
    below = (_FIRST_PORT, ephemeral_low - 1)
    above = (ephemeral_high + 1, _LAST_PORT)
    wider = max(below, above, key=lambda span: span[1] - span[0])
    if wider[1] - wider[0] < _ENOUGH_PORTS:
        return _FIRST_PORT, _LAST_PORT
    return wider


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago and that nothing else will be given.

    Not from the kernel's ephemeral range: every outgoing connection (HAProxy to the agent,
    a client, wait_for_port's probes) takes its local port from that range, so a port read
    from bind(0) could be in use by a connection when the server we start binds it a few
    seconds later (CI saw "Address already in use"). Outside the range only listeners bind,
    and this process never hands out the same port twice.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low, high = _listener_range()
    for _ in range(1000):
        port = _random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port on {host} between {low} and {high}")


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
