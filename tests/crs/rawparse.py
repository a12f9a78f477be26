"""Split a raw HTTP/1.x request (as ``builder`` made it) into the parts the engine takes.

Used by the direct mode only: it stands where HAProxy stands in the real setup, but it is
deliberately *lenient* and *non-normalising* — it keeps header-name case, keeps duplicates,
does not decode the URI — so every difference between the two modes comes from HAProxy (or from
the agent), not from this parser. A request it cannot split at all (no request line with a
method and a target) is reported as ``UnparseableError``, which the direct mode answers with 400 as
any HTTP server would.

``check_framing`` then does what every HTTP/1.1 server (Apache in CRS's CI, HAProxy here) does
before any WAF hook runs, RFC 9112: a request line whose version is not ``HTTP/d.d`` (§2.3,
§3) or whose target cannot be a request target (§3.2: a CONNECT target that is not
``host:port``, a backslash in the path, a ``#`` anywhere), a
``Content-Length`` that is not digits (§6.3 point 5), a bare CR in the header section (§2.2)
are a 400 (``UnparseableError``); a ``Content-Length`` larger than the bytes sent makes the
server wait for the rest, so the client times out (``IncompleteBodyError``). With
``Transfer-Encoding: chunked`` the ``Content-Length`` header is dropped (§6.3 point 3), as
HAProxy and Apache do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


class UnparseableError(Exception):
    """No method and target can be read from the request line (or a server answers 400)."""


class IncompleteBodyError(Exception):
    """Fewer body bytes than ``Content-Length`` announced: a server waits, the client times out."""


@dataclass(frozen=True)
class ParsedRequest:
    method: bytes
    target: bytes
    version: bytes  # as HAProxy's req.ver: b"1.1" for "HTTP/1.1", the raw token otherwise
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    @property
    def path(self) -> bytes:
        return self.target.split(b"?", 1)[0]

    @property
    def query(self) -> bytes | None:
        path, sep, query = self.target.partition(b"?")
        return query if sep else None


def parse_request(raw: bytes) -> ParsedRequest:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:  # a request built with bare LF (go-ftw encoded_request can be)
        head, sep, rest = raw.partition(b"\n\n")
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    method, _, remainder = lines[0].partition(b" ")
    target, _, version = remainder.partition(b" ")
    if not method or not target or not method.isascii() or not method.strip() == method:
        raise UnparseableError(f"request line {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            headers.append((name, value.strip(b" \t")))
    body = _body(rest, headers)
    if _is_chunked(headers):
        headers = [(n, v) for n, v in headers if n.lower() != b"content-length"]
    if version.startswith(b"HTTP/"):
        version = version[len(b"HTTP/") :]
    return ParsedRequest(method, target, version, tuple(headers), body)


_VERSION = re.compile(rb"^HTTP/\d\.\d$")
_ABSOLUTE_FORM = re.compile(rb"^[A-Za-z][A-Za-z0-9+.-]*://")
_AUTHORITY_FORM = re.compile(rb"^[^/?#@\s]+:\d+$")


def check_framing(raw: bytes, parsed: ParsedRequest) -> None:
    """Raise what an HTTP/1.1 server would answer before any WAF hook (see the module doc)."""
    head, sep, _ = raw.partition(b"\r\n\r\n")
    if not sep:  # bare LF line ends (§2.2 lets a recipient accept them)
        head = raw.partition(b"\n\n")[0]
    request_line = head.split(b"\n", 1)[0].removesuffix(b"\r")
    if request_line.count(b" ") != 2 or not _VERSION.match(request_line.rsplit(b" ", 1)[1]):
        raise UnparseableError(f"HTTP version in {request_line[:80]!r}")
    target = parsed.target
    if parsed.method == b"CONNECT":
        valid = bool(_AUTHORITY_FORM.match(target))
    else:
        # a target without its leading "/" is accepted, as Apache (the tests' server) and
        # HAProxy >= 2.8 do (933160-21, 942500-1); a backslash in the path is not a URI
        valid = b"\\" not in parsed.path or bool(_ABSOLUTE_FORM.match(target))
    if not valid or b"#" in target:
        raise UnparseableError(f"request target {target[:80]!r}")
    if b"\r" in head.replace(b"\r\n", b"\n"):
        raise UnparseableError("bare CR in the header section")
    if _is_chunked(parsed.headers):
        return
    lengths = {v.strip() for n, v in parsed.headers if n.lower() == b"content-length"}
    if any(not length.isdigit() for length in lengths) or len(lengths) > 1:
        raise UnparseableError(f"Content-Length {sorted(lengths)!r}")
    if lengths and len(parsed.body) < int(next(iter(lengths))):
        raise IncompleteBodyError(f"Content-Length {next(iter(lengths))!r}, fewer bytes sent")


def _is_chunked(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    return any(n.lower() == b"transfer-encoding" and b"chunked" in v.lower() for n, v in headers)


def _body(rest: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    lowered = {name.lower(): value for name, value in headers}
    if _is_chunked(headers):
        return _dechunk(rest)
    length = lowered.get(b"content-length")
    if length is not None and length.strip().isdigit():
        return rest[: int(length)]
    return rest


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0].strip(), 16)
        except ValueError:
            break
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)
