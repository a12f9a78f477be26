"""A fast HAProxy stand-in for the soak: plays HAProxy's side of SPOP straight to the agent.

Encoding goes through ``coraza_spoa_py.spop.frames`` once per message kind; each NOTIFY is then
the template with its transaction id spliced in (fixed length), so the generator spends its CPU
on sockets, not on encoding. Several connections, each with a window of pipelined NOTIFYs (at
most 20 in flight, HAProxy's limit, docs/protocol.md "At most 20 in flight"), one thread,
``selectors``.

It checks every ACK (verdict or error) and counts; it does not measure the agent's memory:
the caller does that between batches.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from bench.agent_config import APP_NAME
from bench.scenarios import SCENARIOS, Scenario
from coraza_spoa_py.spop import Arg, DataType, Message, SetVar, frames, handshake
from coraza_spoa_py.spop_peer import read_agent_hello

ID_WIDTH = 20  # "soak-" + 15 digits: ids are spliced into the templates at a fixed width
ID_PLACEHOLDER = b"#" * ID_WIDTH
STALL_TIMEOUT_S = 30.0  # HAProxy would have given up long before (timeout processing)
MAX_WINDOW = 20  # HAProxy never has more NOTIFYs in flight on one connection
LOOPBACK = IPv4Address("127.0.0.1")

REQUEST_MESSAGE = "coraza-req"
RESPONSE_MESSAGE = "coraza-res"


def _header_block(headers: tuple[tuple[bytes, bytes], ...]) -> bytes:
    # req.hdrs / res.hdrs: "name: value\r\n" per header and a final "\r\n" (docs/protocol.md "What
    # HAProxy sends")
    return b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"


def request_message(scenario: Scenario, tx_id: bytes) -> Message:
    """coraza-req with the arguments and SPOP types HAProxy really sends (docs/protocol.md "What
    HAProxy sends")."""
    query = (
        Arg("query", DataType.NULL, None)
        if scenario.query is None
        else Arg("query", DataType.STRING, scenario.query.encode())
    )
    return Message(
        REQUEST_MESSAGE,
        (
            Arg("app", DataType.STRING, APP_NAME.encode()),
            Arg("id", DataType.STRING, tx_id),
            Arg("src-ip", DataType.IPV4, LOOPBACK),
            Arg("src-port", DataType.INT64, 40000),
            Arg("dst-ip", DataType.IPV4, LOOPBACK),
            Arg("dst-port", DataType.INT64, 8080),
            Arg("method", DataType.STRING, scenario.method.encode()),
            Arg("path", DataType.STRING, scenario.path.encode()),
            query,
            Arg("version", DataType.STRING, b"1.1"),
            Arg("headers", DataType.STRING, _header_block(scenario.forwarded_request_headers)),
            Arg("body", DataType.BINARY, scenario.body),
        ),
    )


def response_message(scenario: Scenario, tx_id: bytes, body: bytes) -> Message:
    return Message(
        RESPONSE_MESSAGE,
        (
            Arg("app", DataType.STRING, APP_NAME.encode()),
            Arg("id", DataType.STRING, tx_id),
            Arg("version", DataType.STRING, b"1.1"),
            Arg("status", DataType.INT64, 200),
            Arg("headers", DataType.STRING, _header_block(scenario.forwarded_response_headers)),
            Arg("body", DataType.BINARY, body),
        ),
    )


@dataclass(frozen=True)
class Template:
    """An encoded NOTIFY payload and where its id goes."""

    payload: bytes
    id_at: int

    @classmethod
    def of(cls, message: Message) -> Template:
        payload = frames.encode_messages([message])
        at = payload.index(ID_PLACEHOLDER)
        return cls(payload, at)

    def frame(self, tx_id: bytes, stream_id: int) -> bytes:
        payload = self.payload[: self.id_at] + tx_id + self.payload[self.id_at + ID_WIDTH :]
        # 3.2 style ids: a new stream per NOTIFY, frame-id 1 (docs/protocol.md "Stream and frame ids
        # by version")
        return frames.encode_frame(frames.FrameType.NOTIFY, payload, stream_id, 1)


@dataclass
class Tally:
    sent: int = 0
    acked: int = 0
    transactions_done: int = 0
    wrong_verdicts: int = 0
    errors: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "messages_sent": self.sent,
            "acks": self.acked,
            "transactions": self.transactions_done,
            "wrong_verdicts": self.wrong_verdicts,
            "errors": {str(k): v for k, v in sorted(self.errors.items())},
        }


def ack_verdict(payload: memoryview) -> tuple[int | None, int | None]:
    """(fail, error) from an ACK's actions; None for a variable the ACK does not set."""
    fail = error = None
    for action in frames.decode_actions(payload):
        if isinstance(action, SetVar) and isinstance(action.value, int):
            if action.name == "fail":
                fail = int(action.value)
            elif action.name == "error":
                error = int(action.value)
    return fail, error


# What the generator does with one transaction number: which scenario, whether the response
# message is sent (False: never sent, so the agent's TTL must expire it).
Plan = Callable[[int], tuple[Scenario, bool]]


def soak_plan(attack_every: int = 10, orphan_every: int = 20) -> Plan:
    """Clean GETs with a response, every ``attack_every``-th an attack (blocked, no response),
    every ``orphan_every``-th clean one left without its response (the TTL expires it)."""
    clean, attack = SCENARIOS["clean_get"], SCENARIOS["attack_get"]

    def plan(n: int) -> tuple[Scenario, bool]:
        if n % attack_every == 0:
            return attack, False
        return clean, n % orphan_every != 1

    return plan


class _Conn:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inbuf = b""
        self.outbuf = bytearray()
        self.next_stream = 1
        # stream-id -> (transaction number, id, is_response)
        self.pending: dict[int, tuple[int, bytes, bool]] = {}


class SpopLoad:
    """Connections to the agent that run planned transactions and check every ACK."""

    def __init__(self, host: str, port: int, *, connections: int, window: int, plan: Plan) -> None:
        self.window = min(window, MAX_WINDOW)
        self.plan = plan
        self.tally = Tally()
        self.selector = selectors.DefaultSelector()
        self.conns = [self._connect(host, port) for _ in range(connections)]
        self.next_tx = 0
        self._templates: dict[tuple[str, bool], Template] = {}
        for name in ("clean_get", "attack_get"):
            scenario = SCENARIOS[name]
            self._templates[name, False] = Template.of(request_message(scenario, ID_PLACEHOLDER))
            self._templates[name, True] = Template.of(
                response_message(scenario, ID_PLACEHOLDER, scenario.response_body)
            )

    def _connect(self, host: str, port: int) -> _Conn:
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(handshake.encode_haproxy_hello(max_frame_size=131068, engine_id="bench"))
        read_agent_hello(lambda: sock.recv(65536))
        sock.setblocking(False)
        conn = _Conn(sock)
        self.selector.register(sock, selectors.EVENT_READ, conn)
        return conn

    def _send(self, conn: _Conn, tx: int, tx_id: bytes, response: bool) -> None:
        scenario, _ = self.plan(tx)
        stream = conn.next_stream
        conn.next_stream += 2
        conn.pending[stream] = (tx, tx_id, response)
        conn.outbuf += self._templates[scenario.name, response].frame(tx_id, stream)
        self.tally.sent += 1

    def _start_transactions(self, conn: _Conn, limit: int) -> None:
        while len(conn.pending) < self.window and self.next_tx < limit:
            self.next_tx += 1
            tx_id = f"soak-{self.next_tx:015d}".encode()
            self._send(conn, self.next_tx, tx_id, False)

    def _on_ack(self, conn: _Conn, frame: frames.RawFrame) -> None:
        tx, tx_id, response = conn.pending.pop(frame.stream_id)
        self.tally.acked += 1
        scenario, send_response = self.plan(tx)
        fail, error = ack_verdict(frame.payload)
        if error is not None:
            self.tally.errors[error] += 1
        expected = 1 if scenario.blocked and not response else 0
        if fail != expected:
            self.tally.wrong_verdicts += 1
        if not response and send_response and not fail and error is None:
            self._send(conn, tx, tx_id, True)
        else:
            self.tally.transactions_done += 1

    def run(self, transactions: int) -> None:
        """Run until ``transactions`` more transactions are complete (all ACKs in)."""
        target = self.next_tx + transactions
        for conn in self.conns:
            self._start_transactions(conn, target)
            self._flush(conn)
        while any(conn.pending for conn in self.conns):
            ready = self.selector.select(timeout=STALL_TIMEOUT_S)
            if not ready:
                pending = sum(len(conn.pending) for conn in self.conns)
                raise TimeoutError(f"no ACK for {STALL_TIMEOUT_S}s, {pending} NOTIFYs pending")
            for key, _ in ready:
                conn = key.data
                chunk = conn.sock.recv(1 << 18)
                if not chunk:
                    raise ConnectionError("the agent closed a connection")
                # bytes, not a bytearray: frames keep memoryviews into the data they parse
                data = conn.inbuf + chunk if conn.inbuf else chunk
                pos = 0
                while (split := frames.split_frame(data, pos)) is not None:
                    frame, pos = split
                    if frame.type != frames.FrameType.ACK:
                        raise ConnectionError(f"unexpected frame type {frame.type}")
                    self._on_ack(conn, frame)
                conn.inbuf = data[pos:]
                self._start_transactions(conn, target)
                self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        if conn.outbuf:
            # windows are small (20 frames), so a blocking send of the batch is short
            conn.sock.setblocking(True)
            conn.sock.sendall(conn.outbuf)
            conn.sock.setblocking(False)
            conn.outbuf.clear()

    def close(self) -> None:
        for conn in self.conns:
            self.selector.unregister(conn.sock)
            with contextlib.suppress(OSError):  # the agent may have closed first
                conn.sock.sendall(handshake.encode_haproxy_disconnect(0, "normal"))
            conn.sock.close()
        self.selector.close()
