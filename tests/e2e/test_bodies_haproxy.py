"""Request bodies bigger than HAProxy's default buffer, through REAL HAProxy 2.6 and 3.2 with
the shipped ``etc/haproxy`` files and ``config.example.yml`` (full CRS): docs/haproxy.md
"Request bodies".

What must hold: a body that reaches the agent whole is judged whole (an attack at its very end
is blocked); a body bigger than what reaches the agent is never judged as if complete (the
recommended ``SecRequestBodyLimitAction Reject`` refuses it with 413); a message too big for
one SPOP frame fails that request alone; and none of them fails a clean request in flight at
the same time (HAProxy <= 3.0 used to tear down the agent connection, "fragmentation not
supported", and every request on it got a 500).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.e2e.waf_stack import WafStack, nonce, waf_stack
from tests.support.httpclient import Response, request

pytestmark = pytest.mark.e2e

VERSIONS = ("2.6", "3.2")
HEADERS = {
    "host": "localhost",
    "user-agent": "e2e-test/1.0",
    "accept": "*/*",
    "content-type": "application/x-www-form-urlencoded",
}
ATTACK = b"&q=1' UNION SELECT password FROM users--"
# coraza.cfg's body cap: body=req.body,bytes(0,114688)
BODY_CAP = 114_688


@pytest.fixture(scope="module", params=VERSIONS, ids=[f"haproxy-{v}" for v in VERSIONS])
def stack(request, tmp_path_factory) -> Iterator[WafStack]:
    workdir = tmp_path_factory.mktemp(f"bodies-{request.param}")
    with waf_stack(request.param, workdir) as running:
        running.haproxy.wait_for_server_status("coraza-spoa", "coraza-agent", "UP")
        yield running


def form_body(size: int, *, attack: bool) -> bytes:
    tail = ATTACK if attack else b"&b=2"
    return b"a=" + b"x" * (size - len(tail) - 2) + tail


def post_with_clean_neighbours(
    stack: WafStack, path: str, body: bytes, neighbours: int = 8
) -> tuple[Response, list[tuple[str, Response]]]:
    """POST ``body`` while ``neighbours`` clean GETs are sent at the same time."""
    clean: list[tuple[str, Response]] = []
    errors: list[BaseException] = []

    def get_clean(tag: str) -> None:
        try:
            clean.append((tag, request(stack.frontend_port, f"/?t={tag}", headers=HEADERS)))
        except BaseException as exc:  # reported by the caller's assertion
            errors.append(exc)

    threads = [threading.Thread(target=get_clean, args=(nonce(),)) for _ in range(neighbours)]
    for thread in threads:
        thread.start()
    try:
        big = request(stack.frontend_port, path, method="POST", headers=HEADERS, body=body)
    finally:
        for thread in threads:
            thread.join()
    assert errors == []
    return big, clean


def assert_clean_neighbours_passed(stack: WafStack, clean: list[tuple[str, Response]]) -> None:
    assert [r.status for _, r in clean] == [200] * len(clean)
    for tag, _ in clean:
        log = stack.waf_log(tag)
        assert (log["fail"], log["error"]) == ("0", "-"), log


@pytest.mark.parametrize("size", [20_000, 65_536], ids=["20KB", "64KB"])
def test_attack_at_the_end_of_a_body_that_fits_is_blocked(stack, size):
    tag = nonce()
    big, clean = post_with_clean_neighbours(stack, f"/form?t={tag}", form_body(size, attack=True))
    assert big.status == 403
    log = stack.waf_log(tag)
    assert (log["action"], log["ruleid"], log["error"]) == ("deny", "949110", "-")
    assert_clean_neighbours_passed(stack, clean)


@pytest.mark.parametrize("size", [20_000, 65_536], ids=["20KB", "64KB"])
def test_clean_body_that_fits_passes(stack, size):
    tag = nonce()
    response = request(
        stack.frontend_port,
        f"/form?t={tag}",
        method="POST",
        headers=HEADERS,
        body=form_body(size, attack=False),
    )
    assert response.status == 200
    assert stack.waf_log(tag)["fail"] == "0"


def test_body_bigger_than_what_reaches_the_agent_is_refused_413_not_judged_whole(stack):
    tag = nonce()
    # clean but for an attack past what HAProxy can hand over: never "passed"
    big, clean = post_with_clean_neighbours(
        stack, f"/upload?t={tag}", form_body(1_000_000, attack=True)
    )
    assert big.status == 413
    assert big.header("waf-block") == "request"
    log = stack.waf_log(tag)
    assert (log["fail"], log["action"], log["status"], log["ruleid"], log["error"]) == (
        "1", "deny", "413", "0", "-",
    )  # fmt: skip
    warning = "\n".join(stack.agent_lines("cut short"))
    assert f"({BODY_CAP} of 1000000 bytes" in warning
    assert "SecRequestBodyLimitAction Reject" in warning
    assert_clean_neighbours_passed(stack, clean)


def test_message_too_big_for_one_frame_fails_that_request_alone(stack):
    # 3 x a 12 KB query (path, query and url arguments) + a capped body overflow the frame
    # (tune.bufsize - 4): HAProxy fails that message with error 3, the request is denied 500
    # (fail closed), and the agent connection, with the requests in flight on it, survives
    tag = nonce()
    path = f"/upload?t={tag}&pad={'p' * 12_000}"
    big, clean = post_with_clean_neighbours(stack, path, form_body(120_000, attack=False))
    assert big.status == 500
    # (its access-log line is cut before the WAF fields by the long URI: HAProxy's SPOE line
    # says it, status 3 = too big)
    spoe_errors = [x for x in stack.haproxy.logs().splitlines() if x.startswith("SPOE:")]
    assert (
        [x for x in spoe_errors if " st=0 " not in x]
        == [x for x in spoe_errors if "<GROUP:coraza-req>" in x and " st=3 " in x]
        != []
    )
    assert_clean_neighbours_passed(stack, clean)
    assert stack.agent_lines("haproxy disconnect") == []
