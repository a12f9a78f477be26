"""The debug log explains a HAProxy setup on its own (issue 4): the real CLI at ``log_level:
debug`` behind real HAProxy 2.6 on the SHIPPED ``etc/haproxy`` files and
``config.example.yml``, one blocked request, and what the agent's log says about it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from tests.e2e.waf_stack import WafStack, agent_config, nonce
from tests.support.agent import AgentProcess, cli_agent
from tests.support.httpclient import request
from tests.support.ports import free_port
from tests.support.stack import shipped_stack

pytestmark = pytest.mark.e2e

HAPROXY_VERSION = "2.6"
# markers that must never reach the log: a header value and the body (no rule matches them)
SECRET_HEADER = "hdrsecret8f3a"
SECRET_BODY = "bodysecret2c71"
# the attack is in the query string: CRS 942100 (libinjection) scores it, 949110 blocks
ATTACK_QUERY = "q=" + quote("1' OR '1'='1")
CONSOLE_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (\w{3}) (.*)$")


def debug_config(workdir: Path, port: int) -> Path:
    """config.example.yml, nothing appended, with ``log_level: debug`` at the top (the agent
    log: connections, HELLO) and in the application (its log: the message lines)."""
    path = agent_config(workdir, port, extra_rules="", sample_app={"log_level": "debug"})
    data = yaml.safe_load(path.read_text())
    data["log_level"] = "debug"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def wait_until(condition: Callable[[], bool], what: str, agent: AgentProcess) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} never logged:\n{agent.logs()[-4000:]}")
        time.sleep(0.05)


def levelled(log: str) -> list[tuple[str, str]]:
    """(level word, rest) of every console line; continuation lines are kept with level ''."""
    found = []
    for line in log.splitlines():
        match = CONSOLE_LINE.match(line)
        found.append((match.group(1), match.group(2)) if match else ("", line))
    return found


def test_debug_log_of_one_blocked_request_explains_the_setup(tmp_path):
    """1. the agent (CLI, config.example.yml at debug) and HAProxy 2.6 (shipped files)
    2. HAProxy's health check reaches the agent  3. one POST whose query is an SQL injection,
    with a marker in a header value and in the body.
    Result: HAProxy answers 403 by 949110, and the agent's log alone shows the connection with
    its peer, the HELLO offered vs chosen, ONE line for the message with app, id, every
    argument as name:TYPE(size), the verdict HAProxy logged and the time spent; the markers
    appear nowhere in the log, so in no line at info level or above."""
    agent_port, frontend = free_port(), free_port()
    agent = cli_agent(
        debug_config(tmp_path, agent_port), port=agent_port, log_path=tmp_path / "agent.log"
    )
    with shipped_stack(HAPROXY_VERSION, tmp_path, [agent], frontend_port=frontend) as running:
        haproxy = running.haproxy
        wait_until(lambda: "healthcheck=True" in agent.logs(), "HAProxy's health check", agent)
        tag = nonce()
        body = f"note={SECRET_BODY}".encode()
        response = request(
            frontend,
            f"/?{ATTACK_QUERY}&t={tag}",
            method="POST",
            headers={
                "host": "localhost",
                "user-agent": "e2e-test/1.0",
                "content-type": "application/x-www-form-urlencoded",
                "x-e2e-note": SECRET_HEADER,
            },
            body=body,
        )
        assert response.status == 403
        waf = WafStack(haproxy, agent, frontend, 0, 0, tmp_path).waf_log(tag)
        assert (waf["fail"], waf["action"], waf["ruleid"]) == ("1", "deny", "949110")
        transaction_id = waf["id"]
        wait_until(lambda: f"tx={transaction_id}" in agent.logs(), "the message line", agent)
        log = agent.logs()

    lines = levelled(log)
    # the connection HAProxy uses for messages: opened with its peer, HELLO offered vs chosen
    hellos = [rest for level, rest in lines if level == "DBG" and rest.startswith("hello: ")]
    real = [h for h in hellos if "healthcheck=False" in h]
    assert real, hellos
    hello = re.fullmatch(
        r"hello: offered versions=2\.0 max-frame-size=(\d+) capabilities=(\S*) engine-id=(\S+)"
        r" healthcheck=False; chosen max-frame-size=(\d+) pipelining=(True|False) peer=(\S+)",
        real[0],
    )
    assert hello, real[0]
    offered, capabilities, _, chosen, pipelining, peer = hello.groups()
    assert int(chosen) == min(int(offered), 4_194_304)  # config.example.yml's max_frame_size
    assert pipelining == str("pipelining" in capabilities.split(","))
    assert ("DBG", f"connection open peer={peer}") in lines
    assert any("healthcheck=True" in h for h in hellos)  # spop-check, answered and closed

    # ONE line for the message: app, id, arguments as name:TYPE(size), verdict, time spent
    (message,) = [
        rest for level, rest in lines if level == "DBG" and rest.startswith("coraza-req args=")
    ]
    assert message.endswith(f" app=sample_app tx={transaction_id}")
    assert f" peer={peer} stream_id=" in message  # the connection it came on
    args = dict(re.findall(r"([\w-]+):([A-Z0-9]+(?:\(\d+\))?)", message.split("] -> ")[0]))
    assert args["app"] == "STRING(10)"  # "sample_app"
    assert args["id"] == f"STRING({len(transaction_id)})"
    assert args["method"] == "STRING(4)"  # POST
    assert args["path"] == "STRING(1)"
    assert args["query"] == f"STRING({len(ATTACK_QUERY) + len('&t=') + len(tag)})"
    assert args["body"] in (f"BINARY({len(body)})", f"STRING({len(body)})")
    assert re.fullmatch(r"STRING\(\d+\)", args["headers"])
    assert {"src-ip", "src-port", "dst-ip", "dst-port", "version"} <= set(args)
    assert "missing=" not in message and "ignored=" not in message
    verdict = (
        f"-> fail=1 action=deny status=403 ruleid=949110 rules_hit={waf['rules_hit']}"
        f" anomaly_score={waf['anomaly_score']} cache=not-stored"
    )
    assert verdict in message, message
    times = re.search(r" wait=(\d+\.\d{3})ms engine=(\d+\.\d{3})ms total=(\d+\.\d{3})ms ", message)
    assert times, message
    wait, engine, total = map(float, times.groups())
    assert engine > 0 and total >= wait + engine - 0.002  # printed rounded to 1 µs each

    # the rule that blocked, in the same transaction
    assert any('[id "949110"]' in rest and f"tx={transaction_id}" in rest for _, rest in lines)

    # no header value or body content anywhere, so none at info level or above
    above_debug = [rest for level, rest in lines if level in ("INF", "WRN", "ERR")]
    assert above_debug  # the check below has lines to look at
    for secret in (SECRET_HEADER, SECRET_BODY):
        assert secret not in log
