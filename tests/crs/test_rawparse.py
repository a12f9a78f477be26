"""The direct mode's request splitter keeps everything as sent (no normalisation)."""

from __future__ import annotations

import pytest

from tests.crs.rawparse import UnparseableError, parse_request


def test_split_keeps_case_duplicates_and_raw_uri() -> None:
    parsed = parse_request(
        b"POST /a%20b?x=%41&y HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a:  2 \r\n"
        b"Content-Length: 3\r\n\r\nabcEXTRA"
    )
    assert (parsed.method, parsed.path, parsed.query, parsed.version) == (
        b"POST",
        b"/a%20b",
        b"x=%41&y",
        b"1.1",
    )
    assert parsed.headers == (
        (b"Host", b"h"),
        (b"X-A", b"1"),
        (b"x-a", b"2"),
        (b"Content-Length", b"3"),
    )
    assert parsed.body == b"abc"


def test_no_query_chunked_body_and_odd_version() -> None:
    parsed = parse_request(
        b"GET /p JUNK/1.0\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    assert parsed.query is None
    assert parsed.version == b"JUNK/1.0"
    assert parsed.body == b"abc"
    bare_lf = parse_request(b"GET /?q HTTP/1.0\nHost: h\n\nbody")
    assert (bare_lf.query, bare_lf.headers, bare_lf.body) == (b"q", ((b"Host", b"h"),), b"body")


@pytest.mark.parametrize("line", [b"     GET / HTTP/1.1", b"GET", b"\tGET / HTTP/1.1"])
def test_unsplittable_request_lines(line: bytes) -> None:
    with pytest.raises(UnparseableError):
        parse_request(line + b"\r\nHost: h\r\n\r\n")
