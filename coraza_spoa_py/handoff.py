"""Worker processes of one agent: which worker holds a transaction, and handing a response to it.

HAProxy picks a connection per message, and the workers share one listening socket
(``master``), so a ``coraza-res`` often reaches a worker that never saw its ``coraza-req``
(docs/architecture.md "Process model"). Each worker writes, when a ``coraza-req`` arrives, its
number into ``OwnerTable`` (a shared memory table keyed by a hash of the transaction id); a
worker that gets a ``coraza-res`` whose id another worker claimed sends the message, as it came,
to that worker over its hand-off socket (a unix socket speaking SPOP: the owner runs a second
``AgentServer`` on it) and answers HAProxy with the owner's actions.

The table is lossy on purpose: a slot holds the last id that hashed to it, so a claim can be
overwritten by another transaction (32-bit slots index, 56-bit fingerprint); a miss, an owner
that is gone, a hand-off that fails or times out all fall back to the local answer, which for a
transaction this worker does not hold is the orphan inspection (docs/operations.md "Several
agents"). Never fail open: every path ends in a verdict or the ``error`` variable.

Must not know applications or the engine: it sees messages and the ``id`` argument only.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import mmap
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import gevent
import gevent.event
import gevent.lock
from gevent import socket
from loguru import logger

from coraza_spoa_py import spop
from coraza_spoa_py.agent import MESSAGE_REQUEST, MESSAGE_RESPONSE
from coraza_spoa_py.messages import message_transaction_id
from coraza_spoa_py.spop import frames, handshake
from coraza_spoa_py.spop_peer import read_agent_hello

# 2^18 slots of 8 bytes (2 MiB of shared memory): many times the transactions a worker keeps
# open at once under load, so a claim is rarely overwritten before its response comes
DEFAULT_SLOTS = 1 << 18
_SLOT_SIZE = 8
_WORKER_BITS = 0xFF
# a hand-off that takes longer than this is abandoned for the local (orphan) answer; HAProxy's
# `timeout processing` (500 ms in every shipped sample) has fired by then anyway
DEFAULT_HANDOFF_TIMEOUT_S = 2.0
# after a failed connect, how long a dead owner is not tried again (a restarting worker)
RECONNECT_DELAY_S = 0.5
HANDOFF_MAX_FRAME_SIZE = 4 * 1024 * 1024
RECV_SIZE = 64 * 1024


def _key(tx_id: bytes) -> int:
    # the same in every worker (Python's hash() is salted per process)
    return int.from_bytes(hashlib.blake2b(tx_id, digest_size=8).digest(), "little")


class OwnerTable:
    """Transaction id → worker number, in a file every worker maps (``/dev/shm`` by default).

    One 8-byte word per slot, written and read whole (an aligned store: no torn values on the
    64-bit machines we run on; a torn one would only read as a miss): the id's 56-bit
    fingerprint and the worker number + 1 (0 = empty)."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._words = memoryview(self._map).cast("Q")
        self._slots = len(self._words)

    @staticmethod
    def create(path: str, slots: int = DEFAULT_SLOTS) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, slots * _SLOT_SIZE)
        finally:
            os.close(fd)

    def claim(self, tx_id: bytes, worker: int) -> None:
        key = _key(tx_id)
        self._words[key % self._slots] = (key & ~_WORKER_BITS) | (worker + 1)

    def owner(self, tx_id: bytes) -> int | None:
        key = _key(tx_id)
        word = self._words[key % self._slots]
        if word == 0 or (word ^ key) & ~_WORKER_BITS:
            return None
        return (word & _WORKER_BITS) - 1

    def close(self) -> None:
        self._words.release()
        self._map.close()


class HandoffClient:
    """One pipelined SPOP connection to another worker's hand-off socket, opened on first use.

    ``call(messages)`` sends one NOTIFY and returns the ACK's actions, or None when the owner
    cannot answer (not running, connection lost, timeout): the caller answers locally."""

    def __init__(self, path: str, timeout_s: float = DEFAULT_HANDOFF_TIMEOUT_S) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._sock: Any = None
        self._connect_lock = gevent.lock.Semaphore()
        self._write_lock = gevent.lock.Semaphore()
        self._pending: dict[int, gevent.event.AsyncResult[tuple[spop.Action, ...] | None]] = {}
        self._stream_ids = itertools.count(1)
        self._retry_at = 0.0

    def call(self, messages: Sequence[spop.Message]) -> tuple[spop.Action, ...] | None:
        sock = self._sock or self._connect()
        if sock is None:
            return None
        stream_id = next(self._stream_ids)
        result: gevent.event.AsyncResult[tuple[spop.Action, ...] | None]
        result = self._pending[stream_id] = gevent.event.AsyncResult()
        try:
            with self._write_lock:
                sock.sendall(frames.encode_notify(stream_id, 1, messages))
            return result.get(timeout=self.timeout_s)
        except gevent.Timeout:
            # one slow answer: the connection and the other calls on it are fine, and a late
            # ACK finds no waiter (_read_acks)
            logger.debug("hand-off to {}: no answer within {}s", self.path, self.timeout_s)
            return None
        except OSError as exc:
            logger.debug("hand-off to {} failed: {!r}", self.path, exc)
            self._drop(sock)
            return None
        finally:
            self._pending.pop(stream_id, None)

    def _connect(self) -> Any:
        with self._connect_lock:
            if self._sock is not None:
                return self._sock
            if time.monotonic() < self._retry_at:
                return None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.timeout_s)
                sock.connect(self.path)
                sock.sendall(
                    handshake.encode_haproxy_hello(
                        max_frame_size=HANDOFF_MAX_FRAME_SIZE, capabilities="pipelining"
                    )
                )
                _, rest = read_agent_hello(lambda: sock.recv(RECV_SIZE))
                sock.settimeout(None)
            except (OSError, spop.SpopError) as exc:
                sock.close()
                self._retry_at = time.monotonic() + RECONNECT_DELAY_S
                logger.debug("hand-off socket {} unavailable: {}", self.path, exc)
                return None
            self._sock = sock
            gevent.spawn(self._read_acks, sock, rest)
            return sock

    def _read_acks(self, sock: Any, buffer: bytes) -> None:
        try:
            while True:
                while (found := frames.split_frame(buffer)) is not None:
                    frame, end = found
                    buffer = buffer[end:]
                    if frame.type != frames.FrameType.ACK:
                        return  # AGENT-DISCONNECT (idle timeout, the owner stopping)
                    waiter = self._pending.get(frame.stream_id)
                    if waiter is not None:
                        waiter.set(frames.decode_actions(frame.payload))
                chunk = sock.recv(RECV_SIZE)
                if not chunk:
                    return
                buffer += chunk
        except (OSError, spop.SpopError) as exc:
            logger.debug("hand-off connection to {} lost: {}", self.path, exc)
        finally:
            self._drop(sock)

    def _drop(self, sock: Any) -> None:
        if self._sock is sock:
            self._sock = None
        with contextlib.suppress(OSError):
            sock.close()
        # whoever still waits on this connection answers locally at once
        for waiter in list(self._pending.values()):
            if not waiter.ready():
                waiter.set(None)

    def close(self) -> None:
        if self._sock is not None:
            self._drop(self._sock)


Handler = Callable[[Sequence[spop.Message], float], Sequence[spop.Action]]


class Router:
    """The SPOP handler of a worker: claims requests, hands responses to their owner.

    ``counts``: ``local`` responses answered here (this worker holds them, or nobody claimed
    them), ``handed_off`` answered by their owner, ``fallback`` whose owner could not answer
    (answered here, as orphans), ``received`` answered here for another worker."""

    def __init__(
        self,
        local: Handler,
        table: OwnerTable,
        worker: int,
        peers: Callable[[int], HandoffClient | None],
    ) -> None:
        self._local = local
        self._table = table
        self._worker = worker
        self._peers = peers
        self.counts = {"local": 0, "handed_off": 0, "fallback": 0, "received": 0}

    def handle(self, messages: Sequence[spop.Message], received_at: float) -> Sequence[spop.Action]:
        if len(messages) == 1 and messages[0].name == MESSAGE_RESPONSE:
            tx_id = message_transaction_id(messages[0])
            owner = None if tx_id is None else self._table.owner(tx_id)
            if owner is None or owner == self._worker:
                self.counts["local"] += 1
            else:
                peer = self._peers(owner)
                actions = None if peer is None else peer.call(messages)
                if actions is not None:
                    self.counts["handed_off"] += 1
                    return actions
                self.counts["fallback"] += 1
                logger.debug("owner worker {} did not answer: inspected here", owner)
        else:
            for message in messages:
                if message.name == MESSAGE_REQUEST:
                    tx_id = message_transaction_id(message)
                    if tx_id is not None:
                        self._table.claim(tx_id, self._worker)
        return self._local(messages, received_at)

    def handle_handed_off(
        self, messages: Sequence[spop.Message], received_at: float
    ) -> Sequence[spop.Action]:
        """The hand-off socket's handler: answered here, never handed on again."""
        self.counts["received"] += 1
        return self._local(messages, received_at)


__all__ = ["HandoffClient", "OwnerTable", "Router"]
