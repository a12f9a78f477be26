"""Rule-match log lines through HAProxy 3.2, in both formats (docs/compatibility.md "Logging"):
a blocked request's matches reach the application's JSON log as one object per rule with
coraza-spoa's field names, and the agent's console log (an application without log settings of
its own) as the engine's lines. The record carries ``RuleMatch`` objects and each renderer
turns them into its format (docs/architecture.md "Rule-match log records")."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.waf_stack import nonce, waf_stack
from tests.support.httpclient import request

pytestmark = pytest.mark.e2e

HEADERS = {"host": "localhost", "user-agent": "e2e-test/1.0", "accept": "*/*"}


def _json_lines(path: Path, transaction_id: str, timeout: float = 5.0) -> list[dict]:
    # the app log is block buffered and flushed every second (docs/performance.md item 5)
    deadline = time.monotonic() + timeout
    while True:
        found = []
        if path.exists():
            records = [json.loads(line) for line in path.read_text().splitlines()]
            found = [r for r in records if r.get("tx") == transaction_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_blocked_request_logs_json_objects_and_console_lines(tmp_path: Path) -> None:
    app_log = tmp_path / "sample_app.json"
    with waf_stack(
        "3.2",
        tmp_path,
        sample_app={"log_level": "info", "log_file": str(app_log), "log_format": "json"},
    ) as stack:
        stack.haproxy.wait_for_server_status("coraza-spoa", "coraza-agent", "UP")
        tag = nonce()
        path = f"/?p=/etc/passwd&t={tag}"
        assert request(stack.frontend_port, path, headers=HEADERS).status == 403
        transaction_id = stack.waf_log(tag)["id"]
        records = _json_lines(app_log, transaction_id)
        rule_ids = [record["match"]["rule_id"] for record in records]
        assert 930120 in rule_ids and rule_ids[-1] == 949110, rule_ids
        for record in records:
            assert record["app"] == "sample_app" and record["level"] == "error"
            assert record["message"] == "rules matched"
            match = record["match"]
            assert match["unique_id"] == transaction_id
            assert match["uri"] == "/"  # the engine's URI of a rule message: the path
            assert match["file"].endswith(".conf") and match["line"] > 0
            assert match["severity"] == "critical" and match["phase"] == "request-body"
            assert isinstance(match["tags"], list) and "ModSecurity: " in match["raw"]
            assert f'[id "{match["rule_id"]}"]' in match["raw"]
        assert [r["match"]["disruptive"] for r in records].count(True) == 1
        # the agent's console log has none of sample_app's lines ...
        assert stack.agent_lines(f"tx={transaction_id}") == []
        # ... and detect_app, without log settings of its own, writes its engine lines there
        detect_tag = nonce()
        detect_path = f"/?p=/etc/passwd&t={detect_tag}"
        assert request(stack.detect_port, detect_path, headers=HEADERS).status == 200
        detect_id = stack.waf_log(detect_tag)["id"]
        deadline = time.monotonic() + 5
        while not (lines := stack.agent_lines(f"tx={detect_id}")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert any('[id "930120"]' in line and "app=detect_app" in line for line in lines), lines


def test_logging_disabled_then_enabled_by_a_reload_brings_the_engine_lines_back(
    tmp_path: Path,
) -> None:
    """With every sink above ERROR the engine formats no rule-match text (docs/performance.md
    change 54); a reload that logs again must bring it back at once.
    1. The agent and both applications at ``log_level: disabled`` behind HAProxy 3.2: an
       attack is 403 and the agent writes nothing about it.
    2. ``log_level: info`` for the agent and sample_app in the config, SIGHUP. Result: the
       next attack is 403 and each of its console lines is the engine's own text
       (``ModSecurity: ... [id "949110"]``), not the JSON that a record without text falls
       back to (``log_render``)."""
    disabled = {"log_level": "disabled"}
    with waf_stack(
        "3.2", tmp_path, sample_app=disabled, detect_app=disabled, top_level=disabled
    ) as stack:
        stack.haproxy.wait_for_server_status("coraza-spoa", "coraza-agent", "UP")
        tag = nonce()
        attack = f"/?p=/etc/passwd&t={tag}"
        assert request(stack.frontend_port, attack, headers=HEADERS).status == 403
        assert stack.agent_lines(f"tx={stack.waf_log(tag)['id']}") == []

        config = tmp_path / "config.yml"
        data = yaml.safe_load(config.read_text())
        data["log_level"] = data["applications"][0]["log_level"] = "info"
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        stack.agent.send_signal(signal.SIGHUP)
        stack.agent.wait_for_log("configuration successfully reloaded", timeout=60)

        tag = nonce()
        attack = f"/?p=/etc/passwd&t={tag}"
        assert request(stack.frontend_port, attack, headers=HEADERS).status == 403
        transaction_id = stack.waf_log(tag)["id"]
        deadline = time.monotonic() + 5
        while not (lines := stack.agent_lines(f"tx={transaction_id}")):
            assert time.monotonic() < deadline, stack.agent.logs()[-3000:]
            time.sleep(0.2)
        assert len(lines) == 3 and all("ModSecurity: " in line for line in lines), lines
        assert not any('"rule_id"' in line for line in lines), lines
        assert '[id "949110"]' in lines[-1] and "Access denied with code 403" in lines[-1]
