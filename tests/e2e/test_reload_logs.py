"""SIGHUP and the log files of the real agent process: logrotate's rename-then-HUP works, and a
reload applies a new log configuration (level, file, format) at once."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess
from tests.support.process import python_module_argv

pytestmark = pytest.mark.integration

LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def config_text(log_file: Path, *, level: str = "info", fmt: str = "console") -> str:
    return (
        "bind: 127.0.0.1:0\n"
        f"log_level: {level}\nlog_file: {log_file}\nlog_format: {fmt}\n"
        "applications:\n  - name: a\n    directives: SecRuleEngine On\n"
    )


def wait_for(path: Path, text: str, agent: AgentProcess, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        agent.raise_if_exited()
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}:\n{agent.logs()}")


def test_sighup_reopens_a_rotated_log_file_and_applies_new_log_settings(tmp_path: Path) -> None:
    """1. Agent logging to agent.log. 2. Rename it (logrotate), SIGHUP. Result: the reload
    lines land in a new agent.log, the old lines stay in agent.log.1. 3. Change the config to
    debug + JSON in another file, SIGHUP. Result: that file gets JSON lines at once."""
    log_file = tmp_path / "agent.log"
    config = tmp_path / "config.yml"
    config.write_text(config_text(log_file))
    argv = python_module_argv("coraza_spoa_py", "-config", str(config))
    agent = AgentProcess(argv, log_path=tmp_path / "output.log", port=0)
    with agent:
        wait_for(log_file, "listening on", agent)
        rotated = tmp_path / "agent.log.1"
        log_file.rename(rotated)
        agent.send_signal(signal.SIGHUP)
        wait_for(log_file, "configuration successfully reloaded", agent)
        assert "listening on" in rotated.read_text()
        assert "listening on" not in log_file.read_text()

        json_file = tmp_path / "agent.json"
        config.write_text(config_text(json_file, level="debug", fmt="json"))
        agent.send_signal(signal.SIGHUP)
        content = wait_for(json_file, "configuration successfully reloaded", agent)
        records = [json.loads(line) for line in content.splitlines()]
        assert {"level", "time", "message"} <= set(records[-1])
        assert records[-1]["level"] == "info"
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=20) == 0
    final = [json.loads(line) for line in json_file.read_text().splitlines()]
    assert final[-1]["message"] == "coraza-spoa-py stopped (SIGTERM)"
    assert agent.logs() == "", "nothing may go to stdout/stderr when logging to files"


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_while_the_rules_compile_does_not_kill_the_agent(
    tmp_path: Path, workers: int
) -> None:
    """1. Start on the CRS config. 2. SIGHUP as soon as "starting" is logged, while the CRS
    compiles. Result: the agent still starts listening (SIGHUP's default action would have
    ended the process). With 2 workers the master holds the SIGHUP for each worker until it is
    ready and then sends it: each reloads once, and the agent stops cleanly."""
    example = Path(__file__).resolve().parents[2] / "config.example.yml"
    config = tmp_path / "config.yml"
    config.write_text(example.read_text().replace("bind: 127.0.0.1:9000", "bind: 127.0.0.1:0"))
    argv = python_module_argv("coraza_spoa_py", "-config", str(config), "-workers", str(workers))
    agent = AgentProcess(argv, log_path=tmp_path / "output.log", port=0)
    with agent:
        output = tmp_path / "output.log"
        wait_for(output, "starting coraza-spoa-py", agent)
        agent.send_signal(signal.SIGHUP)
        wait_for(output, "listening on", agent)
        if workers > 1:
            deadline = time.monotonic() + 60
            while output.read_text().count("configuration successfully reloaded") < workers:
                assert time.monotonic() < deadline, output.read_text()[-3000:]
                agent.raise_if_exited()
                time.sleep(0.1)
        assert agent.is_running()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=20) == 0
