"""Bad input from a raw-socket client: the right AGENT-DISCONNECT status (docs/protocol.md "Status
codes"), only
that connection closes, and another live connection keeps being served."""

from __future__ import annotations

import struct

import pytest

from coraza_spoa_py import spop
from coraza_spoa_py.spop import frames, handshake
from coraza_spoa_py.spop.wire import encode_kv_list
from tests.support.inprocess import connect, path_notify, running_server
from tests.support.spop_client import actions_by_name, message

pytestmark = pytest.mark.integration

S = spop.StatusCode


def _hello_without(key: str, **overrides: object) -> bytes:
    items = {
        "supported-versions": spop.TypedValue(spop.DataType.STRING, b"2.0"),
        "max-frame-size": spop.TypedValue(spop.DataType.UINT32, 16380),
        "capabilities": spop.TypedValue(spop.DataType.STRING, b"pipelining"),
    }
    items.pop(key, None)
    for name, value in overrides.items():
        items[name] = spop.TypedValue(spop.DataType.STRING, str(value).encode())
    return frames.encode_frame(frames.FrameType.HAPROXY_HELLO, encode_kv_list(items.items()))


BAD_INPUTS = {
    # "GET " read as a length: 0x47455420 bytes, far above the pre-HELLO limit → too big
    "http-request-garbage": (False, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", S.TOO_BIG),
    # a small length, an unknown frame type (0xaa, with FIN) first → invalid frame
    "unknown-type-first": (
        False,
        struct.pack(">I", 8) + bytes.fromhex("aa00000001 0000 aa"),
        S.INVALID,
    ),
    # garbage flags without FIN → fragmentation not supported (docs/protocol.md "Frame layout")
    "garbage-without-fin": (False, struct.pack(">I", 8) + b"\xaa" * 8, S.FRAG_NOT_SUPPORTED),
    "length-below-7": (False, struct.pack(">I", 3) + b"\x01\x00\x00", S.INVALID),
    "notify-before-hello": (
        False,
        frames.encode_notify(1, 1, [message("coraza-req", path="/")]),
        S.INVALID,
    ),
    # HELLO whose stream-id varint (f0 f0 ...) never terminates inside the 7-byte frame
    "truncated-varint": (False, struct.pack(">I", 7) + b"\x01\x00\x00\x00\x01\xf0\xf0", S.INVALID),
    "hello-without-max-frame-size": (False, _hello_without("max-frame-size"), S.NO_FRAME_SIZE),
    "hello-without-version": (False, _hello_without("supported-versions"), S.NO_VSN),
    "unsupported-version": (
        False,
        handshake.encode_haproxy_hello(supported_versions="1.0"),
        S.BAD_VSN,
    ),
    "max-frame-size-below-256": (
        False,
        handshake.encode_haproxy_hello(max_frame_size=255),
        S.BAD_FRAME_SIZE,
    ),
    # after HELLO (negotiated 1024): a frame of 2000 bytes → too big
    "length-above-negotiated-max": (
        True,
        struct.pack(">I", 2000) + b"\x03\x00\x00\x00\x01",
        S.TOO_BIG,
    ),
    "notify-without-fin": (
        True,
        frames.encode_frame(frames.FrameType.NOTIFY, b"", 1, 1, flags=0),
        S.FRAG_NOT_SUPPORTED,
    ),
    "second-hello": (True, handshake.encode_haproxy_hello(), S.INVALID),
}


@pytest.mark.parametrize("after_hello, data, status", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_gets_disconnect_with_status_and_only_that_connection_closes(
    after_hello: bool, data: bytes, status: spop.StatusCode, log_records
) -> None:
    """1. A live connection (HELLO done) and a bad one.
    2. The bad one sends its bytes (after its own HELLO offering 1024 when after_hello).
    3. It gets AGENT-DISCONNECT with the status of docs/protocol.md "Status codes", then EOF; a
    warning is logged.
    4. The live connection still gets its NOTIFY answered."""
    with running_server(max_frame_size=4096) as server, connect(server) as live:
        with connect(server, hello=False) as bad:
            if after_hello:
                assert (
                    bad.hello(handshake.encode_haproxy_hello(max_frame_size=1024)).max_frame_size
                    == 1024
                )
            bad.send(data)
            disconnect = bad.read_disconnect()
            assert disconnect.status == status
            assert disconnect.message  # HAProxy logs it; never empty
            assert bad.is_closed_by_peer()
        path_notify(live, 1, "/alive")
        assert actions_by_name(live.read_ack()[2]) == {"path": b"/alive"}
    warnings = [r["message"] for r in log_records if r["level"] == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith("protocol error")
