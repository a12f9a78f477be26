"""An idle agent connection goes dormant behind real HAProxy 2.6 (docs/architecture.md,
"server"): its reader greenlet ends after 5 s without a message, the connection stays
open, and a later request HAProxy sends on it is read and judged by a new reader. The real CLI at
``log_level: debug`` on the shipped ``etc/haproxy`` files and ``config.example.yml``.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import pytest

from tests.e2e.test_debug_log import debug_config, levelled, wait_until
from tests.e2e.waf_stack import WafStack, nonce
from tests.support.agent import cli_agent
from tests.support.httpclient import request
from tests.support.ports import free_port
from tests.support.stack import shipped_stack

pytestmark = pytest.mark.e2e

HAPROXY_VERSION = "2.6"
ATTACK_QUERY = "q=" + quote("1' OR '1'='1")  # CRS 942100 scores it, 949110 blocks
ATTEMPTS = 20
DORMANT_LINE = re.compile(r"dormant: idle for [\d.]+s, reader greenlet ended peer=(\S+)")


def _peer_of_message(waf: WafStack, transaction_id: str) -> str | None:
    """The connection the message of ``transaction_id`` came on (its debug line's ``peer``)."""
    for line in waf.agent_lines(f"tx={transaction_id}"):
        if " coraza-req args=" in line:
            found = re.search(r" peer=(\S+) stream_id=", line)
            return found.group(1) if found else None
    return None


def _message_peer(waf: WafStack, transaction_id: str, what: str) -> str:
    wait_until(lambda: _peer_of_message(waf, transaction_id) is not None, what, waf.agent)
    return _peer_of_message(waf, transaction_id) or ""


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
        peer = _message_peer(waf, waf.waf_log(clean_tag)["id"], "the GET's message")

        wait_until(
            lambda: peer in DORMANT_LINE.findall(agent.logs()), f"{peer} going dormant", agent
        )
        assert not [line for line in waf.agent_lines(f"peer={peer}") if "connection closed" in line]

        # Seen with HAProxy 2.6: the next request may come on a new connection rather than the
        # idle one, so the attacks go on until one is read on a connection that went dormant.
        dormant_peers = set(DORMANT_LINE.findall(agent.logs()))
        for _ in range(ATTEMPTS):
            attack_tag = nonce()
            assert request(frontend, f"/?{ATTACK_QUERY}&t={attack_tag}").status == 403
            attack = waf.waf_log(attack_tag)
            assert (attack["fail"], attack["action"], attack["ruleid"]) == ("1", "deny", "949110")
            if _message_peer(waf, attack["id"], "the attack's message") in dormant_peers:
                break
        else:
            raise AssertionError(f"no attack reached a dormant connection {dormant_peers}")
        log = agent.logs()
    # The engine's rule matches are logged at WRN/ERR by design; anything else is the agent's.
    agent_problems = [
        rest
        for level, rest in levelled(log)
        if level in ("WRN", "ERR") and "ModSecurity:" not in rest
    ]
    assert agent_problems == [], log[-4000:]
