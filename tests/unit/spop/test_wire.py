"""wire.py: varint, typed data, untyped strings, KV lists and the bounds-checked Reader."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coraza_spoa_py.spop import DataType, SpopError, StatusCode, TypedValue, wire
from tests.unit.spop import helpers

# docs/protocol.md "Varints" worked examples, plus haproxy-go's golden 0x1234 -> F4 94 01
# (docs/development.md "Blocking calls in tests")
VARINTS = [
    (0, "00"),
    (239, "ef"),
    (240, "f000"),
    (241, "f100"),
    (256, "f001"),
    (1000, "f82f"),
    (2287, "ff7f"),
    (2288, "f08000"),
    (0x1234, "f49401"),
    (16380, "fcf006"),
    (264431, "ffff7f"),
    (264432, "f0808000"),
    (33818863, "ffffff7f"),
    (33818864, "f080808000"),
    (4328786159, "ffffffff7f"),
    (4328786160, "f08080808000"),
    (2**32 - 1, "fff0fefe7e"),
    (2**63 - 1, "fff0fefefefefefefe06"),
    (2**64 - 1, "fff0fefefefefefefe0e"),
]


@pytest.mark.parametrize(("value", "hex_bytes"), VARINTS)
def test_varint_vectors(value: int, hex_bytes: str) -> None:
    data = bytes.fromhex(hex_bytes)
    assert wire.encode_varint(value) == data
    assert wire.decode_varint(data) == (value, len(data))
    # with trailing bytes, the decoder stops exactly after the varint
    assert wire.decode_varint(data + b"\x07\xff") == (value, len(data))


def test_varint_negative_is_twos_complement() -> None:
    """docs/protocol.md "Varints": -1 as int64 is 2^64-1, 10 bytes; the minimum int64 still fits."""
    assert wire.encode_varint(-1) == bytes.fromhex("fff0fefefefefefefe0e")
    assert wire.encode_varint(-5) == bytes.fromhex("fbf0fefefefefefefe0e")
    value, _ = wire.decode_varint(wire.encode_varint(-(2**63)))
    assert wire.to_signed64(value) == -(2**63)
    assert wire.to_signed64(2**63 - 1) == 2**63 - 1


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1])
def test_varint_out_of_range_is_refused(value: int) -> None:
    with pytest.raises(ValueError, match="64 bits"):
        wire.encode_varint(value)


def test_varint_limit_is_ten_bytes() -> None:
    """N = 10 bytes decodes; N + 1 (a tenth byte still carrying the continuation bit) is an
    invalid frame, even though more bytes follow (docs/protocol.md "Bounded varints")."""
    ten = bytes.fromhex("fff0fefefefefefefe0e")
    assert wire.decode_varint(ten) == (2**64 - 1, 10)
    eleven = bytes.fromhex("f0" + "80" * 9 + "00")
    with pytest.raises(SpopError) as info:
        wire.decode_varint(eleven)
    assert info.value.status is StatusCode.INVALID
    assert "longer than 10" in info.value.detail


def test_varint_above_uint64_is_invalid() -> None:
    # ten bytes whose sum passes 2^64-1: HAProxy would wrap, we refuse
    with pytest.raises(SpopError, match="above 2"):
        wire.decode_varint(bytes.fromhex("fff0fefefefefefefe0f"))


@pytest.mark.parametrize("data", ["", "f0", "ff80", "f0" + "80" * 8])
def test_truncated_varint_is_invalid(data: str) -> None:
    with pytest.raises(SpopError) as info:
        wire.decode_varint(bytes.fromhex(data))
    assert info.value.status is StatusCode.INVALID
    assert "truncated" in info.value.detail


def test_varint_decoder_respects_reader_end() -> None:
    """The end of the frame, not the end of the buffer, bounds a varint."""
    reader = wire.Reader(bytes.fromhex("f08000"), 0, 2)
    with pytest.raises(SpopError, match="truncated varint"):
        reader.varint()


@given(st.integers(min_value=0, max_value=2**64 - 1))
@settings(max_examples=200)
def test_varint_round_trip(value: int) -> None:
    data = wire.encode_varint(value)
    assert len(data) <= wire.MAX_VARINT_BYTES
    assert wire.decode_varint(data) == (value, len(data))


# ---- typed data --------------------------------------------------------------------------------

TYPED = [
    ("00", DataType.NULL, None),
    ("01", DataType.BOOL, False),
    ("11", DataType.BOOL, True),
    ("0201", DataType.INT32, 1),
    ("02fff0fefefefefefefe0e", DataType.INT32, -1),
    ("03fcf006", DataType.UINT32, 16380),
    ("04c8", DataType.INT64, 200),
    ("04f40a", DataType.INT64, 404),
    ("04fbf0fefefefefefefe0e", DataType.INT64, -5),
    ("05fff0fefefefefefefe0e", DataType.UINT64, 2**64 - 1),
    ("06c000020a", DataType.IPV4, IPv4Address("192.0.2.10")),
    ("0720010db8000000000000000000000001", DataType.IPV6, IPv6Address("2001:db8::1")),
    ("0803616263", DataType.STRING, b"abc"),
    ("0800", DataType.STRING, b""),
    ("0900", DataType.BINARY, b""),
    ("0902ff00", DataType.BINARY, b"\xff\x00"),
    # not UTF-8, and stays bytes (docs/protocol.md "Strings are bytes")
    ("0802c328", DataType.STRING, b"\xc3\x28"),
]


@pytest.mark.parametrize(("hex_bytes", "data_type", "value"), TYPED)
def test_typed_vectors(hex_bytes: str, data_type: DataType, value: object) -> None:
    data = bytes.fromhex(hex_bytes)
    decoded = wire.decode_typed(data)
    assert decoded == TypedValue(data_type, value)  # type: ignore[arg-type]
    assert type(decoded.value) is type(value)
    assert wire.encode_typed(data_type, value) == data


def test_v12_argument_encodings() -> None:
    """docs/protocol.md "Test vectors" V12: req.hdrs_bin as BINARY, req.hdrs as STRING, IPv6,
    status, NULL."""
    hdrs_bin = wire.decode_typed(helpers.V12_HDRS_BIN)
    assert hdrs_bin.type is DataType.BINARY
    assert hdrs_bin.value == b"\x04host\x0bexample.com\x0auser-agent\x08curl/8.0\x00\x00"
    hdrs = wire.decode_typed(helpers.V12_HDRS)
    assert hdrs == TypedValue(DataType.STRING, b"host: example.com\r\nuser-agent: curl/8.0\r\n\r\n")
    ipv6 = wire.decode_typed(helpers.V12_IPV6)
    assert ipv6 == TypedValue(DataType.IPV6, IPv6Address("2001:db8::1"))
    for data, typed in [(helpers.V12_HDRS_BIN, hdrs_bin), (helpers.V12_HDRS, hdrs)]:
        assert wire.encode_typed(typed.type, typed.value) == data
    assert wire.encode_typed(ipv6.type, ipv6.value) == helpers.V12_IPV6


@pytest.mark.parametrize("type_byte", [0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F])
def test_reserved_type_ids_are_invalid(type_byte: int) -> None:
    """docs/protocol.md "Unknown type ids": ids 10-15 cannot be skipped, so the frame is invalid."""
    with pytest.raises(SpopError) as info:
        wire.decode_typed(bytes((type_byte, 0)))
    assert info.value.status is StatusCode.INVALID


@pytest.mark.parametrize("type_byte", [0x21, 0x91, 0x18, 0x10, 0x12, 0xF8])
def test_flag_bits_other_than_bool_are_invalid(type_byte: int) -> None:
    """BOOL is exactly 0x01/0x11; any other flag nibble is refused (docs/protocol.md)."""
    with pytest.raises(SpopError, match="unsupported typed-data byte"):
        wire.decode_typed(bytes((type_byte, 0, 0, 0, 0)))


@pytest.mark.parametrize(
    "hex_bytes",
    ["", "06c00002", "07" + "00" * 15, "0803ab", "0905", "04f0", "09f0"],
)
def test_truncated_typed_data_is_invalid(hex_bytes: str) -> None:
    with pytest.raises(SpopError) as info:
        wire.decode_typed(bytes.fromhex(hex_bytes))
    assert info.value.status is StatusCode.INVALID


def test_trailing_bytes_after_typed_data_are_invalid() -> None:
    with pytest.raises(SpopError, match="trailing"):
        wire.decode_typed(bytes.fromhex("0000"))


def test_string_length_past_the_end_is_invalid_without_truncation() -> None:
    """A length that runs past the end must not be silently sliced short (docs/development.md
    "Bounded input")."""
    reader = wire.Reader(bytes.fromhex("0805616263"))
    with pytest.raises(SpopError, match="runs past the end"):
        reader.typed()


def test_reader_bounds() -> None:
    reader = wire.Reader(b"\x01\x02\x03", 1, 2)
    assert reader.remaining() == 1
    assert not reader.at_end()
    assert reader.byte() == 2
    assert reader.at_end()
    with pytest.raises(SpopError, match="truncated field"):
        reader.byte()
    assert bytes(wire.Reader(memoryview(b"abc")).take(3)) == b"abc"


# ---- encoding rules ---------------------------------------------------------------------------


def test_infer_type_checks_bool_before_int() -> None:
    """docs/protocol.md "Booleans before integers": True is BOOL 0x11, not INT64 1."""
    assert wire.encode_value(True) == b"\x11"
    assert wire.encode_value(False) == b"\x01"
    assert wire.encode_value(1) == b"\x04\x01"
    assert wire.encode_value(-5) == bytes.fromhex("04fbf0fefefefefefefe0e")
    assert wire.encode_value(b"\xff") == b"\x09\x01\xff"
    assert wire.encode_value(bytearray(b"ab")) == b"\x09\x02ab"
    assert wire.encode_value("é") == b"\x08\x02\xc3\xa9"
    assert wire.encode_value(None) == b"\x00"
    assert wire.encode_value(IPv4Address("10.0.0.1")) == bytes.fromhex("060a000001")
    assert wire.encode_value(IPv6Address("::1")) == b"\x07" + b"\x00" * 15 + b"\x01"
    assert wire.encode_value(7, DataType.UINT32) == b"\x03\x07"
    assert wire.encode_value(memoryview(b"x"), DataType.STRING) == b"\x08\x01x"


@pytest.mark.parametrize(
    ("data_type", "value", "error"),
    [
        (DataType.INT32, "1", TypeError),
        (DataType.INT64, 2**63, ValueError),
        (DataType.INT64, -(2**63) - 1, ValueError),
        (DataType.UINT32, -1, ValueError),
        (DataType.UINT64, 2**64, ValueError),
        (DataType.BOOL, 1, TypeError),
        (DataType.IPV4, IPv6Address("::1"), TypeError),
        (DataType.IPV6, IPv4Address("127.0.0.1"), TypeError),
        (DataType.STRING, 5, TypeError),
        (DataType.NULL, 0, TypeError),
    ],
)
def test_encode_refuses_values_that_do_not_fit(
    data_type: DataType, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        wire.encode_typed(data_type, value)


def test_encode_accepts_plain_int_type_ids() -> None:
    """A type given as a plain int (e.g. read back from a wire) means the same DataType."""
    assert wire.encode_typed(8, "ab") == b"\x08\x02ab"  # type: ignore[arg-type]
    assert wire.encode_typed(2, -1) == bytes.fromhex("02fff0fefefefefefefe0e")  # type: ignore[arg-type]
    assert wire.encode_typed(1, True) == b"\x11"  # type: ignore[arg-type]
    assert wire.encode_typed(0, None) == b"\x00"  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="BINARY needs bytes"):
        wire.encode_typed(9, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="out of range for UINT32"):
        wire.encode_typed(3, -1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown SPOP data type"):
        wire.encode_typed(12, None)  # type: ignore[arg-type]


def test_infer_type_refuses_unknown_python_types() -> None:
    with pytest.raises(TypeError, match="no SPOP type"):
        wire.infer_type(1.5)


# ---- untyped strings and KV lists -----------------------------------------------------------


def test_names_are_latin1_both_ways() -> None:
    assert wire.encode_name("") == b"\x00"
    assert wire.encode_name("é") == b"\x01\xe9"
    reader = wire.Reader(b"\x01\xe9\x02\xff\x00")
    assert reader.name() == "é"
    assert reader.bytes_field() == b"\xff\x00"
    assert wire.encode_bytes_field(b"\xff\x00") == b"\x02\xff\x00"


def test_kv_list_keeps_order_and_duplicates() -> None:
    items = [
        ("a", TypedValue(DataType.INT64, 1)),
        ("a", TypedValue(DataType.STRING, b"x")),
        ("", TypedValue(DataType.NULL, None)),
    ]
    data = wire.encode_kv_list(items)
    assert data == b"\x01a\x04\x01\x01a\x08\x01x\x00\x00"
    assert wire.decode_kv_list(data) == items
    assert wire.decode_kv_list(b"") == []


def test_kv_list_key_without_value_is_invalid() -> None:
    with pytest.raises(SpopError, match="truncated"):
        wire.decode_kv_list(b"\x01a")


# ---- hypothesis round trips ---------------------------------------------------------------------

_signed = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_unsigned = st.integers(min_value=0, max_value=2**64 - 1)
typed_values = st.one_of(
    st.just(TypedValue(DataType.NULL, None)),
    st.builds(TypedValue, st.just(DataType.BOOL), st.booleans()),
    st.builds(TypedValue, st.sampled_from([DataType.INT32, DataType.INT64]), _signed),
    st.builds(TypedValue, st.sampled_from([DataType.UINT32, DataType.UINT64]), _unsigned),
    st.builds(
        TypedValue, st.just(DataType.IPV4), st.builds(IPv4Address, st.integers(0, 2**32 - 1))
    ),
    st.builds(
        TypedValue, st.just(DataType.IPV6), st.builds(IPv6Address, st.integers(0, 2**128 - 1))
    ),
    st.builds(
        TypedValue,
        st.sampled_from([DataType.STRING, DataType.BINARY]),
        st.binary(max_size=300),
    ),
)
names = st.text(alphabet=st.characters(max_codepoint=255), max_size=20)


@given(typed_values)
@settings(max_examples=200)
def test_typed_data_round_trip(typed: TypedValue) -> None:
    data = wire.encode_typed(typed.type, typed.value)
    assert wire.decode_typed(data) == typed
    assert wire.encode_typed(typed.type, wire.decode_typed(data).value) == data


@given(st.lists(st.tuples(names, typed_values), max_size=8))
@settings(max_examples=100)
def test_kv_list_round_trip(items: list[tuple[str, TypedValue]]) -> None:
    data = wire.encode_kv_list(items)
    assert wire.decode_kv_list(data) == items
    assert wire.encode_kv_list(wire.decode_kv_list(data)) == data
