"""The ModSecurity SPOA dialect end to end: real HAProxy 2.6 and 3.2 with the C
``spoa-modsecurity`` agents' SPOE configs (8 and 12 positional arguments, their deny rule
``var(txn.modsec.code) -m int gt 0``), and the agent started the C agent's way, with only
``-f <modsecurity.conf> -p <port>`` (a ModSecurity config that Includes Debian's CRS).

Each case checks what the client got AND what HAProxy logged of ``txn.modsec.*``. A second
agent, on a YAML config with two applications and no default, shows an unknown ``app``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import yaml

from tests.support.agent import AgentProcess
from tests.support.backend import BackendProcess
from tests.support.haproxy import HAProxy, start_haproxy
from tests.support.httpclient import request
from tests.support.ports import free_port
from tests.support.process import python_module_argv
from tests.support.shipped import render_shipped_text
from tests.support.stack import running_stack

pytestmark = pytest.mark.e2e

MODSEC_DIR = Path(__file__).parent / "modsec"
MODSEC_CONF = MODSEC_DIR / "modsecurity.conf"
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "etc" / "haproxy" / "modsecurity"
VERSIONS = ("2.6", "3.2", "3.4")
FRONTENDS: tuple[str, ...] = ("fe8", "fe12", "fe_ignore", "fe_plain", "fe_unknown_message")
FRONTENDS += ("fe_unknown_app", "fe_known_app")
CLIENT = {"host": "localhost", "user-agent": "e2e-test/1.0", "accept": "*/*"}
FORM = {**CLIENT, "content-type": "application/x-www-form-urlencoded"}
SQLI_BODY = b"id=1' OR '1'='1' --&name=x"
_FIELDS = re.compile(r"(\w+)=(\S*)")


@dataclass
class Stack:
    haproxy: HAProxy
    agent: AgentProcess
    ports: dict[str, int]
    version: str
    workdir: Path

    def send(self, frontend: str, path: str, *, post: bytes | None = None) -> tuple[int, dict]:
        """One request carrying a nonce; (HTTP status, HAProxy's logged modsec fields)."""
        tag = "n" + uuid.uuid4().hex[:12]
        target = f"{path}{'&' if '?' in path else '?'}t={tag}"
        if post is None:
            response = request(self.ports[frontend], target, headers=CLIENT)
        else:
            response = request(self.ports[frontend], target, method="POST", headers=FORM, body=post)
        return response.status, self._logged(tag)

    def _logged(self, tag: str, timeout: float = 10.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            for line in self.haproxy.logs().splitlines():
                if tag in line and " modsec: " in line:
                    fields = dict(_FIELDS.findall(line.partition(" modsec: ")[2]))
                    fields["frontend"], fields["status"] = line.split()[:2]
                    return fields
            if time.monotonic() > deadline:
                raise AssertionError(f"no HAProxy log line for {tag}:\n{self.haproxy.logs()}")
            time.sleep(0.05)


def _yaml_agent_config(workdir: Path, port: int) -> Path:
    # two applications, no default_application: an unknown `app` has nowhere to go
    crs = f'Include "{MODSEC_CONF}"\n'
    data = {
        "bind": f"127.0.0.1:{port}",
        "log_level": "info",
        "log_file": "/dev/stdout",
        "log_format": "console",
        "applications": [
            {"name": "crs", "directives": crs, "response_check": False},
            {"name": "other", "directives": "SecRuleEngine On\n", "response_check": False},
        ],
    }
    path = workdir / "two-apps.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module", params=VERSIONS, ids=[f"haproxy-{v}" for v in VERSIONS])
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    http_backend: BackendProcess,
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp(f"modsec-{request.param}")
    port, yaml_port = free_port(), free_port()
    ports = {frontend: free_port() for frontend in FRONTENDS}
    # only -f and -p, as the C agent's systemd unit passes them
    agent = AgentProcess(
        python_module_argv("coraza_spoa_py", "-f", str(MODSEC_CONF), "-p", str(port)),
        log_path=workdir / "agent.log",
        port=port,
    )
    yaml_agent = AgentProcess(
        python_module_argv(
            "coraza_spoa_py", "-config", str(_yaml_agent_config(workdir, yaml_port))
        ),
        log_path=workdir / "yaml-agent.log",
        port=yaml_port,
        name="yaml-agent",
    )
    substitutions: dict[str, object] = {
        f"{frontend.upper()}_PORT": fe_port for frontend, fe_port in ports.items()
    }
    substitutions |= {
        "AGENT_ADDR": f"127.0.0.1:{port}",
        "YAML_AGENT_ADDR": f"127.0.0.1:{yaml_port}",
        "BACKEND_PORT": http_backend.port,
    }
    files = {
        "SPOE_8": MODSEC_DIR / "spoe-8.conf",
        "SPOE_12": MODSEC_DIR / "spoe-12.conf",
        "SPOE_EXTRA": MODSEC_DIR / "spoe-extra.conf",
        "SPOE_UNKNOWN_MESSAGE": MODSEC_DIR / "spoe-unknown-message.conf",
        "SPOE_UNKNOWN_APP": MODSEC_DIR / "spoe-unknown-app.conf",
    }
    haproxy = partial(
        start_haproxy,
        request.param,
        MODSEC_DIR / "haproxy.cfg",
        workdir / "haproxy",
        substitutions=substitutions,
        extra_files=files,
        wait_ports=list(ports.values()),
    )
    with running_stack([agent, yaml_agent], haproxy) as running:
        yield Stack(running.haproxy, agent, ports, request.param, workdir)


@pytest.mark.parametrize("frontend", ["fe8", "fe12"])
def test_the_c_agents_configs_block_attacks_and_pass_clean_requests(stack, frontend):
    status, logged = stack.send(frontend, "/")
    assert (status, logged["code"], logged["intervention"]) == (200, "0", "0")
    status, logged = stack.send(frontend, "/?p=/etc/passwd")
    assert (status, logged["code"], logged["intervention"]) == (403, "403", "1")
    status, logged = stack.send(frontend, "/login", post=SQLI_BODY)
    assert (status, logged["code"]) == (403, "403")
    assert logged["error"] == "-"


def test_ignorerules_removes_exactly_the_named_rules_for_one_frontend(stack):
    # fe_ignore removes 930120 and 932160, the two rules /etc/passwd trips; fe_plain none
    status, logged = stack.send("fe_ignore", "/?p=/etc/passwd")
    assert (status, logged["code"]) == (200, "0")
    status, logged = stack.send("fe_plain", "/?p=/etc/passwd")
    assert (status, logged["code"]) == (403, "403")
    # every other rule still runs on fe_ignore: SQL injection is blocked there too
    status, logged = stack.send("fe_ignore", "/login", post=SQLI_BODY)
    assert (status, logged["code"]) == (403, "403")
    # and the same request again on fe_plain: the exclusion stayed with its frontend
    status, logged = stack.send("fe_plain", "/?p=/etc/passwd")
    assert (status, logged["code"]) == (403, "403")


def test_an_unknown_message_name_is_an_error_and_haproxy_denies(stack):
    for path in ("/?p=/etc/passwd", "/"):
        status, logged = stack.send("fe_unknown_message", path)
        assert (status, logged["error"], logged["code"]) == (403, "1006", "1006")


def test_an_unknown_app_is_an_error_and_haproxy_denies(stack):
    status, logged = stack.send("fe_unknown_app", "/?p=/etc/passwd")
    assert (status, logged["error"], logged["code"]) == (403, "1002", "1002")
    # a known app given with a port ("crs:8080") is the app "crs": judged, not an error
    status, logged = stack.send("fe_known_app", "/?p=/etc/passwd")
    assert (status, logged["code"], logged["error"]) == (403, "403", "-")
    status, logged = stack.send("fe_known_app", "/")
    assert (status, logged["code"]) == (200, "0")


def test_the_shipped_modsecurity_sample_blocks_and_logs_code(stack):
    # etc/haproxy/modsecurity as shipped, only its addresses rewritten, on the -f agent
    workdir = stack.workdir / "shipped"
    workdir.mkdir()
    spoe = workdir / "spoe-modsecurity.conf"
    spoe.write_text((SHIPPED_DIR / "spoe-modsecurity.conf").read_text())
    frontend, demo = free_port(), free_port()
    assert stack.agent.port is not None
    rendered = workdir / "shipped-modsecurity.cfg"
    rendered.write_text(
        render_shipped_text(
            (SHIPPED_DIR / "haproxy.cfg").read_text(),
            frontend_port=frontend,
            agent_port=stack.agent.port,
            spoe_backend="spoe-modsecurity",
            spoe_config=spoe,
            demo_port=demo,
        )
    )
    with start_haproxy(stack.version, rendered, workdir, wait_ports=[frontend]) as haproxy:
        seen = {}
        for path in ("/", "/?p=/etc/passwd"):
            tag = "n" + uuid.uuid4().hex[:12]
            seen[path] = request(frontend, f"{path}{'&' if '?' in path else '?'}t={tag}").status
            deadline = time.monotonic() + 10
            # the frontend's line (the demo app's `listen` logs the request too)
            while not (
                lines := [
                    x for x in haproxy.logs().splitlines() if f"{tag} " in x and " modsec: " in x
                ]
            ):
                assert time.monotonic() < deadline, haproxy.logs()
                time.sleep(0.05)
            (line,) = lines
            seen[f"{path} code"] = dict(_FIELDS.findall(line.partition(" modsec: ")[2]))["code"]
    assert seen == {"/": 200, "/ code": "0", "/?p=/etc/passwd": 403, "/?p=/etc/passwd code": "403"}
