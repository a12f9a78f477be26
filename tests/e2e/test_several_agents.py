"""Three agents behind one HAProxy, as the haproxy-ingress guide deploys them (3 replicas behind
one Service) or as three ``server`` lines in the SPOE backend: HAProxy picks a connection per
message, so a transaction's ``coraza-res`` often reaches an agent that never saw its
``coraza-req``. Such orphan responses are inspected on their own (``orphan_responses:
inspect``, the default): leaks are still blocked and clean responses never fail.

The SHIPPED haproxy.cfg + coraza.cfg, with the agent backend's one ``server`` line replaced by
``balance roundrobin`` and three server lines (``tests.support.shipped.several_agents``, the
only change), in front of the test backend's
albedo-style ``/reflect``; each agent is the product on config.example.yml with
``-metrics-addr``, whose counters show how many responses were orphans and what they got.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.e2e.waf_stack import agent_config
from tests.support.agent import AgentProcess, cli_agent, metric_sum, scrape
from tests.support.httpclient import Response, concurrent_requests, request
from tests.support.ports import free_port, wait_for_port
from tests.support.stack import shipped_stack

AGENTS = 3
# HAProxy 3.1+ sends SPOE messages through its SPOP mux, which picks a connection per message
# (measured here: about two thirds of the responses reach another agent than their request).
# HAProxy 2.6's SPOE applets make orphans too, but fewer and not in every run (none in this
# test's runs, some in the CRS runs, docs/crs.md): orphans are asserted where they always occur.
ORPHANING_VERSIONS = ("3.2",)
CLEAN_REQUESTS = 2000
ATTACKS = (
    "/?id=1%27%20OR%20%271%27%3D%271",
    "/?q=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    "/?file=../../../../etc/passwd",
    "/?cmd=%3Bcat%20%2Fetc%2Fpasswd",
    "/?x=%3C%3Fphp%20system(%24_GET%5Bc%5D)%3B%20%3F%3E",
)
# response bodies that CRS's RESPONSE-95x rules catch (the outbound score blocks at phase 4)
LEAKS = (
    "<html>You have an error in your SQL syntax; check the manual that corresponds to your"
    " MySQL server version for the right syntax</html>",
    "<html><head><title>Index of /backup</title></head><body><h1>Index of /backup</h1>"
    '<a href="db.sql">db.sql</a></body></html>',
    "<html>ORA-01756: quoted string not properly terminated</html>",
)
LEAK_ROUNDS = 10  # each leak this many times: the responses spread over the agents


def attacks_leaks_and_clean_requests(frontend: int) -> None:
    """Every attack → 403 by the request rules, every leak (``LEAK_ROUNDS`` times each) → 403
    by the response rules, ``CLEAN_REQUESTS`` clean requests → 200 with no 5xx."""
    for path in ATTACKS:
        blocked = request(frontend, path)
        assert (blocked.status, blocked.header("waf-block")) == (403, "request"), path
    for _ in range(LEAK_ROUNDS):
        for body in LEAKS:
            leaked = reflect(frontend, body)
            assert (leaked.status, leaked.header("waf-block")) == (403, "response"), body
            assert b"Index of" not in leaked.body and b"SQL syntax" not in leaked.body
    paths = [f"/clean/{n}?page={n % 7}" for n in range(CLEAN_REQUESTS)]
    statuses = [r.status for r in concurrent_requests(frontend, paths, concurrency=8)]
    assert [s for s in statuses if s >= 500] == []
    assert statuses.count(200) == CLEAN_REQUESTS


def reflect(port: int, body: str) -> Response:
    # base64 (albedo's encodedBody): the leak must not be in the request, or the request rules
    # would block it before any response exists
    spec = {
        "status": 200,
        "headers": {"Content-Type": "text/html"},
        "encodedBody": base64.b64encode(body.encode()).decode(),
    }
    return request(
        port,
        "/reflect",
        method="POST",
        headers={"Content-Type": "application/json"},
        body=json.dumps(spec).encode(),
    )


@pytest.mark.e2e
@pytest.mark.parametrize("version", ["2.6", "3.2"])
def test_three_agents_round_robin_block_attacks_and_leaks_with_no_5xx(
    version: str, http_backend, tmp_path: Path
) -> None:
    """1. Three agents, HAProxy round robin over them. 2. Every attack → 403 from the request
    rules. 3. Every leaking response → 403 from the response rules, orphans included (the
    agents' counters show orphan responses blocked). 4. 2,000 clean requests → 200, no 5xx."""
    agent_ports = [free_port() for _ in range(AGENTS)]
    metrics_ports = [free_port() for _ in range(AGENTS)]
    frontend = free_port()
    agents: list[AgentProcess] = []
    for n, (port, metrics_port) in enumerate(zip(agent_ports, metrics_ports, strict=True)):
        workdir = tmp_path / f"agent{n}"
        workdir.mkdir()
        config = agent_config(workdir, port, extra_rules="", sample_app={"log_level": "warn"})
        agent = cli_agent(
            config,
            port=port,
            log_path=workdir / "agent.log",
            extra_args=("-metrics-addr", f"127.0.0.1:{metrics_port}"),
        )
        agents.append(agent)
    with shipped_stack(
        version,
        tmp_path / "haproxy",
        agents,
        frontend_port=frontend,
        backend_port=http_backend.port,
        agent_ready_timeout=90,
    ):
        for agent, metrics_port in zip(agents, metrics_ports, strict=True):
            wait_for_port("127.0.0.1", metrics_port, process=agent)

        attacks_leaks_and_clean_requests(frontend)

        texts = [scrape(port) for port in metrics_ports]
        orphans_blocked = sum(
            metric_sum(t, "coraza_spoa_py_orphan_responses_total", verdict="interrupted")
            for t in texts
        )
        orphans_passed = sum(
            metric_sum(t, "coraza_spoa_py_orphan_responses_total", verdict="passed") for t in texts
        )
        responses = sum(
            metric_sum(t, "coraza_spoa_py_messages_total", message="coraza-res") for t in texts
        )
        seen = f"orphans: {orphans_passed} passed, {orphans_blocked} blocked of {responses}"
        # several agents took part (HAProxy opens agent connections as it needs them)
        assert sum(metric_sum(t, "coraza_spoa_py_messages_total") > 0 for t in texts) >= 2
        if version in ORPHANING_VERSIONS:
            # the round robin made orphans of both kinds: leaks blocked, clean ones passed
            assert orphans_blocked > 0 and orphans_passed > 0, seen
        assert responses == CLEAN_REQUESTS + LEAK_ROUNDS * len(LEAKS), seen
        (tmp_path / "orphans.txt").write_text(seen)
