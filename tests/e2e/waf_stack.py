"""The product end to end: ``python -m coraza_spoa_py`` on a config derived from
``config.example.yml``, and real HAProxy on the SHIPPED ``etc/haproxy/haproxy.cfg`` +
``coraza.cfg`` with only their addresses substituted (``tests.support.shipped``; never inline
copies, docs/development.md "Shipped files, not copies").

Test-only additions are ADDED, never copied: extra SecRules appended to the example app's
``directives``, extra applications appended to its list, extra HAProxy frontends in an overlay
``-f`` file (one of them with a test-only SPOE file sending ``req.hdrs_bin``). What HAProxy
decided is read from its log line (the shipped log-format prints every ``txn.coraza.*``
variable), found by a nonce each request carries in its query string.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.agent import AgentProcess, cli_agent
from tests.support.haproxy import PROJECT_ROOT, HAProxy
from tests.support.ports import free_port
from tests.support.stack import shipped_stack

EXAMPLE_CONFIG = PROJECT_ROOT / "config.example.yml"
E2E_DIR = Path(__file__).parent
TEST_FRONTENDS_OVERLAY = E2E_DIR / "waf-test-frontends.cfg"
BINARY_HEADERS_SPOE_CFG = E2E_DIR / "waf-binary-headers.spoe.cfg"

# Custom rules the tests append to the example application (ids outside CRS's ranges).
CUSTOM_RULES = """
SecRule REQUEST_URI "@beginsWith /e2e-redirect" \\
  "id:100002,phase:1,log,redirect:https://example.com/blocked,msg:'e2e redirect'"
SecRule REQUEST_URI "@beginsWith /e2e-drop" "id:100003,phase:1,log,drop,msg:'e2e drop'"
SecRule REQUEST_URI "@beginsWith /e2e-response-header" \\
  "id:100004,phase:3,log,deny,status:403,msg:'e2e response header',chain"
  SecRule RESPONSE_HEADERS:Content-Type "@contains text/html" "t:lowercase"
SecRule REQUEST_URI_RAW "@beginsWith http://absolute.e2e/" \\
  "id:100005,phase:1,log,deny,status:403,msg:'e2e absolute-form target'"
SecRule ARGS:forge "@contains passwd" "id:100006,phase:1,log,deny,status:403,msg:'e2e deny'"
"""

_WAF_FIELDS = re.compile(r"(\w+)=(\S*)")


@dataclass
class WafStack:
    haproxy: HAProxy
    agent: AgentProcess
    frontend_port: int
    detect_port: int
    binary_headers_port: int
    workdir: Path

    def waf_log(self, nonce: str, timeout: float = 10.0) -> dict[str, str]:
        """The ``txn.coraza.*`` values HAProxy logged for the request carrying ``nonce``
        ("-" = unset), plus ``http_status`` (HAProxy's %ST)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.haproxy.logs().splitlines():
                if nonce in line and " waf: " in line:
                    head, _, waf = line.partition(" waf: ")
                    fields = dict(_WAF_FIELDS.findall(waf))
                    status = re.search(r" (-?\d{1,3}) -?\d+ \S{4} \"", head)
                    fields["http_status"] = status.group(1) if status else ""
                    return fields
            if time.monotonic() > deadline:
                raise AssertionError(f"no HAProxy log line for {nonce}:\n{self.haproxy.logs()}")
            time.sleep(0.05)

    def agent_lines(self, text: str) -> list[str]:
        return [line for line in self.agent.logs().splitlines() if text in line]


def nonce() -> str:
    return "n" + uuid.uuid4().hex[:16]


def example_app() -> dict[str, Any]:
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    app: dict[str, Any] = data["applications"][0]
    return app


def agent_config(
    workdir: Path,
    port: int,
    *,
    extra_rules: str = CUSTOM_RULES,
    sample_app: Mapping[str, Any] | None = None,
    extra_apps: Sequence[Mapping[str, Any]] = (),
    top_level: Mapping[str, Any] | None = None,
) -> Path:
    """config.example.yml with ``bind`` on ``port``, ``extra_rules`` appended to its app's
    directives, ``sample_app`` keys set on that app, ``extra_apps`` appended and the
    ``top_level`` keys set."""
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    data.update(top_level or {})
    data["bind"] = f"127.0.0.1:{port}"
    app = data["applications"][0]
    app["directives"] = app["directives"] + extra_rules
    app.update(sample_app or {})
    data["applications"].extend(dict(extra) for extra in extra_apps)
    path = workdir / "config.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def detect_only_app(**overrides: Any) -> dict[str, Any]:
    """The example app in DetectionOnly, as ``detect_app`` (used by the overlay frontend)."""
    app = example_app()
    app.update(
        name="detect_app",
        directives=app["directives"] + "SecRuleEngine DetectionOnly\n",
        export_rule_ids=True,
    )
    app.update(overrides)
    return app


@contextmanager
def waf_stack(
    version: str,
    workdir: Path,
    *,
    sample_app: Mapping[str, Any] | None = None,
    detect_app: Mapping[str, Any] | None = None,
    top_level: Mapping[str, Any] | None = None,
) -> Iterator[WafStack]:
    """Agent (CLI subprocess) then HAProxy ``version``; both stopped at the end."""
    agent_port, frontend = free_port(), free_port()
    detect, binary_headers = free_port(), free_port()
    config = agent_config(
        workdir,
        agent_port,
        sample_app=sample_app,
        extra_apps=[detect_only_app(**(detect_app or {}))],
        top_level=top_level,
    )
    agent = cli_agent(config, port=agent_port, log_path=workdir / "agent.log")
    with shipped_stack(
        version,
        workdir,
        [agent],
        frontend_port=frontend,
        substitutions={
            "DETECT_PORT": detect,
            "BINARY_PORT": binary_headers,
            "SPOE_BIN_CFG": BINARY_HEADERS_SPOE_CFG,
        },
        overlays=[TEST_FRONTENDS_OVERLAY],
        wait_ports=[detect, binary_headers],
    ) as running:
        yield WafStack(running.haproxy, agent, frontend, detect, binary_headers, workdir)


def final_counts(agent: AgentProcess) -> dict[str, int]:
    """The agent's last "transactions opened=N closed=N ..." line (logged at shutdown)."""
    lines = [line for line in agent.logs().splitlines() if "transactions opened=" in line]
    assert lines, f"no final transaction line in the agent log:\n{agent.logs()[-3000:]}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1].split("transactions ")[1])}
