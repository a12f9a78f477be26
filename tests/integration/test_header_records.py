"""The C packer of text header blocks (native/spop_fast.c ``pack_text_header_block``, through
header_blocks.text_header_records) against its reference, ``parse_text_header_block`` then
``pack_headers``: for every block, the same records, or None exactly where the Python parser
raises (and then the parser's own HeaderBlockError). docs/performance.md change 42."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coraza_spoa_py import _spop_fast
from coraza_spoa_py.header_blocks import (
    HeaderBlockError,
    HeaderRecords,
    pack_headers,
    parse_text_header_block,
    text_header_records,
)

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
