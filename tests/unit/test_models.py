"""Header-block parsing: HAProxy's text (req.hdrs) and binary (req.hdrs_bin) blocks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coraza_spoa_py.header_blocks import (
    HeaderBlockError,
    parse_binary_header_block,
    parse_text_header_block,
)
from coraza_spoa_py.models import RequestInfo, Verdict


def varint(n: int) -> bytes:
    # docs/protocol.md "Varints" encoder, written independently of the decoder under test
    if n < 240:
        return bytes([n])
    out = [(n | 240) & 0xFF]
    n = (n - 240) >> 4
    while n >= 128:
        out.append((n | 128) & 0xFF)
        n = (n - 128) >> 7
    out.append(n)
    return bytes(out)


def binary_block(headers: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(varint(len(n)) + n + varint(len(v)) + v for n, v in headers)
    return body + b"\x00\x00"


def test_varint_helper_matches_the_spec_vector():
    # docs/protocol.md "Varints" / haproxy-go golden vector
    assert varint(0x1234) == bytes.fromhex("f49401")


def test_text_block_as_haproxy_sends_it():
    block = b"host: example.com\r\nuser-agent: curl/8.0\r\naccept: */*\r\n\r\n"
    assert parse_text_header_block(block) == (
        (b"host", b"example.com"),
        (b"user-agent", b"curl/8.0"),
        (b"accept", b"*/*"),
    )


def test_text_block_keeps_duplicates_order_and_raw_bytes():
    block = b"cookie: a=1\r\nx-v: caf\xc3\xa9 \xff\r\ncookie: b=2\r\nx-e:\r\n\r\n"
    assert parse_text_header_block(block) == (
        (b"cookie", b"a=1"),
        (b"x-v", b"caf\xc3\xa9 \xff"),
        (b"cookie", b"b=2"),
        (b"x-e", b""),
    )


def test_text_block_splits_at_the_first_colon():
    assert parse_text_header_block(b"referer: http://a:8080/x\r\n\r\n") == (
        (b"referer", b"http://a:8080/x"),
    )


@pytest.mark.parametrize("block", [b"", b"\r\n"])
def test_text_block_without_headers(block):
    assert parse_text_header_block(block) == ()


@pytest.mark.parametrize(
    ("block", "why"),
    [
        # final empty line missing (docs/protocol.md "What HAProxy sends")
        (b"host: a\r\n", "truncated"),
        (b"host: a", "truncated"),
        (b"host: a\r\nbroken line\r\n\r\n", "no ':'"),
        (b": value\r\n\r\n", "empty name"),
    ],
)
def test_bad_text_blocks_raise(block, why):
    with pytest.raises(HeaderBlockError, match=why):
        parse_text_header_block(block)


def test_binary_block_as_haproxy_sends_it():
    headers = [(b"host", b"example.com"), (b"cookie", b"a=1"), (b"cookie", b"b=\x00\xff")]
    assert parse_binary_header_block(binary_block(headers)) == tuple(headers)


def test_binary_block_with_long_values_uses_multibyte_lengths():
    headers = [(b"x-long", b"v" * 300), (b"x-longer", b"w" * 70_000)]
    assert parse_binary_header_block(binary_block(headers)) == tuple(headers)


def test_empty_binary_block_is_just_the_terminator():
    assert parse_binary_header_block(b"\x00\x00") == ()


@pytest.mark.parametrize(
    ("block", "why"),
    [
        (b"", "ends inside a length"),
        (b"\x04host\x01a", "ends inside a length"),  # no terminator
        (b"\x04host\x05a\x00\x00", "ends inside a string"),
        (b"\x00\x01a", "value without a name"),
        (b"\x00\x00\x00", "after its terminator"),
        (b"\xf4\x94", "ends inside a length"),
        (b"\xff" + b"\xff" * 12, "over-long"),
    ],
)
def test_bad_binary_blocks_raise(block, why):
    with pytest.raises(HeaderBlockError, match=why):
        parse_binary_header_block(block)


header_name = st.binary(min_size=1, max_size=20).filter(lambda n: b":" not in n)


@given(st.lists(st.tuples(header_name, st.binary(max_size=300)), max_size=8))
def test_binary_round_trip(headers):
    assert parse_binary_header_block(binary_block(headers)) == tuple(headers)


@given(st.binary(max_size=64))
def test_garbage_yields_headers_or_header_block_error(data):
    for parse in (parse_text_header_block, parse_binary_header_block):
        try:
            result = parse(data)
        except HeaderBlockError:
            continue
        assert isinstance(result, tuple)


def test_request_uri_has_no_question_mark_without_query():
    assert RequestInfo("t", path=b"/p").uri == b"/p"
    assert RequestInfo("t", path=b"/p", query=b"").uri == b"/p?"
    assert RequestInfo("t", path=b"/p", query=b"a=1").uri == b"/p?a=1"


@pytest.mark.parametrize(
    ("target", "version", "uri"),
    [
        (b"http://host.example/p?q=1", b"1.1", b"http://host.example/p?q=1"),
        (b"HTTPS://h/p", b"1.0", b"HTTPS://h/p"),
        (b"/p?q=1", b"1.1", b"/p?q=1"),  # origin form: path and query as before
        (b"https://h/p", b"2.0", b"/p?q=1"),  # HAProxy makes every HTTP/2 target absolute
        (None, b"1.1", b"/p?q=1"),  # a config that does not send url
    ],
)
def test_uri_keeps_an_absolute_form_target_whole(
    target: bytes | None, version: bytes, uri: bytes
) -> None:
    request = RequestInfo("t", path=b"/p", query=b"q=1", version=version, target=target)
    assert request.uri == uri


# ---- value_record (docs/performance.md change 47) ----------------------------------------


def test_value_records_compare_and_hash_by_value_and_have_slots() -> None:
    first = RequestInfo("t1", method=b"POST", headers=((b"host", b"a"),))
    same = RequestInfo("t1", method=b"POST", headers=((b"host", b"a"),))
    other = RequestInfo("t2", method=b"POST", headers=((b"host", b"a"),))
    assert first == same and first != other
    assert hash(first) == hash(same)
    assert len({first, same, other}) == 2
    assert not hasattr(first, "__dict__")  # slots: no per-instance dict
    verdict = Verdict(rules_hit=1, engine_times=(1.0, 2.0))
    assert verdict == Verdict(rules_hit=1, engine_times=(5.0, 6.0))  # compare=False kept
    assert hash(verdict) == hash(Verdict(rules_hit=1))


def test_the_type_checker_refuses_to_assign_a_value_records_field(tmp_path) -> None:
    """Frozen for mypy (dataclass_transform(frozen_default=True)), not at run time."""
    from mypy import api

    snippet = tmp_path / "assign.py"
    snippet.write_text(
        "from coraza_spoa_py.models import RequestInfo\n"
        "info = RequestInfo('t1')\n"
        "info.method = b'PUT'\n"
    )
    stdout, _, status = api.run(
        [str(snippet), "--no-incremental", "--follow-imports=silent", "--cache-dir=/dev/null"]
    )
    assert status == 1
    assert 'Property "method" defined in "RequestInfo" is read-only' in stdout
