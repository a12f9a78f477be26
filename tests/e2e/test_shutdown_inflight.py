"""SIGTERM with SPOP messages in flight: every NOTIFY the agent has read is answered before it
disconnects (no message left without an ACK), then it exits 0.

A plain-socket SPOP peer plays HAProxy with pipelining, so the test sees each frame the agent
writes; the CRS (config.example.yml's rules) and large bodies make each message take long
enough that many are still being processed when the signal arrives.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from coraza_spoa_py.spop import Message, frames
from tests.support.agent import ONE_PROCESS, AgentProcess
from tests.support.haproxy import PROJECT_ROOT
from tests.support.process import python_module_argv
from tests.support.spop_client import SpopClient, actions_by_name, message

pytestmark = pytest.mark.integration

LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
MESSAGES = 48
# the server's default max_inflight_per_connection: all of them are read before the signal
MAX_IN_FLIGHT = 64


def crs_config(tmp_path: Path) -> Path:
    text = (PROJECT_ROOT / "config.example.yml").read_text()
    text = re.sub(r"(?m)^bind: .*$", "bind: 127.0.0.1:0", text)
    # a budget that never sheds here: the point is that each message gets its verdict
    text = re.sub(r"(?m)^processing_budget_ms: .*$", "processing_budget_ms: 60000", text)
    path = tmp_path / "config.yml"
    path.write_text(text)
    return path


def test_sigterm_answers_every_message_already_read(tmp_path: Path) -> None:
    """1. Pipeline 48 coraza-req NOTIFYs with 60 KB form bodies on one connection.
    2. SIGTERM while they are being processed. Result: 48 ACKs (each with a verdict, no
    error), then AGENT-DISCONNECT, then exit 0 with opened == closed.

    The test is only meaningful if messages were still being evaluated after the signal; on a
    quiet machine 48 may all finish within the 0.1 s before it, so the run is repeated (up to 4
    times, with as many messages as one connection may have in flight, 64) until one shows the
    drain."""
    config = crs_config(tmp_path)
    count = MESSAGES
    for attempt in range(4):
        logs = _sigterm_with_messages_in_flight(tmp_path / f"run{attempt}", config, count)
        after_signal = logs[logs.index("received SIGTERM") :]
        if "tx=tx-" in after_signal:
            break
        count = MAX_IN_FLIGHT
    else:
        raise AssertionError("every message finished before SIGTERM in 4 runs: no drain tested")
    opened, closed = map(int, re.findall(r"transactions opened=(\d+) closed=(\d+)", logs)[-1])
    assert opened == closed == count


def _sigterm_with_messages_in_flight(run_dir: Path, config: Path, count: int) -> str:
    """Send ``count`` pipelined requests, SIGTERM, check every one is ACKed; return the log."""
    run_dir.mkdir()
    # one process: with the default (a worker per core) a SIGTERM can reach a worker still
    # loading its rules, which then exits by the signal and the master with 1
    argv = python_module_argv("coraza_spoa_py", "-config", str(config), *ONE_PROCESS)
    agent = AgentProcess(argv, log_path=run_dir / "agent.log", port=0)
    with agent:
        port = _wait_listening(agent)
        body = ("&".join(f"field{i}=value{i}+select+1" for i in range(3000))).encode()[:60000]
        with SpopClient.connect(("127.0.0.1", port), green=False, timeout=60) as client:
            client.hello(frames_hello())
            for stream in range(1, count + 1):
                client.notify(stream, 1, [_request(stream, body)])
            time.sleep(0.1)  # read by the agent, far from all evaluated
            agent.send_signal(signal.SIGTERM)
            acks: dict[int, dict[str, object]] = {}
            while True:
                frame = client.read_frame()
                if frame.type == frames.FrameType.AGENT_DISCONNECT:
                    break
                assert frame.type == frames.FrameType.ACK
                acks[frame.stream_id] = actions_by_name(frames.decode_actions(frame.payload))
        assert agent.wait(timeout=30) == 0
    assert sorted(acks) == list(range(1, count + 1))
    for stream, variables in acks.items():
        assert "error" not in variables, (stream, variables)
        assert variables["fail"] in (0, 1)
    return agent.logs()


def frames_hello() -> bytes:
    from coraza_spoa_py.spop import handshake

    # a big frame size so the 60 KB bodies fit; pipelining so they are processed concurrently
    return handshake.encode_haproxy_hello(max_frame_size=131068, capabilities="pipelining")


def _request(stream: int, body: bytes) -> Message:
    return message(
        "coraza-req",
        app="sample_app",
        id=f"tx-{stream}",
        method="POST",
        path="/submit",
        version="1.1",
        headers=(
            "host: shop.example.com\r\ncontent-type: application/x-www-form-urlencoded\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ),
        body=body,
    )


def _wait_listening(agent: AgentProcess) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = LISTENING.search(agent.logs())
        if found:
            return int(found.group(1))
        agent.raise_if_exited()
        time.sleep(0.05)
    raise AssertionError(agent.logs())
