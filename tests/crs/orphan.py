"""Orphan mode: every stage's response is an orphan. The request goes through one
``Application`` and its response through ANOTHER one over the same rules, as when HAProxy sends
``coraza-res`` to an agent that never saw the ``coraza-req`` (docs/operations.md "Several
agents"). Both are real: the agent's own message parsing, orphan path and libmodsecurity; only
the sockets are left out. Compared with the direct mode (the same request and response in one
transaction), it measures what a response loses without its request's transaction.

Messages carry what the shipped coraza.cfg sends (``coraza-req``: id, addresses, method, path,
query, version, headers, body; ``coraza-res``: id, version, status, headers, body). Rule ids
come from each message's verdict (``Application.observer``), as the direct mode reads them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from ipaddress import IPv4Address

from loguru import logger

from coraza_spoa_py.application import Application
from coraza_spoa_py.engine import RUN_HERE
from coraza_spoa_py.models import Verdict, WafEngine
from coraza_spoa_py.settings import AppConfig
from coraza_spoa_py.spop.events import Arg, DataType, Message
from tests.crs.crs_setup import APP_NAME, CRS_TEST_DIRECTIVES
from tests.crs.direct import albedo_reply, read_stage
from tests.crs.judge import Observation
from tests.crs.loader import Stage

LOOPBACK = IPv4Address("127.0.0.1")


def _text(name: str, value: bytes) -> Arg:
    return Arg(name, DataType.STRING, value)


def _header_block(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    # HAProxy's req.hdrs / res.hdrs text block (header_blocks.parse_text_header_block)
    return b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"


class OrphanPair:
    """Two applications over one engine: one sees the requests, the other the responses."""

    def __init__(self, engine: WafEngine) -> None:
        config = AppConfig(name=APP_NAME, directives=CRS_TEST_DIRECTIVES, response_check=True)
        self.requests = Application(config, engine, RUN_HERE)
        self.responses = Application(config, engine, RUN_HERE)
        self._verdicts: list[Verdict] = []
        for app in (self.requests, self.responses):
            app.observer = lambda _app, _message, _orphan, verdict: self._verdicts.append(verdict)

    def observe(self, stage: Stage, transaction_id: str) -> Observation:
        parsed = read_stage(stage)
        if isinstance(parsed, Observation):
            return parsed
        self._verdicts.clear()
        path, has_query, query = parsed.target.partition(b"?")
        request_args = [
            _text("app", APP_NAME.encode()),
            _text("id", transaction_id.encode()),
            Arg("src-ip", DataType.IPV4, LOOPBACK),
            Arg("src-port", DataType.INT32, 40000),
            Arg("dst-ip", DataType.IPV4, LOOPBACK),
            Arg("dst-port", DataType.INT32, 80),
            _text("method", parsed.method),
            _text("path", path),
            _text("query", query) if has_query else Arg("query", DataType.NULL, None),
            _text("version", parsed.version),
            _text("headers", _header_block(parsed.headers)),
            Arg("body", DataType.BINARY, parsed.body),
        ]
        self.requests.handle_request(Message("coraza-req", tuple(request_args)), time.monotonic())
        status, response_headers, body = albedo_reply(parsed)
        response_args = (
            _text("app", APP_NAME.encode()),
            _text("id", transaction_id.encode()),
            _text("version", b"1.1"),
            Arg("status", DataType.INT32, status),
            _text("headers", _header_block(response_headers)),
            Arg("body", DataType.BINARY, body),
        )
        self.responses.handle_response(Message("coraza-res", response_args), time.monotonic())
        rule_ids = tuple(i for verdict in self._verdicts for i in verdict.matched_rule_ids)
        messages = tuple(m.msg for verdict in self._verdicts for m in verdict.matches if m.msg)
        return Observation(status=status, rule_ids=rule_ids, response=body, messages=messages)


def run_orphan(stages: Sequence[Stage], *, engine: WafEngine) -> dict[str, Observation]:
    """Observe every stage with its response as an orphan; keyed by stage id."""
    pair = OrphanPair(engine)
    # the applications' rule-match records are the agent's log, not this report's
    logger.disable("coraza_spoa_py")
    try:
        results = {
            stage.stage_id: pair.observe(stage, f"orphan-{index}")
            for index, stage in enumerate(stages)
        }
    finally:
        logger.enable("coraza_spoa_py")
    assert pair.responses.orphan_responses == len(
        [seen for seen in results.values() if seen.error is None and seen.status != 400]
    ), "every response must have been an orphan"
    return results
