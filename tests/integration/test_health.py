"""``/healthz`` and ``/readyz`` on the ``-metrics-addr`` listener of a running agent (a real
subprocess): healthy from the moment the listener is up, ready only once the rules are compiled
and the SPOP listener is bound, not ready again while it stops.

The rules are held back deterministically, without timing: the config Includes a named pipe,
which the rule loader blocks on (on a compile thread, not the hub) until the test writes the
rules into it (as often as the loader opens it: it reads the file more than once).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from coraza_spoa_py.spop import frames
from tests.support.agent import ONE_PROCESS, AgentProcess
from tests.support.httpclient import request
from tests.support.ports import free_port, wait_for_port
from tests.support.process import python_module_argv
from tests.support.spop_client import SpopClient, message

pytestmark = pytest.mark.integration


def get(port: int, path: str) -> tuple[int, str]:
    response = request(port, path)
    return response.status, response.body.decode()


def spop_port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_readyz_waits_for_the_rules_and_the_listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. The rules come from a FIFO nobody writes yet. 2. /healthz 200, /readyz 503 "loading
    rules", the SPOP port closed. 3. Write the rules. 4. /readyz 200 once the SPOP port is
    bound. 5. SIGTERM: exit 0, and the health listener is gone with the process."""
    agent_port, metrics_port = free_port(), free_port()
    fifo = tmp_path / "rules.conf"
    os.mkfifo(fifo)
    cfg = tmp_path / "config.yml"
    cfg.write_text(
        f"bind: 127.0.0.1:{agent_port}\napplications:\n  - name: a\n"
        f"    directives: |\n      SecRuleEngine On\n      Include {fifo}\n"
    )
    metrics_flag = ("-metrics-addr", f"127.0.0.1:{metrics_port}")
    argv = python_module_argv("coraza_spoa_py", "-config", str(cfg), *metrics_flag, *ONE_PROCESS)
    stop_writing = threading.Event()

    def write_rules() -> None:
        while not stop_writing.is_set():
            # blocks until the loader opens it; a loader that only looked (opened and closed
            # without reading) leaves a broken pipe, and the next open waits for the next look
            with contextlib.suppress(BrokenPipeError), open(fifo, "w") as stream:
                # a line that may be read twice (a reopened pipe can join two writes)
                stream.write("SecRuleEngine On\n")
            time.sleep(0.05)

    writer = threading.Thread(target=write_rules, daemon=True)
    monkeypatch.delenv("CORAZA_SPOA_ALLOCATOR", raising=False)  # the default: jemalloc
    with AgentProcess(argv, log_path=tmp_path / "agent.log", port=agent_port) as agent:
        try:
            wait_for_port("127.0.0.1", metrics_port, timeout=60, process=agent)
            assert get(metrics_port, "/healthz") == (200, "ok\n")
            assert get(metrics_port, "/readyz") == (503, "not ready: loading rules\n")
            assert not spop_port_open(agent_port)
            status, text = get(metrics_port, "/metrics")
            assert status == 200 and "coraza_spoa_py_info" in text
            # the CLI re-executed itself with jemalloc (docs/operations.md "Memory allocator")
            info = [line for line in text.splitlines() if line.startswith("coraza_spoa_py_info")]
            assert len(info) == 1 and 'allocator="jemalloc"' in info[0], info
            assert "coraza_spoa_py_transactions_opened_total" not in text  # no apps yet
            writer.start()
            agent.wait_ready(timeout=60)
            deadline = time.monotonic() + 10
            while get(metrics_port, "/readyz")[0] != 200:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert get(metrics_port, "/readyz") == (200, "ready\n")
            assert (
                "coraza_spoa_py_transactions_opened_total 0.0" in get(metrics_port, "/metrics")[1]
            )
        finally:
            stop_writing.set()
            if writer.is_alive():  # a writer blocked in open() is released by a reader
                os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
                writer.join(timeout=5)
            elif agent.popen is not None and agent.popen.poll() is None and not writer.ident:
                with open(fifo, "w"):  # the test failed before writing: release the loader
                    pass
        assert agent.terminate() == 0
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", metrics_port)) != 0


def test_readyz_says_stopping_while_the_messages_drain(tmp_path: Path) -> None:
    """1. A request held inside its engine call (a rule's script reads a FIFO). 2. SIGTERM.
    3. While that message drains: /healthz 200, /readyz 503 "stopping". 4. Release it: its
    ACK arrives, the agent exits 0."""
    agent_port, metrics_port = free_port(), free_port()
    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    script = Path(__file__).resolve().parents[1] / "data" / "rules" / "wait_for_fifo.sh"
    cfg = tmp_path / "config.yml"
    cfg.write_text(
        f"bind: 127.0.0.1:{agent_port}\napplications:\n  - name: a\n    directives: |\n"
        "      SecRuleEngine On\n"
        f'      SecRule ARGS:fifo "@inspectFile {script}" "id:1,phase:1,pass,log"\n'
    )
    metrics_flag = ("-metrics-addr", f"127.0.0.1:{metrics_port}")
    argv = python_module_argv("coraza_spoa_py", "-config", str(cfg), *metrics_flag, *ONE_PROCESS)
    with AgentProcess(argv, log_path=tmp_path / "agent.log", port=agent_port) as agent:
        agent.wait_ready(timeout=60)
        wait_for_port("127.0.0.1", metrics_port, process=agent)
        with SpopClient.connect(("127.0.0.1", agent_port), green=False, timeout=30) as client:
            client.hello()
            held = message("coraza-req", app="a", id="held", path="/", query=f"fifo={fifo}")
            client.notify(1, 1, [held])
            gate = _open_when_read(fifo)  # the script is reading: the message is in flight
            try:
                agent.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + 10
                while get(metrics_port, "/readyz") != (503, "not ready: stopping\n"):
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                assert get(metrics_port, "/healthz") == (200, "ok\n")
            finally:
                os.write(gate, b"go\n")
                os.close(gate)
            ack = client.read_frame()
            assert ack.type == frames.FrameType.ACK and ack.stream_id == 1
        assert agent.wait(timeout=30) == 0


def _open_when_read(fifo: Path, timeout_s: float = 15.0) -> int:
    # O_NONBLOCK: succeeds only once the script has the FIFO open for reading; the fd is kept,
    # so the script keeps waiting for the line
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            assert exc.errno == errno.ENXIO
            assert time.monotonic() < deadline, "the engine call never reached the script"
            time.sleep(0.01)
