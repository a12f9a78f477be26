"""Golden frames captured from real HAProxy 2.6 / 2.8 / 3.0 / 3.2 (data/README.md): each one
decodes through a Connection to its sidecar expectation, fed whole, byte by byte and with
trailing bytes, and re-encodes byte-exact."""

from __future__ import annotations

import json
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from coraza_spoa_py.spop import (
    Arg,
    Connection,
    ConnectionState,
    DataType,
    HaproxyDisconnect,
    HaproxyHello,
    Message,
    Notify,
    frames,
    handshake,
)
from tests.unit.spop import helpers
from tests.unit.spop.helpers import FEEDS, feed_events, ready_connection

DATA = Path(__file__).parent / "data"
CAPTURES = [
    (path.stem, frame)
    for path in sorted(DATA.glob("haproxy-*.json"))
    for frame in json.loads(path.read_text(encoding="utf-8"))["frames"]
]


def _value(data_type: DataType, value: Any) -> object:
    if data_type in (DataType.STRING, DataType.BINARY):
        return value.encode("latin-1")
    if data_type in (DataType.IPV4, DataType.IPV6):
        return ip_address(value)
    return value


def _expected_notify(expect: dict[str, Any]) -> Notify:
    args = tuple(
        Arg(name, DataType[type_name], _value(DataType[type_name], value))  # type: ignore[arg-type]
        for name, type_name, value in expect["args"]
    )
    return Notify(expect["stream_id"], expect["frame_id"], (Message(expect["message"], args),))


def test_corpus_covers_every_version_and_kind() -> None:
    kinds = {(source, frame["name"]) for source, frame in CAPTURES}
    for version in ("2.6", "2.8", "3.0", "3.2"):
        for name in ("hello", "hello-healthcheck", "notify-get", "notify-post"):
            assert (f"haproxy-{version}", name) in kinds
    assert ("haproxy-2.6", "haproxy-disconnect") in kinds


@pytest.mark.parametrize("feed", FEEDS)
@pytest.mark.parametrize(
    ("source", "frame"), CAPTURES, ids=[f"{s}-{f['name']}" for s, f in CAPTURES]
)
def test_capture_decodes_to_its_sidecar(source: str, frame: dict[str, Any], feed: str) -> None:
    wire = bytes.fromhex(frame["hex"])
    expect = frame["expect"]
    if expect["kind"] == "hello":
        conn = Connection(max_frame_size=1 << 20)
        (event,) = feed_events(conn, wire, feed)
        assert isinstance(event, HaproxyHello)
        assert event.capabilities == tuple(expect["capabilities"])
        assert event.healthcheck is expect["healthcheck"]
        assert event.offered_max_frame_size == expect["max_frame_size"]
        assert event.engine_id == expect["engine_id"]
        closing = ConnectionState.CLOSING if expect["healthcheck"] else ConnectionState.READY
        assert conn.state is closing
        assert conn.data_to_send() == handshake.encode_agent_hello(
            expect["max_frame_size"], "pipelining" in expect["capabilities"]
        )
    elif expect["kind"] == "notify":
        assert feed_events(ready_connection(), wire, feed) == [_expected_notify(expect)]
    else:
        conn = ready_connection()
        events = feed_events(conn, wire, feed)
        assert events == [HaproxyDisconnect(expect["status"], expect["message"].encode())]
        assert conn.state is ConnectionState.CLOSING


@pytest.mark.parametrize(
    ("source", "frame"), CAPTURES, ids=[f"{s}-{f['name']}" for s, f in CAPTURES]
)
def test_capture_re_encodes_byte_exact(source: str, frame: dict[str, Any]) -> None:
    wire = bytes.fromhex(frame["hex"])
    expect = frame["expect"]
    if expect["kind"] == "hello":
        again = handshake.encode_haproxy_hello(
            capabilities=",".join(expect["capabilities"]),
            max_frame_size=expect["max_frame_size"],
            engine_id=expect["engine_id"],
            healthcheck=expect["healthcheck"],
        )
    elif expect["kind"] == "notify":
        notify = _expected_notify(expect)
        again = frames.encode_notify(notify.stream_id, notify.frame_id, notify.messages)
    else:
        again = handshake.encode_haproxy_disconnect(expect["status"], expect["message"])
    assert again == wire


def test_hand_checked_values() -> None:
    """What the curl requests of data/README.md sent, spelled out once."""
    by_name = {f"{s}-{f['name']}": f["expect"] for s, f in CAPTURES}
    get = {name: (kind, value) for name, kind, value in by_name["haproxy-3.2-notify-get"]["args"]}
    assert get["query"] == ("STRING", "a=1")
    assert get["fwd"] == ("IPV6", "2001:db8::1")
    assert get["tls"] == ("BOOL", False)
    assert get["nothing"] == ("NULL", None)
    assert "x-test: \u00c3\u00a9\r\n" in get["headers"][1]  # UTF-8 é, kept as raw bytes
    post = {n: (k, v) for n, k, v in by_name["haproxy-2.6-notify-post"]["args"]}
    assert post["query"] == ("NULL", None)
    assert post["body"] == ("BINARY", "name=value&x=<script>")
    assert by_name["haproxy-2.6-notify-get"]["stream_id"] == 0  # <= 3.0: uniq_id, 0 is valid
    assert by_name["haproxy-3.2-notify-get"]["stream_id"] == 1  # 3.1+: odd per connection
    assert by_name["haproxy-3.2-hello"]["capabilities"] == ["pipelining"]
    assert by_name["haproxy-2.8-hello"]["capabilities"] == ["pipelining", "async"]


def test_health_check_hello_is_v3_in_every_version() -> None:
    """docs/protocol.md "Health checks": the same bytes in every version (3.1+ hard-codes them)."""
    checks = [f["hex"] for _, f in CAPTURES if f["name"] == "hello-healthcheck"]
    assert len(checks) == 4
    assert {bytes.fromhex(h) for h in checks} == {helpers.V3_HEALTHCHECK}
