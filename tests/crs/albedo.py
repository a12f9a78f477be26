"""A backend that behaves like albedo, the CRS project's test backend (docs/crs.md "Test file
formats").

- ``POST /reflect`` with a JSON body ``{"status", "headers", "body" | "encodedBody"}`` answers
  with that status, those headers and that body (``encodedBody`` is base64): this is how the
  RESPONSE-95x tests make the backend "leak" an error page the response rules must catch.
- Anything else (any method, any path, any body) answers 200 with an empty body.

``albedo_response`` is the pure part and ``wire_headers`` the headers it goes out with
(``Server``, ``Date``, ``Content-Type``, ``Content-Length``), both also used by the direct mode
so both modes see the same response, headers included (the response rules read them:
``Content-Type`` decides whether the body is inspected at all). ``AlbedoServer`` serves it
over HTTP/1.1 keep-alive on a thread per connection (HAProxy reuses backend connections). It
must not judge or log test results.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REFLECT_PATH = "/reflect"
SERVER_NAME = "albedo-py"
# hop-by-hop or framing headers a reflect spec may name: the server sets its own
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})

# (status, headers, body)
Reply = tuple[int, tuple[tuple[str, str], ...], bytes]


def albedo_response(method: str, path: str, body: bytes) -> Reply:
    """What albedo answers to one request."""
    if method == "POST" and path.split("?", 1)[0] == REFLECT_PATH:
        reflected = _reflect(body)
        if reflected is not None:
            return reflected
        return 400, (("Content-Type", "text/plain"),), b"invalid reflect spec\n"
    return 200, (), b""


def wire_headers(headers: tuple[tuple[str, str], ...], payload: bytes) -> list[tuple[str, str]]:
    """The header lines of one reply, in the order the server sends them."""
    lines = [("Server", SERVER_NAME), ("Date", formatdate(usegmt=True))]
    lines += [(n, v) for n, v in headers if n.lower() not in _FRAMING_HEADERS]
    if payload and not any(name.lower() == "content-type" for name, _ in headers):
        lines.append(("Content-Type", "text/plain"))
    lines.append(("Content-Length", str(len(payload))))
    return lines


def _reflect(body: bytes) -> Reply | None:
    try:
        spec: Any = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(spec, dict):
        return None
    status = int(spec.get("status") or 200)
    headers = tuple((str(k), str(v)) for k, v in (spec.get("headers") or {}).items())
    if spec.get("encodedBody"):
        try:
            payload = base64.b64decode(spec["encodedBody"])
        except (binascii.Error, ValueError):
            return None
    else:
        payload = str(spec.get("body") or "").encode("utf-8")
    return status, headers, payload


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, HAProxy reuses the connection
    server_version = SERVER_NAME

    def __getattr__(self, name: str) -> Any:
        # BaseHTTPRequestHandler dispatches to do_<METHOD>; CRS sends any method at all
        if name.startswith("do_"):
            return self._answer
        raise AttributeError(name)

    def _answer(self) -> None:
        body = self._read_body()
        status, headers, payload = albedo_response(self.command, self.path, body)
        self.send_response_only(status)  # Server and Date come from wire_headers
        for name, value in wire_headers(headers, payload):
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass  # thousands of requests: the runner reports, the backend stays quiet


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # HAProxy closing an idle keep-alive connection is not an error worth a traceback


class AlbedoServer:
    """``with AlbedoServer() as backend: backend.port`` — bound to 127.0.0.1:0."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._httpd = _QuietServer((host, 0), _Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> AlbedoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> AlbedoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
