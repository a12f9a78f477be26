"""The direct mode's request splitter keeps everything as sent (no normalisation)."""

from __future__ import annotations

import pytest

from tests.crs.rawparse import (
    IncompleteBodyError,
    UnparseableError,
    check_framing,
    parse_request,
)


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


@pytest.mark.parametrize(
    "raw",
    [
        b"GET / 1.1\r\nHost: x\r\n\r\n",  # version is not HTTP/d.d
        b"GET / JUNK/1.0\r\nHost: x\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",  # a space in the target
        b"GET \\ HTTP/1.1\r\nHost: x\r\n\r\n",  # a backslash in the path
        b"GET /index.html#tag HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT www.example.com HTTP/1.1\r\nHost: x\r\n\r\n",  # authority-form needs a port
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nA: b\rInjected: c\r\n\r\n",  # a bare CR
    ],
)
def test_what_a_server_answers_400_to(raw: bytes) -> None:
    with pytest.raises(UnparseableError):
        check_framing(raw, parse_request(raw))


def test_a_body_shorter_than_its_length_times_out_and_chunked_drops_the_length() -> None:
    short = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\nabc"
    with pytest.raises(IncompleteBodyError):
        check_framing(short, parse_request(short))
    both = (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"7\r\nfoo=bar\r\n0\r\n\r\n"
    )
    parsed = parse_request(both)
    check_framing(both, parsed)
    assert parsed.body == b"foo=bar"
    assert [name for name, _ in parsed.headers] == [b"Host", b"Transfer-Encoding"]


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /?file=\\\\c HTTP/1.1\r\nHost: x\r\n\r\n",  # a backslash in the query is kept
        b"GET x=1 HTTP/1.1\r\nHost: x\r\n\r\n",  # no leading slash: Apache takes it
        b"GET http://h/p HTTP/1.1\r\nHost: h\r\n\r\n",
        b"CONNECT 1.2.3.4:80 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\nHost: x\nContent-Length: 3\n\nabc",  # bare LF line ends
    ],
)
def test_what_reaches_the_rules(raw: bytes) -> None:
    check_framing(raw, parse_request(raw))
