"""What the agent's engine receives through HAProxy 2.6 when wrk sends a bench scenario, next to
what the ceiling feeds the engine for it (docs/performance.md change 38): the agent/ceiling
ratios compare the same transaction only if these are equal, header by header and in order."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from bench import ceiling
from bench.agent_config import SMALL_DIRECTIVES, write_agent_config
from bench.haproxy_config import Ports
from bench.scenarios import SCENARIOS, Scenario
from bench.stack import DEFAULT_HAPROXY, bench_haproxy
from bench.wrk import run_wrk
from tests.support.agent import AgentProcess
from tests.support.ports import free_port
from tests.support.stack import running_stack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("wrk") is None, reason="the bench's client, wrk, is absent"),
]

# The real agent, with each engine call's input written down as it goes into the engine: a
# record of what ModSecTransaction receives, the engine itself untouched.
SPY = r"""
import hashlib, json, runpy, sys
from coraza_spoa_py.engine import transaction

out = open(sys.argv[1], "a", buffering=1)
real_request = transaction.ModSecTransaction.process_request
real_response = transaction.ModSecTransaction.process_response

def text_pairs(headers):
    return [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]

def process_request(self, request, **options):
    out.write(json.dumps({"tx": self.transaction_id, "kind": "request",
        "method": request.method.decode("latin-1"), "uri": request.uri.decode("latin-1"),
        "version": request.version.decode("latin-1"), "headers": text_pairs(request.headers),
        "body": hashlib.sha256(request.body).hexdigest()}) + "\n")
    return real_request(self, request, **options)

def process_response(self, response, **options):
    out.write(json.dumps({"tx": self.transaction_id, "kind": "response",
        "status": response.status, "version": response.version.decode("latin-1"),
        "headers": text_pairs(response.headers),
        "body": hashlib.sha256(response.body).hexdigest()}) + "\n")
    return real_response(self, response, **options)

transaction.ModSecTransaction.process_request = process_request
transaction.ModSecTransaction.process_response = process_response
sys.argv = ["coraza_spoa_py", "-config", sys.argv[2]]
runpy.run_module("coraza_spoa_py", run_name="__main__", alter_sys=True)
"""


def _pairs(headers: Sequence[tuple[bytes, bytes]]) -> list[list[str]]:
    return [[n.decode("latin-1"), v.decode("latin-1")] for n, v in headers]


def _ceiling_request(scenario: Scenario) -> dict[str, Any]:
    request = ceiling.build_request(scenario, "t")
    return {
        "method": request.method.decode(),
        "uri": request.uri.decode("latin-1"),
        "version": request.version.decode(),
        "headers": _pairs(request.headers),
        "body": hashlib.sha256(request.body).hexdigest(),
    }


def _ceiling_response(scenario: Scenario) -> dict[str, Any]:
    response = ceiling.build_response(scenario, "t")
    return {
        "status": response.status,
        "version": response.version.decode(),
        "headers": _pairs(response.headers),
        "body": hashlib.sha256(response.body).hexdigest(),
    }


def test_the_ceiling_feeds_the_engine_what_the_agent_receives_through_haproxy(tmp_path: Path):
    """1. Start the agent (small rules, its engine's inputs recorded) and HAProxy 2.6 on the
       bench's rendering of the shipped config; run wrk for 1 s per scenario with the bench's
       own script.
    2. For each scenario, every request the engine received (method, URI, version, headers in
       order, body) equals the ceiling's request, and every response (status, version, headers
       in order, body) equals the ceiling's response; the blocked attack has no response."""
    ports = Ports(frontend=free_port(), agent=free_port(), backend=free_port())
    config = write_agent_config(tmp_path, port=ports.agent, directives=SMALL_DIRECTIVES)
    record = tmp_path / "engine-inputs.jsonl"
    agent = AgentProcess(
        [sys.executable, "-c", SPY, str(record), str(config)],
        log_path=tmp_path / "agent.out",
        port=ports.agent,
    )
    sent: dict[str, int] = {}
    with running_stack([agent], partial(bench_haproxy, tmp_path, ports, DEFAULT_HAPROXY)):
        for name, scenario in SCENARIOS.items():
            result = run_wrk(
                f"http://127.0.0.1:{ports.frontend}",
                scenario,
                connections=1,
                duration_s=1,
                threads=1,
                workdir=tmp_path,
            )
            sent[name] = result["requests"]
    records = [json.loads(line) for line in record.read_text().splitlines()]
    by_tx: dict[str, dict[str, dict[str, Any]]] = {}
    for item in records:
        by_tx.setdefault(item.pop("tx"), {})[item.pop("kind")] = item
    for name, scenario in SCENARIOS.items():
        seen = [tx for tx in by_tx.values() if tx.get("request", {}).get("uri") == scenario.uri]
        assert len(seen) >= sent[name] > 0, name
        requests = {json.dumps(tx["request"], sort_keys=True) for tx in seen}
        assert [json.loads(r) for r in requests] == [_ceiling_request(scenario)], name
        responses = {json.dumps(tx["response"], sort_keys=True) for tx in seen if "response" in tx}
        if scenario.blocked:
            assert responses == set(), name
        else:
            assert [json.loads(r) for r in responses] == [_ceiling_response(scenario)], name
