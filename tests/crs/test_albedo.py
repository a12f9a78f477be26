"""albedo: /reflect echoes a JSON spec, everything else is 200 (pure function and real server)."""

from __future__ import annotations

import base64
import json

from tests.crs.albedo import AlbedoServer, albedo_response
from tests.crs.sender import send_raw


def test_reflect_spec_with_body_and_encoded_body() -> None:
    spec = {"status": 503, "headers": {"X-A": "1"}, "body": "oops"}
    assert albedo_response("POST", "/reflect", json.dumps(spec).encode()) == (
        503,
        (("X-A", "1"),),
        b"oops",
    )
    encoded = {"status": 200, "encodedBody": base64.b64encode(b"\x00bin").decode()}
    assert albedo_response("POST", "/reflect", json.dumps(encoded).encode())[2] == b"\x00bin"


def test_everything_else_is_an_empty_200() -> None:
    assert albedo_response("GET", "/reflect", b"") == (200, (), b"")
    assert albedo_response("PROPFIND", "/x?y", b"data") == (200, (), b"")
    assert albedo_response("POST", "/reflect", b"not json")[0] == 400


def test_server_reflects_over_keep_alive_and_any_method() -> None:
    """1. Start the server on port 0. 2. A chunked POST /reflect gets the spec back.
    3. An unknown method on the same connection gets 200."""
    spec = json.dumps({"status": 201, "headers": {"Content-Type": "text/html"}, "body": "<b>"})
    chunk = f"{len(spec):x}\r\n{spec}\r\n0\r\n\r\n".encode()
    with AlbedoServer() as backend:
        address = ("127.0.0.1", backend.port)
        reply = send_raw(
            address,
            b"POST /reflect HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk,
        )
        assert reply.status == 201
        assert reply.header("content-type") == "text/html"
        assert reply.body == b"<b>"
        odd = send_raw(address, b"FOO /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
        assert (odd.status, odd.body) == (200, b"")
