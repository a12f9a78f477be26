"""Listening sockets: a ``BindAddress`` (TCP over IPv4/IPv6/a host name, or a unix socket) bound,
then listening; the address it got; a unix socket file removed safely.

One way to listen for every socket the agent serves: the SPOP listener (``server``), the master's
socket its workers inherit (``master``: bound once, listened on by the first worker that serves),
a worker's hand-off socket and its metrics socket (``runtime``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from gevent import socket

from coraza_spoa_py.settings import BindAddress

LISTEN_BACKLOG = 1024


def bind_socket(bind: BindAddress) -> socket.socket:
    """``bind`` bound, not yet listening (the master binds once for its workers, the first
    worker that serves listens); a unix socket file left by a dead agent is replaced."""
    if bind.kind == "unix":
        return _bind_unix(bind.path)
    return _bind_tcp(bind.host, bind.port)


def listen(bind: BindAddress, backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """``bind`` bound and listening."""
    sock = bind_socket(bind)
    try:
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def bound_address(bind: BindAddress, sock: socket.socket) -> BindAddress:
    """What ``sock`` is bound to, as ``bind`` says it: for TCP port 0, the port the kernel
    picked."""
    if bind.kind == "unix":
        return bind
    host, port = sock.getsockname()[:2]
    return BindAddress(kind="tcp", host=str(host), port=int(port))


def remove_unix_socket(path: str) -> None:
    # Only ever remove a socket file: a typo in `bind` must not delete a regular file.
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)


def _bind_tcp(host: str, port: int) -> socket.socket:
    if host in ("", "*"):
        # ":9000" (coraza-spoa's Go form) means every interface: dual-stack when possible.
        candidates = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        candidates = [(family, str(info[0])) for family, _, _, _, info in infos]
    last_error: OSError | None = None
    for family, address in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and address == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((address, port))
        except OSError as exc:
            sock.close()
            last_error = exc
            continue
        return sock
    raise last_error or OSError(f"cannot listen on {host}:{port}")


def _bind_unix(path: str) -> socket.socket:
    if _unix_socket_is_live(path):
        raise OSError(errno.EADDRINUSE, f"another process listens on {path}")
    remove_unix_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    return sock


def _unix_socket_is_live(path: str) -> bool:
    # A socket file left by a crashed agent refuses connections and may be replaced; one that
    # accepts belongs to a running agent, which we must not steal from (Go's net.Listen fails).
    if not os.path.exists(path):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


__all__ = ["LISTEN_BACKLOG", "bind_socket", "bound_address", "listen", "remove_unix_socket"]
