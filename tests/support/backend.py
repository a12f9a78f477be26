"""A tiny HTTP backend for HAProxy to forward to; run it with ``start_backend()``.

Any method, any path → 200 with a short text body, except:
- ``GET /status/<code>`` → that status (go-ftw's marker requests use /status/200);
- ``POST /reflect`` with a JSON body ``{"status": int, "headers": {..}, "body": str}`` or
  ``"encodedBody": base64`` → that response (albedo's /reflect, for the CRS RESPONSE tests).
Each response carries ``X-Backend-Path`` (the path received) and ``X-Backend-Body-Length``.

It is a separate process (``python -m tests.support.backend --port N``) so that it keeps real
threads even if something in the test process monkey-patches with gevent.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.support.haproxy import PROJECT_ROOT
from tests.support.ports import free_port, wait_for_port
from tests.support.process import ManagedProcess, python_module_argv

BODY = b"backend ok\n"
_STATUS_PATH = re.compile(r"^/status/(\d{3})$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        status, headers, payload = 200, {"Content-Type": "text/plain"}, BODY
        if match := _STATUS_PATH.match(path):
            status = int(match.group(1))
        elif path == "/reflect" and self.command == "POST":
            status, headers, payload = _reflect(body)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("X-Backend-Path", path)
        self.send_header("X-Backend-Body-Length", str(len(body)))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _handle  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # quiet: HAProxy's log already has every request


def _reflect(body: bytes) -> tuple[int, dict[str, str], bytes]:
    try:
        spec = json.loads(body or b"{}")
    except ValueError:
        return 400, {"Content-Type": "text/plain"}, b"bad reflect spec\n"
    headers = {str(k): str(v) for k, v in (spec.get("headers") or {}).items()}
    if "encodedBody" in spec:
        payload = base64.b64decode(spec["encodedBody"])
    else:
        payload = str(spec.get("body", "")).encode()
    return int(spec.get("status", 200)), headers, payload


class BackendProcess(ManagedProcess):
    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        argv = python_module_argv("tests.support.backend", "--port", str(port))
        super().__init__("http-backend", argv, log_path=log_path, cwd=PROJECT_ROOT)


def start_backend(log_path: Path, port: int | None = None) -> BackendProcess:
    """Start the backend on a free port and wait until it accepts; stop() it when done."""
    backend = BackendProcess(port or free_port(), log_path)
    backend.start()
    try:
        wait_for_port("127.0.0.1", backend.port, process=backend)
    except BaseException:
        backend.stop()
        raise
    return backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    # socketserver's default listen backlog is 5: a burst of HAProxy connections would see
    # SYNs dropped and retried after 1, 3, 7, 15 s (and 504s at `timeout server`).
    ThreadingHTTPServer.request_queue_size = 1024
    with ThreadingHTTPServer((args.host, args.port), _Handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
