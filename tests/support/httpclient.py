"""A tiny HTTP client for e2e tests: one request per connection, and many at once."""

from __future__ import annotations

import http.client
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)


def request(
    port: int,
    path: str = "/",
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    host: str = "127.0.0.1",
    timeout: float = 10.0,
) -> Response:
    """Send one request on a fresh connection and read the whole response."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def concurrent_requests(
    port: int, paths: Sequence[str], *, concurrency: int | None = None, timeout: float = 30.0
) -> list[Response]:
    """GET every path, ``concurrency`` at a time (default: all at once); results in order."""
    workers = concurrency or len(paths)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: request(port, p, timeout=timeout), paths))
