"""The product agent (``python -m coraza_spoa_py -config ...``) started through the harness's
``cli_agent`` and put behind real HAProxy: the server works when wired by the CLI, and the
harness's subprocess helpers work for the WAF e2e tests that build on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_spop_haproxy import spop_stack
from tests.support.agent import cli_agent
from tests.support.backend import BackendProcess
from tests.support.httpclient import request
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

CONFIG = """\
bind: 127.0.0.1:{port}
log_level: debug
log_file: /dev/stderr
default_application: sample_app
applications:
  - name: sample_app
    directives: |
      SecRuleEngine On
      SecRule REQUEST_URI "@contains attack" "id:1001,phase:1,deny,status:403,log"
    response_check: false
"""


@pytest.mark.parametrize("version", ["2.6", "3.2"])
def test_cli_agent_behind_haproxy_blocks_and_stops_cleanly(
    version: str, http_backend: BackendProcess, tmp_path: Path
) -> None:
    """1. Write a config with one rule (deny when the URI contains "attack"); start the CLI.
    2. HAProxy ``version`` in front (``spop_stack``'s config, which copies the SPOE variables
       into response headers): / → 200, /attack → 403 (the engine's verdict, fail=1).
    3. SIGTERM: the agent drains, logs its shutdown and exits 0."""
    agent_port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(CONFIG.format(port=agent_port))
    agent = cli_agent(config, port=agent_port, log_path=tmp_path / "agent.log")
    with spop_stack(version, tmp_path, http_backend, agent=agent) as running:
        ok = request(running.frontend_port, "/")
        assert (ok.status, ok.header("X-Coraza-Fail"), ok.header("X-Coraza-Error")) == (
            200,
            "0",
            None,
        )
        denied = request(running.frontend_port, "/attack")
        assert (denied.status, denied.header("X-Coraza-Fail")) == (403, "1")
        assert agent.terminate() == 0
    logs = agent.logs()
    assert "pipelining=True" in logs
    assert "stopped listening" in logs
