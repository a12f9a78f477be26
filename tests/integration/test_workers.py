"""One agent with two worker processes, played by a SPOP client: a response sent on another
connection than its request reaches the other worker half the time, and is handed to the
worker holding its transaction (docs/architecture.md "Process model").

The rule that proves it needs the request: a phase-3 rule on ``REQUEST_URI`` (an orphan
inspection, without the request, cannot match it, docs/operations.md "Several agents"). Every
``/admin`` response must be denied, whichever worker the response reached.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.support.agent import cli_agent, metric_sum, workers_agent
from tests.support.haproxy import PROJECT_ROOT
from tests.support.httpclient import request
from tests.support.ports import free_port
from tests.support.spop_client import SpopClient, actions_by_name, message

pytestmark = pytest.mark.integration

CONFIG = """\
bind: 127.0.0.1:{port}
log_level: warn
applications:
  - name: shop
    response_check: true
    directives: |
      SecRuleEngine On
      SecRule REQUEST_URI "@beginsWith /admin" "id:100010,phase:3,deny,status:403,chain"
        SecRule RESPONSE_HEADERS:Content-Type "@contains text/html"
"""
CONNECTIONS = 16
WORKERS_2 = ("-workers", "2")
TRANSACTIONS = 400
MAX_CONNECT_ATTEMPTS = 400


def _worker_pids(master_pid: int) -> list[int]:
    with open(f"/proc/{master_pid}/task/{master_pid}/children") as f:
        return [int(pid) for pid in f.read().split()]


def _server_side_inode(agent_port: int, client_port: int) -> int | None:
    """The inode of the agent's end of one loopback connection (/proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            local_port, remote_port = (int(a.split(":")[1], 16) for a in fields[1:3])
            if (local_port, remote_port) == (agent_port, client_port):
                return int(fields[9])
    return None


def _owner(worker_pids: list[int], inode: int) -> int | None:
    target = f"socket:[{inode}]"
    for pid in worker_pids:
        folder = f"/proc/{pid}/fd"
        for fd in os.listdir(folder):
            try:
                if os.readlink(f"{folder}/{fd}") == target:
                    return pid
            except FileNotFoundError:
                continue
    return None


def _connect_on_every_worker(port: int, worker_pids: list[int]) -> list[SpopClient]:
    """``CONNECTIONS`` clients, half accepted by each worker. The kernel lets whichever worker
    calls ``accept()`` first take a connection from the shared listener, so on a busy box one
    worker can take them all; connections that land on a worker with its share are closed."""
    by_worker: dict[int, list[SpopClient]] = {pid: [] for pid in worker_pids}
    share = CONNECTIONS // len(worker_pids)
    for _ in range(MAX_CONNECT_ATTEMPTS):
        if all(len(clients) == share for clients in by_worker.values()):
            return [client for clients in by_worker.values() for client in clients]
        client = SpopClient.connect(("127.0.0.1", port), green=False)
        client.hello()  # answered, so the connection is accepted and owned
        inode = _server_side_inode(port, client.sock.getsockname()[1])
        owner = None if inode is None else _owner(worker_pids, inode)
        if owner is None or len(by_worker[owner]) == share:
            client.close()
        else:
            by_worker[owner].append(client)
    raise AssertionError(f"connections per worker after {MAX_CONNECT_ATTEMPTS}: "
                         f"{ {pid: len(c) for pid, c in by_worker.items()} }")  # fmt: skip


def test_responses_reach_the_worker_holding_their_transaction(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "config.yml"
    config.write_text(CONFIG.format(port=port))
    log_path = tmp_path / "agent.log"
    with workers_agent(config, port=port, metrics_port=metrics_port, log_path=log_path) as agent:
        worker_pids = _worker_pids(agent.pid)
        assert len(worker_pids) == 2, worker_pids
        clients = _connect_on_every_worker(port, worker_pids)
        answers = []
        took: list[float] = []
        for n in range(TRANSACTIONS):
            tx = f"tx-{n}"
            path = "/admin/users" if n % 2 else "/shop"
            requester, responder = clients[n % CONNECTIONS], clients[(n * 7 + 3) % CONNECTIONS]
            requester.notify(1, n, [message("coraza-req", app="shop", id=tx, method="GET",
                                            path=path, version="1.1",
                                            headers="host: shop\r\n\r\n")])  # fmt: skip
            assert actions_by_name(requester.read_ack()[2]).get("action") is None
            started = time.perf_counter()
            responder.notify(2, n, [message("coraza-res", app="shop", id=tx, version="1.1",
                                            headers="content-type: text/html\r\n\r\n")])  # noqa: E501  # fmt: skip
            answers.append((path, actions_by_name(responder.read_ack()[2]).get("action")))
            took.append(time.perf_counter() - started)
        for client in clients:
            client.close()
        text = request(metrics_port, "/metrics").body.decode()
    routed = {
        route: metric_sum(text, "coraza_spoa_py_responses_routed_total", route=route)
        for route in ("local", "handed_off", "fallback", "received")
    }
    # the rule needs the request: a response judged without it would pass
    assert [a for p, a in answers if p.startswith("/admin")] == [b"deny"] * (TRANSACTIONS // 2)
    assert [a for p, a in answers if p == "/shop"] == [None] * (TRANSACTIONS // 2)
    assert routed["handed_off"] > 0 and routed["local"] > 0, routed
    assert routed["handed_off"] == routed["received"], routed
    assert routed["local"] + routed["handed_off"] == TRANSACTIONS, routed
    assert routed["fallback"] == 0, routed
    assert metric_sum(text, "coraza_spoa_py_orphan_responses_total") == 0
    (tmp_path / "routes.txt").write_text(
        f"{routed}; mean response round trip {sum(took) / len(took) * 1e6:.0f} us\n"
    )


GEN2_CONFIG = """\
bind: 127.0.0.1:{port}
applications:
  shop:
    directives: |
      SecRuleEngine On
"""


def test_the_config_notices_are_logged_once_by_the_master(tmp_path: Path) -> None:
    """1. A deprecated (Gen2) config, two workers. 2. Every worker ready. Result: its
    deprecation notice is in the log once, on the master's line: the workers read the same
    file and do not repeat it."""
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "config.yml"
    config.write_text(GEN2_CONFIG.format(port=port))
    log_path = tmp_path / "agent.log"
    with workers_agent(config, port=port, metrics_port=metrics_port, log_path=log_path) as agent:
        logs = agent.logs()
    notices = [line for line in logs.splitlines() if "deprecated" in line]
    assert len(notices) == 1, logs
    assert "master" in notices[0], notices
    assert logs.count("starting coraza-spoa-py") == 2, logs  # each worker still says it starts


def test_a_stop_while_the_workers_compile_their_rules_is_a_clean_stop(tmp_path: Path) -> None:
    """1. Two workers compiling the CRS (seconds). 2. SIGTERM before either serves: each dies of
    the signal (no handler yet). Result: the master exits 0, the stop the operator asked for,
    and no worker ever listened."""
    port = free_port()
    text = (PROJECT_ROOT / "config.example.yml").read_text()
    config = tmp_path / "config.yml"
    config.write_text(re.sub(r"(?m)^bind: .*$", f"bind: 127.0.0.1:{port}", text))
    agent = cli_agent(config, port=port, log_path=tmp_path / "agent.log", extra_args=WORKERS_2)
    with agent:
        deadline = time.monotonic() + 30
        while "master: worker 2 started" not in agent.logs():
            assert time.monotonic() < deadline, agent.logs()
            time.sleep(0.01)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, agent.logs()
    logs = agent.logs()
    assert "listening on" not in logs, logs
    assert "master: stopped (2 worker(s) clean)" in logs, logs


def test_a_restarted_worker_that_cannot_read_the_config_says_which_worker_it_is(
    tmp_path: Path,
) -> None:
    """1. Two workers serving. 2. The config broken on disk, then worker 1 killed (-9): the
    master restarts it and it fails to read the file. Result: the config error lines of that
    restart carry ``worker=1``, so the operator knows which process failed."""
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "config.yml"
    config.write_text(CONFIG.format(port=port))
    log_path = tmp_path / "agent.log"
    with workers_agent(config, port=port, metrics_port=metrics_port, log_path=log_path) as agent:
        config.write_text(CONFIG.format(port=port) + "bogus_key: 1\n")
        os.kill(_worker_pids(agent.pid)[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while "bogus_key" not in agent.logs():
            assert time.monotonic() < deadline, agent.logs()
            time.sleep(0.05)
        time.sleep(0.2)  # the rest of that attempt's lines
        logs = agent.logs()
    errors = [line for line in logs.splitlines() if "bogus_key" in line]
    assert errors, logs
    assert all("worker=1" in line for line in errors), errors


def test_the_go_only_flag_warnings_are_logged_once_by_the_master(tmp_path: Path) -> None:
    """1. Two workers started with the Go agent's ``-cpuprofile`` (accepted, ignored). 2. Both
    ready. Result: its warning is in the log once, from the master: the workers are started with
    the same flags and do not repeat it."""
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(CONFIG.format(port=port).replace("log_level: warn", "log_level: info"))
    args = (*WORKERS_2, "-cpuprofile", str(tmp_path / "cpu.prof"))
    agent = cli_agent(config, port=port, log_path=tmp_path / "agent.log", extra_args=args)
    with agent:
        deadline = time.monotonic() + 60
        while agent.logs().count("listening on") < 2:
            assert time.monotonic() < deadline, agent.logs()
            agent.raise_if_exited()
            time.sleep(0.05)
        logs = agent.logs()
    warnings = [line for line in logs.splitlines() if "-cpuprofile" in line]
    assert len(warnings) == 1, logs
