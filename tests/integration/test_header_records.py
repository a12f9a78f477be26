"""The C packers of header blocks (native/spop_fast.c ``pack_text_header_block`` and
``pack_binary_header_block``, through header_blocks.text_header_records/binary_header_records)
against their reference, the Python parser then ``pack_headers``: for every block, the same
records, or None (and then the parser's own result: its HeaderBlockError, or, for a binary block
with a length of four varint bytes or more, its headers). A text block gives None exactly where
the parser raises. docs/performance.md change 42."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coraza_spoa_py import _spop_fast
from coraza_spoa_py.header_blocks import (
    HeaderBlockError,
    HeaderRecords,
    binary_header_records,
    pack_headers,
    parse_binary_header_block,
    parse_text_header_block,
    text_header_records,
)
from coraza_spoa_py.spop.wire import encode_varint

# the compiled module: not a unit test (docs/development.md "Layout")
pytestmark = pytest.mark.integration


def _reference(block: bytes) -> bytes | str:
    try:
        return pack_headers(parse_text_header_block(block))
    except HeaderBlockError as error:
        return str(error)


def _same(block: bytes) -> bytes | None:
    expected = _reference(block)
    packed = _spop_fast.pack_text_header_block(block)
    if isinstance(expected, str):
        assert packed is None, (block, expected)
        with pytest.raises(HeaderBlockError) as raised:
            text_header_records(block)
        assert str(raised.value) == expected
    else:
        assert packed == expected, block
        assert text_header_records(block).packed == expected
    return packed


# the bytes that matter to the parser, and a few that do not
_PIECES = st.sampled_from([b" ", b"\t", b":", b"\r", b"\n", b"\r\n", b"a", b"Z", b"\x00", b"\xff"])
_FIELD = st.lists(_PIECES, max_size=8).map(b"".join)
_LINE = st.tuples(_FIELD, st.sampled_from([b":", b"", b"::", b" : "]), _FIELD).map(b"".join)


@given(st.lists(_LINE, max_size=6), st.sampled_from([b"\r\n\r\n", b"\r\n", b"", b"\r\n\r\n\r\n"]))
def test_generated_blocks_pack_alike(lines: list[bytes], end: bytes) -> None:
    _same(b"\r\n".join(lines) + end)


@given(st.binary(max_size=60))
def test_any_bytes_pack_alike(block: bytes) -> None:
    _same(block)


@pytest.mark.parametrize(
    "block",
    [
        b"",
        b"\r\n",
        b"\n",
        b"\r",
        b"x\r\n",
        b"\r\n\r\n",
        b":v\r\n\r\n",
        b" \t:v\r\n\r\n",
        b"a:\r\n\r\n",
        b"a:b\r\n",
        b"a:b\r\n\r",
        b"a:b\r\r\n\r\n",
        b"a:b\n\r\n\r\n",
        b"host: example.com\r\n\r\n",
        b"  host \t:\t example.com  \r\n\r\n",
        b"referer: http://a:8080/x\r\nreferer: two\r\n\r\n",
        b"x: a\rb\nc\x00\r\n\r\n",
        b"x:\r\n\r\n\r\n",
        b"x" * 70_000 + b": " + b"v" * 70_000 + b"\r\n\r\n",
    ],
)
def test_edge_blocks_pack_alike(block: bytes) -> None:
    _same(block)


def test_a_seeded_corpus_of_mutated_blocks_packs_alike() -> None:
    # many more cases near real blocks than hypothesis runs, without its shrinking
    rng = random.Random(42)
    real = (
        b"host: www.example.com\r\nuser-agent: curl/8.5.0\r\naccept: */*\r\n"
        b"cookie: a=1; b=2\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"
    )
    accepted = 0
    for _ in range(20_000):
        block = bytearray(real)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(block) + 1)
            choice = rng.random()
            if choice < 0.4 and at < len(block):
                block[at] = rng.choice(b" \t:\r\nax")
            elif choice < 0.7:
                block[at:at] = rng.choice([b" ", b"\t", b":", b"\r\n", b"\r", b"\n"])
            else:
                del block[at : at + rng.randint(1, 3)]
        accepted += _same(bytes(block)) is not None
    assert 0 < accepted < 20_000  # both paths taken


def test_records_read_back_as_the_pairs() -> None:
    block = b"host: example.com\r\ncookie: a=1\r\ncookie:\r\n\r\n"
    records = text_header_records(block)
    pairs = ((b"host", b"example.com"), (b"cookie", b"a=1"), (b"cookie", b""))
    assert isinstance(records, HeaderRecords)
    assert records == pairs and pairs == records and list(records) == list(pairs)
    assert len(records) == 3 and records[1] == (b"cookie", b"a=1") and records[-1:] == pairs[-1:]
    assert hash(records) == hash(pairs)
    assert records != ((b"host", b"example.com"),) and records != b"host"


def _same_binary(block: bytes) -> bytes | None:
    try:
        expected: bytes | str = pack_headers(parse_binary_header_block(block))
    except HeaderBlockError as error:
        expected = str(error)
    packed = _spop_fast.pack_binary_header_block(block)
    if isinstance(expected, str):
        assert packed is None, (block, expected)
        with pytest.raises(HeaderBlockError) as raised:
            binary_header_records(block)
        assert str(raised.value) == expected
    else:
        assert packed in (expected, None), block
        assert binary_header_records(block).packed == expected
    return packed


def _binary_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    fields = [encode_varint(len(f)) + f for header in headers for f in header]
    return b"".join(fields) + b"\x00\x00"


_NAME = st.binary(min_size=1, max_size=12)


@given(st.lists(st.tuples(_NAME, st.binary(max_size=300)), max_size=6))
def test_generated_binary_blocks_pack_alike_in_c(headers: list[tuple[bytes, bytes]]) -> None:
    assert _same_binary(_binary_block(headers)) == pack_headers(headers)


@given(st.lists(st.tuples(_NAME, st.binary(max_size=300)), max_size=4), st.data())
def test_cut_and_garbled_binary_blocks_pack_alike(
    headers: list[tuple[bytes, bytes]], data: st.DataObject
) -> None:
    block = bytearray(_binary_block(headers))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(block)))
        if data.draw(st.booleans()) and at < len(block):
            block[at] = data.draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xEF, 0xF0, 0xFF]))
        elif data.draw(st.booleans()):
            del block[at : at + data.draw(st.integers(1, 3))]
        else:
            block[at:at] = data.draw(st.binary(min_size=1, max_size=3))
    _same_binary(bytes(block))


@given(st.binary(max_size=40))
def test_any_bytes_pack_alike_as_a_binary_block(block: bytes) -> None:
    _same_binary(block)


@pytest.mark.parametrize(
    "block",
    [
        b"",
        b"\x00",
        b"\x00\x00",
        b"\x00\x00\x00",
        b"\x00\x01v",
        b"\x01n\x00",
        b"\x01n\x00\x00\x00",
        b"\x01n\x01v\x00\x00",
        b"\x02n\x01v\x00\x00",
        b"\xf0",
        b"\xf0\x80",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        _binary_block([(b"x-long", b"v" * 300), (b"x-longer", b"w" * 70_000)]),
    ],
)
def test_edge_binary_blocks_pack_alike(block: bytes) -> None:
    _same_binary(block)


def test_a_binary_length_beyond_three_varint_bytes_is_left_to_python() -> None:
    block = _binary_block([(b"x-huge", b"v" * 300_000)])
    assert _spop_fast.pack_binary_header_block(block) is None
    assert binary_header_records(block) == ((b"x-huge", b"v" * 300_000),)
