"""Split a raw HTTP/1.x request (as ``builder`` made it) into the parts the engine takes.

Used by the direct mode only: it stands where HAProxy stands in the real setup, but it is
deliberately *lenient* and *non-normalising* — it keeps header-name case, keeps duplicates,
does not decode the URI — so every difference between the two modes comes from HAProxy (or from
the agent), not from this parser. A request it cannot split at all (no request line with a
method and a target) is reported as ``UnparseableError``, which the direct mode answers with 400 as
any HTTP server would.
"""

from __future__ import annotations

from dataclasses import dataclass


class UnparseableError(Exception):
    """No method and target can be read from the request line."""


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
    if version.startswith(b"HTTP/"):
        version = version[len(b"HTTP/") :]
    return ParsedRequest(method, target, version, tuple(headers), body)


def _body(rest: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    lowered = {name.lower(): value for name, value in headers}
    if b"chunked" in lowered.get(b"transfer-encoding", b"").lower():
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
