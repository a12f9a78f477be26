"""The request mix every measurement uses: one definition feeds wrk (through HAProxy), the bare
engine ceiling (in-process) and the raw SPOP load generator. wrk sends ``request_headers`` less
``connection`` in this order, and the ceiling feeds the engine exactly what HAProxy then hands
the agent (``forwarded_request_headers``, ``forwarded_response_headers``: docs/performance.md
change 38); the raw SPOP load generator sends the agent those same forwarded lists, as
HAProxy would.

Pure data and pure functions only: no processes, no clock, no engine import (the ceiling and the
wrk driver import this, never the other way round).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from urllib.parse import quote_plus

# A browser-like header set: CRS 3.3.4 at paranoia 1 scores a request without Accept or
# User-Agent (920300/920320), which would turn "clean GET" into a detection. docs/engine.md "Engine
# facts" measured its costs with 6 headers; so do we. Names are lower-case because HAProxy's
# req.hdrs sends them so (docs/protocol.md "What HAProxy sends").
BROWSER_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"host", b"bench.example"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    (b"accept-language", b"en-US,en;q=0.5"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
)

# What the bench backend answers for every path but the big page: a tiny HTML body, so the
# response phase runs (coraza-res is sent for every response) but costs little.
SMALL_PAGE = b"<!DOCTYPE html><html><head><title>ok</title></head><body>ok</body></html>\n"
BIG_PAGE_PATH = "/page50k.html"
# A page that leaks PHP source (CRS 953110, outbound score 5 >= 4 blocks in phase 4): if the
# shipped config really sends response bodies to the agent, this comes back 403.
LEAK_PAGE_PATH = "/probe-leak.html"
LEAK_PAGE = b"<html><body><?php echo $db_password; ?></body></html>\n"
BIG_PAGE_SIZE = 50 * 1024


def html_page(size: int, seed: int = 7) -> bytes:
    """A deterministic, innocent HTML page of exactly ``size`` bytes (words, paragraphs, links).

    Innocent matters: CRS's RESPONSE-95x rules look for error pages and data leakage, and a page
    that matched would turn a throughput number into a detection number.
    """
    words = [
        "lorem",
        "ipsum",
        "dolor",
        "sit",
        "amet",
        "consectetur",
        "adipiscing",
        "elit",
        "sed",
        "do",
        "eiusmod",
        "tempor",
        "incididunt",
        "ut",
        "labore",
        "et",
        "dolore",
        "magna",
        "aliqua",
        "enim",
        "ad",
        "minim",
        "veniam",
        "quis",
        "nostrud",
        "exercitation",
        "ullamco",
        "laboris",
        "nisi",
        "aliquip",
        "ex",
        "ea",
        "commodo",
        "consequat",
    ]
    rng = random.Random(seed)
    head = b"<!DOCTYPE html>\n<html><head><title>bench page</title></head><body>\n"
    tail = b"</body></html>\n"
    parts = [head]
    length = len(head) + len(tail)
    n = 0
    while length < size:
        n += 1
        text = " ".join(rng.choice(words) for _ in range(40))
        chunk = f'<p id="p{n}">{text} <a href="/doc/{n}.html">more</a></p>\n'.encode()
        parts.append(chunk)
        length += len(chunk)
    body = b"".join(parts)[: size - len(tail)]
    # cut at a tag boundary so the page stays well-formed enough for a parser
    body = body[: body.rfind(b"\n") + 1]
    return body + b" " * (size - len(body) - len(tail)) + tail


def urlencoded_form(size: int) -> bytes:
    """A login-like ``application/x-www-form-urlencoded`` body of exactly ``size`` bytes."""
    fields = [
        ("username", "alice.bench"),
        ("email", "alice@bench.example"),
        ("remember", "on"),
        ("lang", "en-US"),
        ("return_to", "/account/settings"),
    ]
    body = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in fields)
    n = 0
    while len(body) < size:
        n += 1
        body += f"&note{n}=" + "plain+words+about+the+order" * 2
    # the last field absorbs the trim, so the size is exact and the body stays key=value shaped
    return body[:size].encode()


@dataclass(frozen=True)
class Scenario:
    """One kind of request, what the backend answers, and the status the client must get."""

    name: str
    title: str
    method: str = "GET"
    path: str = "/"
    query: str | None = None
    extra_headers: tuple[tuple[bytes, bytes], ...] = ()
    body: bytes = b""
    expect_status: int = 200
    response_body: bytes = SMALL_PAGE
    response_headers: tuple[tuple[bytes, bytes], ...] = field(
        default=((b"content-type", b"text/html"),)
    )

    @property
    def uri(self) -> str:
        return self.path if self.query is None else f"{self.path}?{self.query}"

    @property
    def blocked(self) -> bool:
        """A blocked request never reaches the response phase (docs/protocol.md "What HAProxy
        sends")."""
        return self.expect_status == 403

    @property
    def request_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        headers = BROWSER_HEADERS + self.extra_headers
        if self.body:
            headers += ((b"content-length", str(len(self.body)).encode()),)
        return headers

    @property
    def forwarded_request_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The request headers as HAProxy 2.6 hands them to the agent (``req.hdrs``), in order:
        the client's, without ``connection`` (its keep-alive token is HTTP/1.1's default and
        HAProxy drops it; wrk does not send it either). Checked through HAProxy and wrk by
        tests/e2e/test_bench_forwarded.py (docs/performance.md change 38)."""
        return tuple((name, value) for name, value in self.request_headers if name != b"connection")

    @property
    def forwarded_response_headers(self) -> tuple[tuple[bytes, bytes], ...]:
        """The response headers as HAProxy hands them to the agent (``res.hdrs``): the bench web
        server is HAProxy's ``http-request return`` (haproxy_config), which writes
        ``content-length`` first (docs/performance.md change 38)."""
        length = ((b"content-length", str(len(self.response_body)).encode()),)
        return length + self.response_headers


FORM_BODY = urlencoded_form(1024)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("clean_get", "clean GET", path="/index.html", query="page=2&sort=asc"),
        Scenario(
            "attack_get", "attack GET (403)", path="/", query="p=/etc/passwd", expect_status=403
        ),
        Scenario(
            "post_1k",
            "POST 1 KB urlencoded",
            method="POST",
            path="/login",
            extra_headers=((b"content-type", b"application/x-www-form-urlencoded"),),
            body=FORM_BODY,
        ),
        Scenario(
            "response_50k",
            "GET, 50 KB HTML response inspected",
            path=BIG_PAGE_PATH,
            response_body=html_page(BIG_PAGE_SIZE),
        ),
    )
}
DEFAULT_SCENARIOS = tuple(SCENARIOS)
