"""An idle agent connection goes dormant behind real HAProxy 2.6 (docs/architecture.md,
"server"): its reader greenlet ends after 5 s without a message, the connection stays
open, and a later request HAProxy sends on it is read and judged by a new reader. The real CLI at
``log_level: debug`` on the shipped ``etc/haproxy`` files and ``config.example.yml``.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable
from urllib.parse import quote

import pytest

from coraza_spoa_py.connection import DORMANT_AFTER_S
from tests.e2e.test_debug_log import debug_config
from tests.e2e.waf_stack import WafStack, nonce
from tests.support.agent import AgentProcess, cli_agent
from tests.support.httpclient import request
from tests.support.ports import free_port
from tests.support.stack import shipped_stack

pytestmark = pytest.mark.e2e

HAPROXY_VERSION = "2.6"
ATTACK_QUERY = "q=" + quote("1' OR '1'='1")  # CRS 942100 scores it, 949110 blocks
ATTEMPTS = 20
DORMANT_LINE = re.compile(r"dormant: idle for [\d.]+s, reader greenlet ended peer=(\S+)")


def _wait_for(find: Callable[[], str | None], what: str, agent: AgentProcess) -> str:
    deadline = time.monotonic() + DORMANT_AFTER_S + 15
    while (found := find()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never logged:\n{agent.logs()[-4000:]}")
        time.sleep(0.05)
    return found


def _peer_of_message(agent: AgentProcess, transaction_id: str) -> str | None:
    """The connection the message of ``transaction_id`` came on (its debug line's ``peer``)."""
    for line in agent.logs().splitlines():
        if " coraza-req args=" in line and f"tx={transaction_id}" in line:
            found = re.search(r" peer=(\S+) stream_id=", line)
            return found.group(1) if found else None
    return None


def test_an_idle_connection_goes_dormant_and_judges_the_next_request(tmp_path):
    """1. A clean GET through HAProxy: 200, and the agent's debug line names its connection.
    2. Nothing for the dormancy period. Result: the agent logs that connection dormant (reader
    greenlet ended), and no close of it. 3. SQL injections, each 403 by 949110, until one's
    message is read on a connection that had gone dormant (HAProxy may open new ones for the
    first few), and the agent logs no warning or error of its own."""
    agent_port, frontend = free_port(), free_port()
    agent = cli_agent(
        debug_config(tmp_path, agent_port), port=agent_port, log_path=tmp_path / "agent.log"
    )
    with shipped_stack(HAPROXY_VERSION, tmp_path, [agent], frontend_port=frontend) as running:
        waf = WafStack(running.haproxy, agent, frontend, 0, 0, tmp_path)
        clean_tag = nonce()
        assert request(frontend, f"/?t={clean_tag}").status == 200
        clean_id = waf.waf_log(clean_tag)["id"]
        peer = _wait_for(lambda: _peer_of_message(agent, clean_id), "the GET's message", agent)

        dormant = _wait_for(
            lambda: peer if peer in DORMANT_LINE.findall(agent.logs()) else None,
            f"{peer} going dormant",
            agent,
        )
        assert "connection closed" not in "\n".join(
            line for line in agent.logs().splitlines() if f"peer={dormant}" in line
        )

        # HAProxy runs one SPOE applet set per thread and picks an idle one on the request's
        # thread, so a request may open a new connection; a few requests reach a dormant one.
        dormant_peers = set(DORMANT_LINE.findall(agent.logs()))
        woken = []
        for _ in range(ATTEMPTS):
            attack_tag = nonce()
            response = request(frontend, f"/?{ATTACK_QUERY}&t={attack_tag}")
            assert response.status == 403
            attack = waf.waf_log(attack_tag)
            assert (attack["fail"], attack["action"], attack["ruleid"]) == ("1", "deny", "949110")
            attack_peer = _wait_for(
                functools.partial(_peer_of_message, agent, attack["id"]),
                "the attack's message",
                agent,
            )
            if attack_peer in dormant_peers:
                woken.append(attack_peer)
                break
        assert woken, f"no attack reached one of the dormant connections {dormant_peers}"
        log = agent.logs()
    # The engine's rule matches are logged at WRN/ERR by design; anything else is the agent's.
    agent_problems = [
        line
        for line in log.splitlines()
        if re.search(r" (WRN|ERR) ", line) and "ModSecurity:" not in line
    ]
    assert agent_problems == [], log[-4000:]
