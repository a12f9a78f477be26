"""The product end to end: ``python -m coraza_spoa_py`` on a config derived from
``config.example.yml``, and real HAProxy on the SHIPPED ``etc/haproxy/haproxy.cfg`` +
``coraza.cfg`` with only their addresses substituted (never inline copies, style.md rule 10).

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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.agent import AgentProcess, cli_agent
from tests.support.haproxy import PROJECT_ROOT, HAProxy, start_haproxy
from tests.support.ports import free_port

EXAMPLE_CONFIG = PROJECT_ROOT / "config.example.yml"
SHIPPED_HAPROXY_CFG = PROJECT_ROOT / "etc/haproxy/haproxy.cfg"
SHIPPED_SPOE_CFG = PROJECT_ROOT / "etc/haproxy/coraza.cfg"
E2E_DIR = Path(__file__).parent
TEST_FRONTENDS_OVERLAY = E2E_DIR / "waf-test-frontends.cfg"
BINARY_HEADERS_SPOE_CFG = E2E_DIR / "waf-binary-headers.spoe.cfg"

# the addresses in the shipped haproxy.cfg, each replaced by a free port (count = occurrences)
SHIPPED_FRONTEND = "127.0.0.1:8080"
SHIPPED_DEMO_APP = "127.0.0.1:8081"
SHIPPED_AGENT = "127.0.0.1:9000"
SHIPPED_SPOE_PATH = "config etc/haproxy/coraza.cfg"

# Custom rules the tests append to the example application (ids outside CRS's ranges).
CUSTOM_RULES = """
SecRule REQUEST_URI "@beginsWith /e2e-redirect" \\
  "id:100002,phase:1,log,redirect:https://example.com/blocked,msg:'e2e redirect'"
SecRule REQUEST_URI "@beginsWith /e2e-drop" "id:100003,phase:1,log,drop,msg:'e2e drop'"
SecRule REQUEST_URI "@beginsWith /e2e-response-header" \\
  "id:100004,phase:3,log,deny,status:403,msg:'e2e response header',chain"
  SecRule RESPONSE_HEADERS:Content-Type "@contains text/html" "t:lowercase"
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


def render_shipped_haproxy(workdir: Path, frontend: int, demo_app: int, agent: int) -> Path:
    """The shipped haproxy.cfg with its three addresses and the SPOE path substituted (in
    configuration lines; comments are left alone)."""
    lines = SHIPPED_HAPROXY_CFG.read_text().splitlines(keepends=True)
    for old, new, count in (
        (SHIPPED_FRONTEND, f"127.0.0.1:{frontend}", 1),
        (SHIPPED_DEMO_APP, f"127.0.0.1:{demo_app}", 2),
        (SHIPPED_AGENT, f"127.0.0.1:{agent}", 1),
        (SHIPPED_SPOE_PATH, f"config {SHIPPED_SPOE_CFG}", 1),
    ):
        found = [n for n, line in enumerate(lines) if old in line and not _is_comment(line)]
        # a changed shipped file must fail loudly here, not silently test something else
        assert len(found) == count, f"{old!r} expected {count}x in {SHIPPED_HAPROXY_CFG}"
        for n in found:
            lines[n] = lines[n].replace(old, new)
    dest = workdir / "src" / "haproxy.cfg"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("".join(lines))
    return dest


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


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
) -> Path:
    """config.example.yml with ``bind`` on ``port``, ``extra_rules`` appended to its app's
    directives, ``sample_app`` keys set on that app and ``extra_apps`` appended."""
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
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
) -> Iterator[WafStack]:
    """Agent (CLI subprocess) then HAProxy ``version``; both stopped at the end."""
    agent_port, frontend, demo = free_port(), free_port(), free_port()
    detect, binary_headers = free_port(), free_port()
    config = agent_config(
        workdir,
        agent_port,
        sample_app=sample_app,
        extra_apps=[detect_only_app(**(detect_app or {}))],
    )
    with ExitStack() as stack:
        agent = cli_agent(config, port=agent_port, log_path=workdir / "agent.log")
        stack.enter_context(agent)
        agent.wait_ready(timeout=60)
        haproxy = stack.enter_context(
            start_haproxy(
                version,
                render_shipped_haproxy(workdir, frontend, demo, agent_port),
                workdir,
                substitutions={
                    "DETECT_PORT": detect,
                    "BINARY_PORT": binary_headers,
                    "SPOE_CFG": SHIPPED_SPOE_CFG,
                    "SPOE_BIN_CFG": BINARY_HEADERS_SPOE_CFG,
                },
                overlays=[TEST_FRONTENDS_OVERLAY],
                wait_ports=[frontend, detect, binary_headers],
            )
        )
        yield WafStack(haproxy, agent, frontend, detect, binary_headers, workdir)


def final_counts(agent: AgentProcess) -> dict[str, int]:
    """The agent's last "transactions opened=N closed=N ..." line (logged at shutdown)."""
    lines = [line for line in agent.logs().splitlines() if "transactions opened=" in line]
    assert lines, f"no final transaction line in the agent log:\n{agent.logs()[-3000:]}"
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1].split("transactions ")[1])}
