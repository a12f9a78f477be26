"""Direct mode: the same stages fed to libmodsecurity in-process, without HAProxy or the agent.

Each stage's built request is split by ``rawparse`` (lenient, nothing normalised) into method,
URI, version, headers and body; the response phases get what ``albedo`` would answer. The
result is the baseline: every stage that passes here and fails through HAProxy points at
HAProxy or at the agent, and the difference table in docs/crs.md explains each one.

Engine calls release the GIL, so a small thread pool uses both cores. This module drives the
engine through ``coraza_spoa_py.engine`` only (the ``WafEngine`` contract).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Address

from coraza_spoa_py import engine as waf
from coraza_spoa_py.models import RequestInfo, ResponseInfo, WafEngine
from coraza_spoa_py.settings import AppConfig, RulePaths
from tests.crs import builder, rawparse
from tests.crs.albedo import albedo_response, wire_headers
from tests.crs.crs_setup import APP_NAME, CRS_TEST_DIRECTIVES
from tests.crs.judge import Observation, observe_with_retry
from tests.crs.loader import Stage

LOOPBACK = IPv4Address("127.0.0.1")


def load_crs_engine(
    rule_paths: RulePaths | None = None, directives: str = CRS_TEST_DIRECTIVES
) -> WafEngine:
    app = AppConfig(name=APP_NAME, directives=directives + "\n", response_check=True)
    return waf.load_engine(app, rule_paths or RulePaths())


def read_stage(stage: Stage) -> rawparse.ParsedRequest | Observation:
    """The stage's request as a server reads it, or the observation when there is none."""
    try:
        raw = builder.build_request(stage)
    except builder.BuildError as exc:
        return Observation(error=f"build: {exc}")
    try:
        parsed = rawparse.parse_request(raw)
        rawparse.check_framing(raw, parsed)
    except rawparse.UnparseableError:
        # a server answers 400 before any WAF hook runs: no rule can have matched
        return Observation(status=400)
    except rawparse.IncompleteBodyError as exc:
        # the server waits for the rest of the body: the client's read times out
        return Observation(error=f"timeout: {exc}")
    return parsed


def albedo_reply(parsed: rawparse.ParsedRequest) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """What albedo answers ``parsed``: status, headers as on the wire, body."""
    status, headers, body = albedo_response(
        parsed.method.decode("latin-1"), parsed.target.decode("latin-1"), parsed.body
    )
    return status, [(n.encode(), v.encode()) for n, v in wire_headers(headers, body)], body


def observe(engine: WafEngine, stage: Stage, transaction_id: str) -> Observation:
    """Run one stage through the engine; ``status`` is what albedo would have answered."""
    parsed = read_stage(stage)
    if isinstance(parsed, Observation):
        return parsed
    request = RequestInfo(
        transaction_id=transaction_id,
        method=parsed.method,
        path=parsed.path,
        query=parsed.query,
        version=parsed.version,
        headers=parsed.headers,
        body=parsed.body,
        src_ip=LOOPBACK,
        src_port=40000,
        dst_ip=LOOPBACK,
        dst_port=80,
    )
    status, response_headers, body = albedo_reply(parsed)
    response = ResponseInfo(
        transaction_id=transaction_id, status=status, headers=tuple(response_headers), body=body
    )
    transaction = engine.new_transaction(transaction_id)
    try:
        request_verdict = transaction.process_request(request)
        verdict = transaction.process_response(response)
    finally:
        transaction.close()
    # each verdict's matches are its own phase group's: the request's, then the response's
    messages = tuple(m.msg for m in (*request_verdict.matches, *verdict.matches) if m.msg)
    return Observation(
        status=status, rule_ids=verdict.matched_rule_ids, response=body, messages=messages
    )


def run_direct(
    stages: Sequence[Stage],
    *,
    jobs: int = 2,
    engine: WafEngine | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Observation]:
    """Observe every stage; keyed by stage id."""
    engine = engine or load_crs_engine()
    results: dict[str, Observation] = {}

    def one(item: tuple[int, Stage]) -> tuple[str, Observation]:
        index, stage = item
        attempts = iter(range(2))
        seen = observe_with_retry(
            lambda: observe(engine, stage, f"direct-{index}-{next(attempts)}"), stage.output
        )
        return stage.stage_id, seen

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for count, (stage_id, seen) in enumerate(pool.map(one, enumerate(stages)), start=1):
            results[stage_id] = seen
            if progress:
                progress(count)
    return results
