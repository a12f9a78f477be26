"""The request builder reproduces ftw 1.x and go-ftw byte for byte (pure, no sockets).

Each expected request below was derived from the tool's own code path (ftw 1.3.0's
``ruleset.Input`` + ``http.HttpUA.build_request``; go-ftw per docs/crs.md "Test file formats").
"""

from __future__ import annotations

import base64

import pytest

from tests.crs.builder import (
    BuildError,
    build_ftw1_request,
    build_goftw_request,
    build_request,
    expand_templates,
    goftw_form_encode,
)
from tests.crs.loader import Stage, StageInput, StageOutput

UA_HOST = (("User-Agent", "ModSecurity CRS 3 Tests"), ("Host", "localhost"))


def test_ftw1_form_data_gets_type_length_and_encoding_after_the_file_headers() -> None:
    """1. POST with data and no Content-Type. 2. ftw appends Content-Type (form) and then
    Content-Length, after the file's headers in file order; the data is re-encoded."""
    given = StageInput(method="POST", headers=UA_HOST, data="a=1&b=x y")
    assert build_ftw1_request(given) == (
        b"POST / HTTP/1.1\r\n"
        b"User-Agent: ModSecurity CRS 3 Tests\r\n"
        b"Host: localhost\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 9\r\n"
        b"\r\n"
        b"a=1&b=x+y"
    )


def test_ftw1_keeps_escaped_data_and_drops_blank_values_when_it_encodes() -> None:
    escaped = StageInput(method="POST", headers=UA_HOST, data="a=%41&b")
    assert build_ftw1_request(escaped).endswith(b"Content-Length: 7\r\n\r\na=%41&b")
    # parse_qsl without keep_blank_values: "a=" disappears (an ftw 1.x quirk, copied)
    blank = StageInput(method="POST", headers=UA_HOST, data="a=&b=2")
    assert build_ftw1_request(blank).endswith(b"Content-Length: 3\r\n\r\nb=2")


def test_ftw1_content_length_counts_characters_not_bytes() -> None:
    """ftw 1.x sets Content-Length to len(str): a non-ASCII body is longer than announced."""
    given = StageInput(method="POST", headers=(*UA_HOST, ("Content-Type", "text/plain")), data="é")
    assert build_ftw1_request(given).endswith(b"Content-Length: 1\r\n\r\n\xc3\xa9")


def test_ftw1_content_type_check_is_case_sensitive_and_exact() -> None:
    """A lower-case content-type key gets a second Content-Type; a form type with a charset
    parameter is not re-encoded."""
    lower = StageInput(
        method="POST", headers=(("content-type", "text/plain"),), data="x y", autocomplete=True
    )
    assert b"content-type: text/plain\r\nContent-Type: application/x-www-form-urlencoded\r\n" in (
        build_ftw1_request(lower)
    )
    charset = StageInput(
        method="POST",
        headers=(("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),),
        data="x=a b",
    )
    assert build_ftw1_request(charset).endswith(b"\r\n\r\nx=a b")


def test_ftw1_stop_magic_adds_nothing_and_values_are_str() -> None:
    given = StageInput(
        method="POST",
        headers=(("Content-Length", 7), ("X-Flag", True)),
        data="a b",
        autocomplete=False,
    )
    assert build_ftw1_request(given) == (
        b"POST / HTTP/1.1\r\nContent-Length: 7\r\nX-Flag: True\r\n\r\na b"
    )


def test_ftw1_data_in_the_charset_it_cannot_round_trip_is_an_error() -> None:
    given = StageInput(
        method="POST",
        headers=(("Content-Type", "text/plain; charset=iso-8859-1"),),
        data="é",
    )
    with pytest.raises(BuildError):
        build_ftw1_request(given)


def test_ftw1_raw_and_encoded_requests() -> None:
    """raw_request goes through unicode_escape (\\r\\n written in YAML become CR LF);
    encoded_request is base64 and wins over everything."""
    raw = StageInput(raw_request="GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
    assert build_ftw1_request(raw) == b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"
    payload = b"GET /\x00 HTTP/1.1\r\n\r\n"
    encoded = StageInput(encoded_request=base64.b64encode(payload).decode(), data="ignored")
    assert build_ftw1_request(encoded) == payload


def test_ftw1_request_line_copies_odd_methods_and_versions() -> None:
    given = StageInput(method="\tGET", uri="\\index.html", version="HTTP\\1.0", headers=UA_HOST)
    assert build_ftw1_request(given).startswith(b"\tGET \\index.html HTTP\\1.0\r\n")
    empty_version = StageInput(version="", headers=())
    assert build_ftw1_request(empty_version) == b"GET / \r\n\r\n"


def test_goftw_sorts_headers_adds_connection_close_and_byte_length() -> None:
    """go-ftw: headers sorted by name, Connection: close, Content-Length in bytes, form data
    re-encoded with keys sorted (Go url.Values)."""
    given = StageInput(method="POST", headers=(("User-Agent", "t"), ("Host", "h")), data="b=2&a=é")
    assert build_goftw_request(given) == (
        b"POST / HTTP/1.1\r\n"
        b"Connection: close\r\n"
        b"Content-Length: 12\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Host: h\r\n"
        b"User-Agent: t\r\n"
        b"\r\n"
        b"a=%C3%A9&b=2"
    )


def test_goftw_content_length_for_body_methods_and_none_for_get() -> None:
    delete = StageInput(method="DELETE", headers=(("Host", "h"),))
    assert b"Content-Length: 0\r\n" in build_goftw_request(delete)
    get = StageInput(method="GET", headers=(("Host", "h"),))
    assert b"Content-Length" not in build_goftw_request(get)


def test_goftw_multipart_newlines_and_templates() -> None:
    given = StageInput(
        method="POST",
        headers=(("Content-Type", "multipart/form-data; boundary=x"),),
        data='--x\nContent-Disposition: form-data; name="a"\n\n{{ "1" | repeat 3 }}\n--x--\n',
    )
    body = build_goftw_request(given).split(b"\r\n\r\n", 1)[1]
    assert body == b'--x\r\nContent-Disposition: form-data; name="a"\r\n\r\n111\r\n--x--\r\n'
    assert expand_templates('a{{ "ab" | repeat 2 }}b') == "aababb"


def test_goftw_autocomplete_off_sends_exactly_the_file() -> None:
    given = StageInput(method="POST", headers=(("Host", "h"),), data="a b", autocomplete=False)
    assert build_goftw_request(given) == b"POST / HTTP/1.1\r\nHost: h\r\n\r\na b"


def test_goftw_form_encoding_keeps_blank_values() -> None:
    assert goftw_form_encode("z=1&a=&a=2&k") == "a=&a=2&k=&z=1"


def test_build_request_dispatches_on_format() -> None:
    given = StageInput(method="POST", headers=(("Host", "h"),), data="a=1")
    legacy = Stage("x-1", "f.yaml", "", "legacy", given, StageOutput())
    goftw = Stage("x-1", "f.yaml", "", "goftw", given, StageOutput())
    assert b"Connection: close" not in build_request(legacy)
    assert b"Connection: close" in build_request(goftw)
