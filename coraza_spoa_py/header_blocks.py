"""HAProxy's header blocks, parsed: the text one (``req.hdrs``/``res.hdrs``) and the binary one
(``req.hdrs_bin``/``res.hdrs_bin``), both into ``models.Header`` pairs. Names and values stay
bytes (HAProxy has already lower-cased the names, HTX). The binary block's lengths are SPOP
varints, read by the codec's one decoder (``spop.wire.Reader``).

``messages`` reads both into ``HeaderRecords``: the headers already packed the way the engine's
glue reads them, in C (``native/spop_fast.c``) when the compiled module is there and the block
has HAProxy's valid shapes, since building a bytes object and a tuple per header only for the
engine to pack them again was a measurable share of the hub (docs/performance.md change 42).
The parse functions stay the reference: every block the C code leaves is parsed by them, and
every error is theirs.

Pure: no logging, no engine, no I/O. ``messages`` answers a malformed block with error 1001
(docs/compatibility.md "Errors").
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

from coraza_spoa_py.models import Header
from coraza_spoa_py.spop.errors import SpopError
from coraza_spoa_py.spop.wire import Reader

try:
    from coraza_spoa_py import _spop_fast
except ImportError:  # pragma: no cover (the build is part of make install)
    _native_pack_text = _native_pack_binary = None
else:
    _native_pack_text = _spop_fast.pack_text_header_block
    _native_pack_binary = _spop_fast.pack_binary_header_block

_HEADER_LINE_END = b"\r\n"
_OPTIONAL_WHITESPACE = b" \t"
# one header record of native/msc_glue.c: a length, little endian, before each name and value
_LENGTH = struct.Struct("<I")


def pack_headers(headers: Iterable[Header]) -> bytes:
    """The header records ``native/msc_glue.c`` reads: ``[length: 4 bytes LE][name][length][value]``
    per header, in order."""
    pack = _LENGTH.pack
    parts: list[bytes] = []
    for name, value in headers:
        parts += (pack(len(name)), name, pack(len(value)), value)
    return b"".join(parts)


class HeaderRecords(Sequence[Header]):
    """Header pairs kept as the engine's packed records (``pack_headers``); ``packed`` goes to
    the engine as is. Read as a sequence (tests, a log), it unpacks; it equals any sequence of
    the same pairs."""

    __slots__ = ("packed",)

    def __init__(self, packed: bytes) -> None:
        self.packed = packed

    def _pairs(self) -> tuple[Header, ...]:
        packed, at, pairs = self.packed, 0, []
        while at < len(packed):
            (name_length,) = _LENGTH.unpack_from(packed, at)
            name = packed[at + 4 : at + 4 + name_length]
            at += 4 + name_length
            (value_length,) = _LENGTH.unpack_from(packed, at)
            pairs.append((name, packed[at + 4 : at + 4 + value_length]))
            at += 4 + value_length
        return tuple(pairs)

    @overload
    def __getitem__(self, index: int) -> Header: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Header, ...]: ...
    def __getitem__(self, index: int | slice) -> Header | tuple[Header, ...]:
        return self._pairs()[index]

    def __len__(self) -> int:
        return len(self._pairs())

    def __iter__(self) -> Iterator[Header]:
        return iter(self._pairs())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HeaderRecords):
            return self.packed == other.packed
        if isinstance(other, Sequence):
            return self._pairs() == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._pairs())  # as the tuple of the same pairs, which it equals

    def __repr__(self) -> str:
        return f"HeaderRecords({self._pairs()!r})"


def text_header_records(block: bytes) -> HeaderRecords:
    """``parse_text_header_block``, packed: the same headers, or the same ``HeaderBlockError``."""
    if _native_pack_text is not None:
        packed: bytes | None = _native_pack_text(block)
        if packed is not None:
            return HeaderRecords(packed)
    return HeaderRecords(pack_headers(parse_text_header_block(block)))


class HeaderBlockError(ValueError):
    """A ``req.hdrs``/``res.hdrs`` or ``req.hdrs_bin``/``res.hdrs_bin`` block is malformed."""


def parse_text_header_block(block: bytes) -> tuple[Header, ...]:
    """Parse HAProxy's text header block: ``name: value\\r\\n`` per header, then ``\\r\\n``.

    Lines are split at the first ``:``; the optional whitespace around name and value is
    removed, nothing else is touched. Duplicates and their order are kept. An empty block means
    no headers. A block without its final empty line is truncated (docs/protocol.md "What HAProxy
    sends") and, like a line without ``:`` or with an empty name, raises ``HeaderBlockError``: a
    partial header set must not be evaluated as if it were complete."""
    if not block:
        return ()
    if not block.endswith(_HEADER_LINE_END):
        raise HeaderBlockError("header block is truncated (no final CRLF)")
    lines = block[: -len(_HEADER_LINE_END)].split(_HEADER_LINE_END)
    if lines[-1] != b"":
        # docs/protocol.md "What HAProxy sends": the block ends with an extra CRLF; without it the
        # block is incomplete.
        raise HeaderBlockError("header block is truncated (no final empty line)")
    headers: list[Header] = []
    for number, line in enumerate(lines[:-1], start=1):
        name, colon, value = line.partition(b":")
        name = name.strip(_OPTIONAL_WHITESPACE)
        if not colon:
            raise HeaderBlockError(f"header line {number} has no ':'")
        if not name:
            raise HeaderBlockError(f"header line {number} has an empty name")
        headers.append((name, value.strip(_OPTIONAL_WHITESPACE)))
    return tuple(headers)


def _read_string(reader: Reader) -> bytes:
    try:
        length = reader.varint()
    except SpopError as exc:
        # the decoder tells a varint cut short from one longer than a 64-bit value allows
        if "truncated" in exc.detail:
            raise HeaderBlockError("binary header block ends inside a length") from exc
        raise HeaderBlockError("binary header block has an over-long length") from exc
    try:
        return bytes(reader.take(length))
    except SpopError as exc:
        raise HeaderBlockError("binary header block ends inside a string") from exc


def parse_binary_header_block(block: bytes) -> tuple[Header, ...]:
    """Parse HAProxy's binary header block (``req.hdrs_bin``, docs/protocol.md "What HAProxy
    sends").

    Pairs of varint-length-prefixed name and value, terminated by two empty strings (bytes
    ``00 00``). A missing terminator, a length running past the end, an empty name before the
    terminator or bytes after it raise ``HeaderBlockError``.
    """
    headers: list[Header] = []
    reader = Reader(block)
    while True:
        name = _read_string(reader)
        value = _read_string(reader)
        if not name:
            if value:
                raise HeaderBlockError("binary header block has a value without a name")
            break
        headers.append((name, value))
    if not reader.at_end():
        raise HeaderBlockError("binary header block has bytes after its terminator")
    return tuple(headers)


def binary_header_records(block: bytes) -> HeaderRecords:
    """``parse_binary_header_block``, packed: the same headers, or the same
    ``HeaderBlockError``."""
    if _native_pack_binary is not None:
        packed: bytes | None = _native_pack_binary(block)
        if packed is not None:
            return HeaderRecords(packed)
    return HeaderRecords(pack_headers(parse_binary_header_block(block)))
