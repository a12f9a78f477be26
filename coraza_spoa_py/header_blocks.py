"""HAProxy's header blocks, parsed: the text one (``req.hdrs``/``res.hdrs``) and the binary one
(``req.hdrs_bin``/``res.hdrs_bin``), both into ``models.Header`` pairs. Names and values stay
bytes (HAProxy has already lower-cased the names, HTX). The binary block's lengths are SPOP
varints, read by the codec's one decoder (``spop.wire.Reader``).

Pure: no logging, no engine, no I/O. ``messages`` answers a malformed block with error 1001
(docs/compatibility.md "Errors").
"""

from __future__ import annotations

from coraza_spoa_py.models import Header
from coraza_spoa_py.spop.errors import SpopError
from coraza_spoa_py.spop.wire import Reader

_HEADER_LINE_END = b"\r\n"
_OPTIONAL_WHITESPACE = b" \t"


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
