"""5,000 idle and 200 trickling connections on the agent's port while HAProxy sends traffic
(issue 15): every request is still judged (no 500 from `error` > 0), and the agent closes every
one of the flood's connections (eviction at ``max_connections``, HELLO and frame deadlines).

Before: the bounded accept pool was full of idle connections, HAProxy's new connections waited
in the backlog behind them and every request got 500 until they went away. Through real
HAProxy 3.2 on the SHIPPED etc/haproxy files; the two deadlines are shortened (2 s) so the test
also sees them close the trickling connections in a few seconds."""

from __future__ import annotations

import resource
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager

import pytest

from coraza_spoa_py.spop import frames, handshake
from tests.support.agent import cli_agent
from tests.support.httpclient import request
from tests.support.ports import free_port
from tests.support.spop_client import message
from tests.support.stack import shipped_stack

pytestmark = pytest.mark.e2e

IDLE = 5000
TRICKLING = 200
REQUESTS = 300
# each connection end in this process and in the agent is a descriptor; 5,200 of them plus
# HAProxy's and the agent's own need more than the usual 1,024
FD_LIMIT = 16384
DEADLINE_S = 2

AGENT_CONFIG = f"""\
bind: 127.0.0.1:{{port}}
log_level: info
default_application: sample_app
hello_timeout_s: {DEADLINE_S}
frame_timeout_s: {DEADLINE_S}
applications:
  - name: sample_app
    directives: |
      SecRuleEngine On
      SecRule ARGS "@contains flood-attack" "id:10001,phase:1,deny,status:403,log"
"""


@contextmanager
def _fd_limit(wanted: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard)
    if target < wanted:
        pytest.fail(f"the fd hard limit {hard} is below {wanted}: raise it (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _open(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _closed_by_agent(sock: socket.socket) -> bool:
    """EOF (after any AGENT-DISCONNECT) or a reset: the agent closed its end."""
    sock.settimeout(0.5)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


class _Trickler(threading.Thread):
    """One byte every 50 ms on each connection, round robin, of a frame it never finishes:
    half trickle their HELLO, half said HELLO and trickle a NOTIFY. Counts the connections
    whose send failed (the agent closed them)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.stop_event = threading.Event()
        self.streams: list[tuple[socket.socket, bytes]] = []
        hello = handshake.encode_haproxy_hello()
        notify = frames.encode_notify(1, 1, [message("coraza-req", path="/" + "x" * 4000)])
        for index in range(TRICKLING):
            sock = _open(port)
            if index % 2:
                sock.sendall(hello)
                self.streams.append((sock, notify))
            else:
                self.streams.append((sock, hello))
        self.sent = [0] * TRICKLING
        self.closed = [False] * TRICKLING

    def run(self) -> None:
        while not self.stop_event.wait(0.05):
            for index, (sock, data) in enumerate(self.streams):
                if self.closed[index] or self.sent[index] >= len(data) - 1:
                    continue
                try:
                    sock.send(data[self.sent[index] : self.sent[index] + 1])
                    self.sent[index] += 1
                except OSError:
                    self.closed[index] = True


def test_idle_and_trickling_connections_do_not_keep_haproxy_out(tmp_path) -> None:
    agent_port, frontend_port = free_port(), free_port()
    config = tmp_path / "config.yml"
    config.write_text(AGENT_CONFIG.format(port=agent_port))
    idle: list[socket.socket] = []
    with ExitStack() as stack:
        stack.enter_context(_fd_limit(FD_LIMIT))
        agent = cli_agent(config, port=agent_port, log_path=tmp_path / "a")
        running = stack.enter_context(
            shipped_stack(
                "3.2",
                tmp_path,
                [agent],
                frontend_port=frontend_port,
                agent_check_interval="500ms",
                global_lines=["    stats socket ${STATS_SOCKET} level admin"],
            )
        )
        haproxy = running.haproxy
        haproxy.wait_for_server_status("coraza-spoa", "coraza-agent", "UP")

        flood_started = time.monotonic()
        for _ in range(IDLE):
            idle.append(_open(agent_port))
        stack.callback(_close_all, idle)
        trickler = _Trickler(agent_port)
        stack.callback(lambda: _close_all(sock for sock, _ in trickler.streams))
        trickler.start()
        stack.callback(trickler.stop_event.set)

        def send(index: int) -> tuple[int, int]:
            attack = index % 3 == 0
            query = f"q=flood-attack-{index}" if attack else f"q=clean-{index}"
            response = request(frontend_port, f"/?{query}", timeout=30)
            return (403 if attack else 200), response.status

        # the flood's connections are all open (the agent is at its cap) when these start
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(send, range(REQUESTS)))
        wrong = [(i, want, got) for i, (want, got) in enumerate(results) if want != got]
        assert wrong == [], f"{len(wrong)} of {REQUESTS} wrong, first: {wrong[:10]}"

        # every trickling connection is closed within its deadline, although bytes kept
        # coming (the watchdog looks every 0.5 s here)
        deadline = flood_started + 3 * DEADLINE_S + 10
        while not all(trickler.closed) and time.monotonic() < deadline:
            time.sleep(0.2)
        trickler.stop_event.set()
        trickler.join(timeout=5)
        assert sum(trickler.closed) == TRICKLING, (sum(trickler.closed), trickler.sent[:10])
        assert max(trickler.sent) < len(trickler.streams[1][1]) - 1  # none got to finish
        still_open = sum(not _closed_by_agent(sock) for sock in idle[:200] + idle[-200:])
        assert still_open == 0

        # and HAProxy is still served after the flood
        assert request(frontend_port, "/?q=flood-attack-after").status == 403
        assert request(frontend_port, "/?q=after").status == 200
        assert " 500 " not in haproxy.logs()


def _close_all(sockets: Iterable[socket.socket]) -> None:
    for sock in sockets:
        sock.close()
