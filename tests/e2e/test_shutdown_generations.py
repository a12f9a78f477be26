"""The three coraza-spoa config generations run (issue 4): the corpus examples of 2022 (Gen1),
v0.1 (Gen2) and the current form (Gen3) each start the real agent, answer SPOP the way that
generation's HAProxy setup expects, and stop cleanly on SIGTERM with matching counters.

No HAProxy here: a plain-socket SPOP peer plays it (tests/support/spop_client.py), so each
generation's own message shape (Gen1 had no ``app`` argument) is sent exactly.
"""

from __future__ import annotations

import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.support.agent import ONE_PROCESS, AgentProcess
from tests.support.haproxy import PROJECT_ROOT
from tests.support.process import python_module_argv
from tests.support.spop_client import SpopClient, actions_by_name, message

pytestmark = pytest.mark.integration

VALID = PROJECT_ROOT / "tests" / "data" / "configs" / "valid"
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def start_agent(config: Path, log_path: Path) -> tuple[AgentProcess, int]:
    """Start the CLI on a config binding port 0; the port is read from its log line."""
    argv = python_module_argv("coraza_spoa_py", "-config", str(config), *ONE_PROCESS)
    agent = AgentProcess(argv, log_path=log_path, port=0, name="coraza-spoa-py")
    agent.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = LISTENING.search(agent.logs())
        if found:
            return agent, int(found.group(1))
        agent.raise_if_exited()
        time.sleep(0.05)
    agent.kill()
    raise AssertionError(f"the agent never listened:\n{agent.logs()}")


def request(client: SpopClient, stream: int, path: str, **extra: object) -> dict[str, object]:
    client.notify(
        stream,
        1,
        [
            message(
                "coraza-req",
                id=f"tx-{stream}",
                method="GET",
                path=path,
                version="1.1",
                headers="host: example.com\r\n\r\n",
                **extra,
            )
        ],
    )
    _, _, actions = client.read_ack()
    return actions_by_name(actions)


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("gen1_2022", {}),  # 2022 coraza.cfg: no app argument, HAProxy tests txn.coraza.fail
        ("gen2_v0_1", {"app": "sample_app"}),
        ("gen3_current", {"app": "sample_app"}),
    ],
)
def test_each_generation_runs_and_stops_cleanly(
    name: str, extra: dict[str, object], tmp_path: Path
) -> None:
    """1. Start the agent on the generation's corpus file (copied with its rules).
    2. One clean and one attacking coraza-req. 3. SIGTERM.
    Result: fail=0 then fail=1 with action deny; a deprecation line for Gen1/Gen2 only;
    exit 0 with opened == closed."""
    shutil.copytree(VALID / "rules", tmp_path / "rules")
    config = tmp_path / f"{name}.yml"
    shutil.copy(VALID / f"{name}.yml", config)
    agent, port = start_agent(config, tmp_path / "agent.log")
    try:
        with SpopClient.connect(("127.0.0.1", port), green=False) as client:
            client.hello()
            clean = request(client, 1, "/index.html", **extra)
            blocked = request(client, 3, "/attack", **extra)
        assert clean["fail"] == 0 and "action" not in clean
        assert (blocked["fail"], blocked["action"], blocked["ruleid"]) == (1, b"deny", 10001)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=20) == 0
    finally:
        agent.stop()
    logs = agent.logs()
    assert ("deprecated" in logs) == (name != "gen3_current")
    counts = re.findall(r"transactions opened=(\d+) closed=(\d+)", logs)
    assert counts and counts[-1][0] == counts[-1][1] == "2", logs
