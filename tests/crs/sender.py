"""Send one raw request over a plain TCP socket and read one HTTP response.

Raw sockets on purpose: many CRS stages are malformed (tabs before the method, ``HTTP\\1.0``,
a Content-Length that lies) and an HTTP client library would fix or refuse them. The write
side is never half-closed (ftw 1.x closes only after reading; a half-close can look like a
client abort to HAProxy). An error (``SendError``) is what ftw calls a TestError: no response
in time, or bytes that are not an HTTP response — the ``expect_error`` stages want exactly that.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field


class SendError(Exception):
    """No usable HTTP response (timeout, reset before any byte, garbage)."""


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    raw: bytes = field(repr=False)

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None


def send_raw(
    address: tuple[str, int], request: bytes, *, timeout_s: float = 5.0, head: bool = False
) -> Response:
    """Connect, send ``request`` whole, read until one full response (or close/timeout)."""
    deadline = time.monotonic() + timeout_s
    received = bytearray()
    try:
        with socket.create_connection(address, timeout=timeout_s) as sock:
            sock.sendall(request)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                sock.settimeout(remaining)
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    break
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                received += chunk
                if _complete(bytes(received), head):
                    break
    except OSError as exc:
        if not received:
            raise SendError(f"socket error: {exc}") from exc
    if not received:
        raise SendError("no response from server (request likely timed out)")
    return parse_response(bytes(received))


def parse_response(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise SendError(f"not an HTTP response: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    response = Response(int(parts[1]), parts[2] if len(parts) > 2 else "", tuple(headers), b"", raw)
    if response.header("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return Response(response.status, response.reason, response.headers, body, raw)


def _complete(raw: bytes, head: bool) -> bool:
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return False
    header_block = raw[:end].lower()
    body = raw[end + 4 :]
    status_line = header_block.split(b"\r\n", 1)[0].split(b" ")
    status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
    if head or status in (204, 304) or 100 <= status < 200:
        return True
    for line in header_block.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip() == b"content-length":
            try:
                return len(body) >= int(value.strip())
            except ValueError:
                return False
        if name.strip() == b"transfer-encoding" and b"chunked" in value:
            return body.endswith(b"0\r\n\r\n")
    return False  # no length: the response ends when the server closes


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    rest = body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2 :]
    return bytes(out)
