"""The C reader of ``coraza-req``/``coraza-res`` arguments (native/spop_fast.c ``read_request``/
``read_response``, through ``messages.parse_request_message``/``parse_response_message``)
against its reference, the Python parser: for the messages real HAProxy sent and for generated
messages of every argument type and value, C gives the Python parser's result or None (then the
Python parser runs), never a result where the Python parser raises; it gives a result for every
shape HAProxy sends; an id is generated once, and only by the parser that gives the result.
docs/performance.md change 49."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coraza_spoa_py import _spop_fast, messages, spop_native
from coraza_spoa_py.agent import MESSAGE_REQUEST, MESSAGE_RESPONSE
from coraza_spoa_py.header_blocks import HeaderRecords, pack_headers
from coraza_spoa_py.messages import (
    MalformedArgumentError,
    RequestMessage,
    ResponseMessage,
    python_parse_request_message,
    python_parse_response_message,
)
from coraza_spoa_py.models import ResponseInfo
from coraza_spoa_py.spop import Arg, DataType, Message, frames

CAPTURES = Path(__file__).parents[1] / "unit" / "spop" / "data"
# the compiled module: not a unit test (docs/development.md "Layout")
pytestmark = pytest.mark.integration


class Ids:
    """A ``new_id`` that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return f"generated-{self.calls}"


def _python_request(message: Message) -> RequestMessage | str:
    try:
        return python_parse_request_message(message, Ids())
    except MalformedArgumentError as exc:
        return f"error: {exc}"


def _python_response(message: Message) -> ResponseMessage | str:
    try:
        return python_parse_response_message(message)
    except MalformedArgumentError as exc:
        return f"error: {exc}"


def _same_request(message: Message) -> RequestMessage | None:
    """C's result, checked against the reference; None when C leaves the message."""
    ids = Ids()
    native = _spop_fast.read_request(message, ids)
    expected = _python_request(message)
    if native is None:
        assert ids.calls == 0  # the Python parser generates the id it gives
        return None
    assert native == expected
    # equal is not enough where types differ yet compare equal (True == 1, b"" vs ()...)
    for field in ("method", "path", "query", "version", "body", "src_ip", "src_port"):
        got, want = getattr(native.request, field), getattr(expected.request, field)
        assert type(got) is type(want), field
    assert type(native.request.headers) is type(expected.request.headers)
    assert ids.calls == (1 if native.id_generated else 0)
    return native


def _same_response(message: Message) -> ResponseMessage | None:
    native = _spop_fast.read_response(message)
    if native is None:
        return None
    expected = _python_response(message)
    assert native == expected
    assert type(native.response.headers) is type(expected.response.headers)
    assert type(native.response.status) is type(expected.response.status)
    return native


def _captured_messages() -> list[Message]:
    found: list[Message] = []
    for path in sorted(CAPTURES.glob("haproxy-*.json")):
        for frame in json.loads(path.read_text(encoding="utf-8"))["frames"]:
            raw = frames.decode_frame(bytes.fromhex(frame["hex"]))
            if raw.type == frames.FrameType.NOTIFY:
                found += spop_native.decode_messages(raw.payload)
    return [m for m in found if m.name in (MESSAGE_REQUEST, MESSAGE_RESPONSE)]


CAPTURED = _captured_messages()


def test_real_haproxy_messages_are_read_in_c_alike() -> None:
    # (the captures are of coraza-req messages; responses through HAProxy: the e2e tests)
    assert len([m for m in CAPTURED if m.name == MESSAGE_REQUEST]) >= 3
    for message in CAPTURED:
        if message.name == MESSAGE_REQUEST:
            assert _same_request(message) is not None, message
        else:
            assert _same_response(message) is not None, message


def _request(*args: Arg) -> Message:
    return Message(MESSAGE_REQUEST, args)


def _text(name: str, value: bytes, type_: DataType = DataType.STRING) -> Arg:
    return Arg(name, type_, value)


HEADERS = b"host: example.com\r\nuser-agent: curl\r\n\r\n"


def test_a_message_of_haproxys_shapes_is_read_in_c_field_by_field() -> None:
    message = _request(
        _text("app", b"site"),
        _text("id", b"tx-\xe9"),
        Arg("src-ip", DataType.IPV4, IPv4Address("192.0.2.1")),
        Arg("src-port", DataType.INT64, 51000),
        # a v4 client on a dual-stack listener: unmapped
        Arg("dst-ip", DataType.IPV6, IPv6Address("::ffff:198.51.100.7")),
        Arg("dst-port", DataType.INT64, 443),
        _text("method", b"POST"),
        _text("path", b"/login"),
        Arg("query", DataType.NULL, None),
        _text("url", b"/login"),
        _text("version", b"HTTP/2.0"),
        _text("headers", HEADERS),
        _text("body", b"a=1", DataType.BINARY),
        Arg("body-size", DataType.INT64, 3),
        Arg("exportRuleIDs", DataType.BOOL, True),
        Arg("detect-only", DataType.INT32, 0),
        # the first of a name wins, as args_by_name
        _text("method", b"GET"),
    )
    parsed = _same_request(message)
    assert parsed is not None
    request = parsed.request
    assert request.transaction_id == "tx-é"
    assert (request.method, request.path, request.query, request.target) == (
        b"POST", b"/login", None, b"/login",
    )  # fmt: skip
    assert request.version == b"2.0"
    assert request.headers == ((b"host", b"example.com"), (b"user-agent", b"curl"))
    assert request.src_ip == IPv4Address("192.0.2.1")
    assert request.dst_ip == IPv4Address("198.51.100.7")
    assert (request.src_port, request.dst_port, request.declared_body_size) == (51000, 443, 3)
    assert (parsed.export_rule_ids, parsed.detect_only, parsed.id_generated) == (True, False, False)


def test_a_request_without_id_gets_one_generated_id() -> None:
    for message in (
        _request(),
        _request(_text("id", b"")),
        _request(Arg("id", DataType.NULL, None)),
    ):
        ids = Ids()
        parsed = messages.parse_request_message(message, ids)
        assert (parsed.request.transaction_id, parsed.id_generated, ids.calls) == (
            "generated-1", True, 1,
        )  # fmt: skip
        # the defaults of an empty message
        assert (parsed.request.method, parsed.request.path, parsed.request.version) == (
            b"GET", b"/", b"1.1",
        )  # fmt: skip
        assert parsed.request.headers == () and parsed.request.body == b""


def test_a_response_is_read_in_c_alike() -> None:
    message = Message(
        MESSAGE_RESPONSE,
        (
            _text("id", b"tx-1"),
            _text("version", b"1.1"),
            Arg("status", DataType.UINT32, 404),
            _text("headers", b"\x0ccontent-type\x09text/html\x00\x00", DataType.BINARY),
            _text("body", b"<html>", DataType.BINARY),
            # read by the request only: never checked here
            Arg("src-port", DataType.STRING, b"not a port"),
        ),
    )
    parsed = _same_response(message)
    assert parsed is not None
    assert parsed.response.transaction_id == "tx-1"
    assert (parsed.response.status, parsed.response.body) == (404, b"<html>")
    assert parsed.response.headers == HeaderRecords(pack_headers([(b"content-type", b"text/html")]))
    assert _same_response(Message(MESSAGE_RESPONSE, ())) == ResponseMessage(
        response=ResponseInfo(transaction_id="", status=0)
    )


@pytest.mark.parametrize(
    "arg",
    [
        # what the Python parser converts its own way: C leaves it, the result is the same
        Arg("src-ip", DataType.STRING, b" 192.0.2.9 "),
        _text("headers", b"host: a\r\n\r\n" + b"x: " + b"y" * 300_000 + b"\r\n\r\n"),
        _text("headers", b"\xff\xff\xff\x7f", DataType.BINARY),  # a long varint
        # what the Python parser refuses: C leaves it, the error is the Python parser's
        Arg("src-ip", DataType.STRING, b"no address"),
        Arg("src-port", DataType.INT64, 65_536),
        Arg("src-port", DataType.BOOL, True),
        Arg("body-size", DataType.INT64, -1),
        Arg("method", DataType.INT32, 5),
        Arg("detect-only", DataType.STRING, b"yes"),
        _text("headers", b"host: a\r\n"),  # truncated
    ],
    ids=repr,
)
def test_what_c_leaves_goes_to_the_python_parser(arg: Arg) -> None:
    message = _request(_text("id", b"tx"), arg)
    ids = Ids()
    assert _spop_fast.read_request(message, ids) is None and ids.calls == 0
    expected = _python_request(message)
    try:
        got: RequestMessage | str = messages.parse_request_message(message, Ids())
    except MalformedArgumentError as exc:
        got = f"error: {exc}"
    assert got == expected


def test_what_is_not_a_message_of_args_is_left() -> None:
    not_args = Message(MESSAGE_REQUEST, (("id", DataType.STRING, b"x"),))  # type: ignore[arg-type]
    assert _spop_fast.read_request(not_args, Ids()) is None
    assert _spop_fast.read_response(not_args) is None
    assert _spop_fast.read_request(object(), Ids()) is None  # type: ignore[arg-type]


def test_an_error_of_new_id_propagates() -> None:
    def broken() -> str:
        raise LookupError("no ids left")

    with pytest.raises(LookupError, match="no ids left"):
        _spop_fast.read_request(_request(), broken)


_NAMES = st.sampled_from(
    sorted(messages.REQUEST_ARGS | messages.RESPONSE_ARGS | {"other", "héllo"})
)
_BLOCKS = st.one_of(
    st.sampled_from([b"", b"\r\n", HEADERS, b"a:b\r\n", b" : x\r\n\r\n", b"\x00\x00", b"\x01a"]),
    st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=8)), max_size=3).map(
        lambda pairs: (
            b"".join(bytes([len(n)]) + n + bytes([len(v)]) + v for n, v in pairs) + b"\x00\x00"
        )
    ),
    st.binary(max_size=40),
)
_VALUES: st.SearchStrategy[tuple[DataType, object]] = st.one_of(
    st.tuples(st.sampled_from([DataType.STRING, DataType.BINARY]), _BLOCKS),
    st.tuples(
        st.sampled_from([DataType.STRING, DataType.BINARY]),
        st.sampled_from([b"HTTP/1.1", b"HTTP/", b"2.0", b"10.0.0.1", b"::ffff:1.2.3.4", b"x"]),
    ),
    st.tuples(
        st.sampled_from([DataType.INT32, DataType.UINT32, DataType.INT64, DataType.UINT64]),
        st.one_of(st.integers(-2, 70_000), st.integers(-(2**64), 2**64)),
    ),
    st.tuples(st.just(DataType.BOOL), st.booleans()),
    st.tuples(st.just(DataType.NULL), st.none()),
    st.tuples(
        st.sampled_from([DataType.IPV4, DataType.IPV6]),
        st.one_of(
            st.binary(min_size=4, max_size=4).map(IPv4Address),
            st.binary(min_size=16, max_size=16).map(IPv6Address),
            st.integers(0, 2**32 - 1).map(lambda v: IPv6Address(0xFFFF00000000 | v)),
            st.just(b"\x01\x02\x03\x04"),
        ),
    ),
)
_ARGS = st.lists(
    st.builds(lambda name, typed: Arg(name, typed[0], typed[1]), _NAMES, _VALUES), max_size=10
).map(tuple)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(_ARGS)
def test_generated_requests_read_alike_or_are_left(args: tuple[Arg, ...]) -> None:
    # _same_request: C's result equals the Python parser's, so never one where it raises
    _same_request(_request(*args))


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(_ARGS)
def test_generated_responses_read_alike_or_are_left(args: tuple[Arg, ...]) -> None:
    _same_response(Message(MESSAGE_RESPONSE, args))
