"""One HAProxy connection of the SPOP server: the reader loop, the NOTIFY greenlets, the writes,
the deadlines.

Per connection (docs/protocol.md "Agent design"):
- one reader greenlet: ``workers.read_when_ready`` → ``receive_data`` → every frame read;
- dormant when idle: a connection with nothing in flight and no frame for ``DORMANT_AFTER_S``
  gives up its reader greenlet (~8 KiB) and waits on its socket's io watcher alone; the next
  bytes, a stop, a deadline or an eviction start a new reader (``server.AgentServer.wake``).
  HAProxy 2.6 keeps hundreds of idle connections open after a burst (docs/performance.md
  change 52);
- each NOTIFY runs concurrently on at most ``max_inflight_per_connection`` reused greenlets of
  the server's pool (``workers.Workers``); when all are busy the
  reader waits for one and stops reading, so TCP back-pressure reaches HAProxy
  (docs/protocol.md "At most 20 in flight");
- every frame is built whole by the codec and never split across writes; writes happen under
  the connection's lock, so concurrent ACKs never interleave (docs/protocol.md "One frame, one
  write", coraza-spoa#217, haproxy#3478). ACKs go out in completion order (docs/protocol.md "Stream
  and frame ids by version"); those that complete in the same loop turn share one ``sendall``.

The server (``server``) accepts, runs the caps and the deadlines' watchdog; this is one connection.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import gevent
import greenlet
from gevent import socket
from loguru import logger

from coraza_spoa_py import spop
from coraza_spoa_py.message_log import debug_enabled
from coraza_spoa_py.settings import BindAddress
from coraza_spoa_py.spop_native import NativeConnection
from coraza_spoa_py.verdicts import ErrorCode, error_actions
from coraza_spoa_py.workers import FrameWriter, GreenletPool, Workers, read_when_ready

Handler = Callable[[tuple[spop.Message, ...], float], Sequence[spop.Action]]

# 64 KiB reads: several small NOTIFYs per read; a big frame (tune.bufsize 131072) takes a few.
RECV_SIZE = 64 * 1024
# HAPROXY-DISCONNECT statuses that are routine: normal, I/O, idle timeout (docs/protocol.md
# "Disconnect").
ROUTINE_DISCONNECT_STATUSES = frozenset({0, 1, 2})
# errnos of a peer that went away: a normal close, not an error (docs/protocol.md "Abrupt closes are
# normal").
PEER_GONE_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ENOTCONN})
# an idle connection's reader greenlet ends after this long without a frame, by default
# (``AgentServer.dormant_after_s``; the watchdog looks every second): long enough that a
# connection HAProxy keeps using never pays a new greenlet per message, short enough that the
# idle ones of a burst go within seconds
DORMANT_AFTER_S = 5.0
# what ``_read_loop`` returns when the reader gives way to the io watcher
DORMANT = "dormant"


class _StopReadingError(Exception):
    """Thrown into a reader parked in ``recv`` when the server stops (graceful drain)."""


class _GoDormantError(Exception):
    """Thrown into a reader parked in ``recv`` by the watchdog: idle for ``DORMANT_AFTER_S``."""


class _DeadlineError(Exception):
    """Thrown into a reader parked in ``recv`` by the watchdog: a deadline of the connection
    passed (``reason``, ``status``: what the log and the AGENT-DISCONNECT say)."""

    def __init__(self, reason: str, status: spop.StatusCode = spop.StatusCode.TIMEOUT) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class ServerSide(Protocol):
    """What a connection reads of its server (``server.AgentServer``)."""

    handler: Handler
    max_frame_size: int
    max_inflight_per_connection: int
    worker_pool: GreenletPool
    dormant_after_s: float
    idle_timeout_s: float
    hello_timeout_s: float
    frame_timeout_s: float

    @property
    def stopping(self) -> bool: ...

    def wake(self, connection: AgentConnection) -> None:
        """Start a new reader greenlet for a dormant ``connection`` (its ``resume``)."""


class AgentConnection:
    """One HAProxy connection: the reader loop, the NOTIFY greenlets and the write lock."""

    def __init__(self, server: ServerSide, sock: socket.socket, peer: str, source: str) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.source = source
        self.log = logger.bind(peer=peer)
        # the codec with its NOTIFY decoder in C (spop_native; the pure one is its reference)
        self.codec = NativeConnection(max_frame_size=server.max_frame_size)
        self.writer = FrameWriter(sock, self.log, self._touch)
        # reused greenlets, not one per NOTIFY (workers.py: a new greenlet maps a stack), the
        # idle ones the server's, not this connection's
        self.inflight = Workers(server.max_inflight_per_connection, pool=server.worker_pool)
        self.stop_requested = False
        self.reader: greenlet.greenlet | None = None
        self.parked_in_recv = False
        # dormant: no reader greenlet, the socket's io watcher waits for the next bytes;
        # waking: woken, its new reader not started yet
        self.dormant = False
        self.waking = False
        # what interrupted a dormant or waking connection, raised by its new reader at once
        self._wake_error: type[Exception] | Exception | None = None
        # the last whole frame read, or the last write (time.monotonic()), for the idle
        # deadline and the eviction order; bytes of an unfinished frame do not count, so a
        # trickle cannot keep a connection alive
        self.accepted_at = self.active_at = time.monotonic()
        # when the first byte of the frame being received arrived; None between frames
        self.frame_started_at: float | None = None
        self.evicting = False  # closed to make room for a newer connection

    def request_stop(self) -> None:
        """Stop reading, finish in-flight NOTIFYs, say AGENT-DISCONNECT 0, close."""
        self.stop_requested = True
        if self.dormant:
            # now, not from a callback: the server's stop waits for the readers it knows of,
            # and this one must be among them (its new reader sees stop_requested)
            self._wake()
        elif self.reader is not None:
            gevent.get_hub().loop.run_callback(self._interrupt_recv, _StopReadingError)

    def _interrupt_recv(self, error: type[Exception] | Exception) -> None:
        # Runs in the hub, so the reader is switched out: either parked inside recv (then it
        # is safe to throw there), or anywhere else, possibly in the middle of writing a frame,
        # where it must not be interrupted; it checks ``stop_requested`` before its next read.
        # (gevent.kill would throw wherever the reader happens to be when the callback runs.)
        # From the hub, not from another greenlet: the reader switches back to the hub when it
        # next waits, never to whoever threw, which would be left suspended for good.
        if isinstance(error, _GoDormantError):
            if self.dormant or self.waking:
                return
        elif self.dormant or self.waking:
            # no reader to throw into: the next one raises it before it reads
            if self._wake_error is None:
                self._wake_error = error
            self._wake()
            return
        reader = self.reader
        if self.parked_in_recv and reader is not None and not reader.dead:
            reader.throw(error)

    def interrupt_if_past_deadline(self, now: float) -> None:
        """Called by the watchdog; the reader is interrupted from the hub, as for a stop.
        Waiting on our own in-flight work is never past a deadline."""
        if self._past_deadline(now) is not None:
            gevent.get_hub().loop.run_callback(self._interrupt_if_still_past_deadline)
        elif self._may_go_dormant(now):
            gevent.get_hub().loop.run_callback(self._go_dormant_if_still_idle)

    def _may_go_dormant(self, now: float) -> bool:
        return (
            self.parked_in_recv
            and not (self.dormant or self.waking or self.stop_requested or self.evicting)
            and len(self.inflight) == 0
            and self.frame_started_at is None
            and self.codec.state is spop.ConnectionState.READY
            and now - self.active_at >= self.server.dormant_after_s
        )

    def _go_dormant_if_still_idle(self) -> None:
        if self._may_go_dormant(time.monotonic()):  # a frame may have come between the two
            self._interrupt_recv(_GoDormantError())

    def _interrupt_if_still_past_deadline(self) -> None:
        error = self._past_deadline(time.monotonic())  # a frame may have come between the two
        if error is not None:
            self._interrupt_recv(error)

    def _past_deadline(self, now: float) -> _DeadlineError | None:
        if not self.parked_in_recv or len(self.inflight) != 0:
            return None
        server = self.server
        if self.codec.state is spop.ConnectionState.AWAIT_HELLO:
            if now - self.accepted_at >= server.hello_timeout_s:
                return _DeadlineError(f"no HELLO within {server.hello_timeout_s}s")
            return None
        started = self.frame_started_at
        if started is not None and now - started >= server.frame_timeout_s:
            return _DeadlineError(f"frame unfinished after {server.frame_timeout_s}s")
        if now - self.active_at >= server.idle_timeout_s:
            return _DeadlineError(f"idle for {server.idle_timeout_s}s")
        return None

    @property
    def state(self) -> spop.ConnectionState:
        return self.codec.state

    def is_idle(self) -> bool:
        """Nothing in flight and waiting for bytes: closing it loses no message."""
        return self.parked_in_recv and len(self.inflight) == 0

    def evict(self) -> None:
        """Closed to make room for a newer connection (``connection_caps``)."""
        # if a frame arrives before the callback runs, the reader ends before its next read
        self.evicting = True
        gevent.get_hub().loop.run_callback(
            self._interrupt_recv,
            _DeadlineError("closed to make room for a new connection", spop.StatusCode.NORMAL),
        )

    def close_unserved(self) -> None:
        """A new connection refused because every connection is busy: closed at once."""
        self.writer.stop()
        self._close()

    def run(self) -> bool:
        """Serve the connection on this greenlet until it ends (True) or goes dormant
        (False: still open, ``resume`` continues it on a new greenlet)."""
        self.reader = gevent.getcurrent()
        # accepted just before stop() and started after it: never got request_stop()
        self.stop_requested = self.server.stopping
        if self.sock.family in (socket.AF_INET, socket.AF_INET6):
            # ACKs are small and latency-bound; never wait for Nagle.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # no socket timeout: the server's idle watchdog closes idle connections
        self.sock.settimeout(None)
        self.log.debug("connection open")
        return self._serve(try_first=False)

    def resume(self) -> bool:
        """``run`` again after a wake-up (``_wake``), on a new greenlet."""
        self.reader = gevent.getcurrent()
        self.waking = False
        # woken by bytes (or by a close): read before waiting
        return self._serve(try_first=True)

    def _serve(self, *, try_first: bool) -> bool:
        reason = "closed"
        try:
            try:
                reason = self._read_loop(try_first)
                if reason == DORMANT:
                    self._go_dormant()
                    return False
                if reason == "stopping":
                    self._drain_and_disconnect()
            finally:
                if not self.dormant:
                    self._close()
                    self.log.debug("connection closed ({})", reason)
            # Handlers still running (the peer left, or HAProxy disconnected) finish before
            # this connection's slot is released, so stop() waits for them and the application
            # never sees close_all() race a transaction in progress; their ACKs are dropped.
            self.inflight.join()
        except gevent.GreenletExit:
            # stop() ran out of graceful time: the handlers go with the connection
            self.inflight.kill(block=False)
            raise
        finally:
            if not self.dormant:
                self.writer.stop()
        return True

    def _go_dormant(self) -> None:
        """End this reader; the socket's io watcher calls ``_wake`` at the next bytes (or
        EOF). Idle as far as the caps and the deadlines see (``parked_in_recv``)."""
        self.dormant = True
        self.parked_in_recv = True
        self.reader = None
        self._read_watcher().start(self._wake)
        self.log.debug("dormant: idle for {}s, reader greenlet ended", self.server.dormant_after_s)

    def _wake(self) -> None:
        """A new reader for a dormant connection (from the io watcher, the hub, or stop)."""
        if not self.dormant:
            return
        self._read_watcher().stop()
        self.dormant = False
        self.waking = True
        self.server.wake(self)

    def _read_watcher(self) -> Any:
        # the watcher gevent's own waits on this socket use (``workers.read_when_ready``);
        # nobody waits on it while the connection is dormant
        sock: Any = self.sock
        return sock._read_event

    def close_socket(self) -> None:
        """The socket closed, whatever happened before (the server's last word on it)."""
        self._close()

    def _read_loop(self, try_first: bool) -> str:
        """Read until the connection ends or goes dormant; returns why (for the debug log)."""
        chunk_was_full = try_first
        while not (self.stop_requested or self.evicting):
            try:
                self.parked_in_recv = True
                try:
                    error = self._wake_error
                    if error is not None:
                        # what interrupted it while dormant (``_interrupt_recv``)
                        self._wake_error = None
                        raise error
                    chunk = read_when_ready(self.sock, RECV_SIZE, try_first=chunk_was_full)
                finally:
                    self.parked_in_recv = False
            except _GoDormantError:
                return DORMANT
            except _StopReadingError:
                return "stopping"
            except _DeadlineError as deadline:
                self.log.debug("closing: {}", deadline.reason)
                self._send_disconnect(deadline.status, "timeout")
                return deadline.reason
            except OSError as exc:
                if exc.errno in PEER_GONE_ERRNOS:
                    return f"peer gone ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
                self.log.warning("read failed: {}", exc)
                return "read error"
            received_at = time.monotonic()
            chunk_was_full = len(chunk) == RECV_SIZE
            self.codec.receive_data(chunk)
            # not held while parked in the next read: an idle connection keeps none of the
            # bytes it last read (docs/performance.md change 51)
            del chunk
            try:
                outcome = self._handle_events(received_at)
                # the deadlines (``_past_deadline``): each whole frame is activity and stops
                # the frame clock (``_handle_events``); a part of one left over starts it
                if self.codec.pending_bytes and self.frame_started_at is None:
                    self.frame_started_at = received_at
            except spop.SpopError as exc:
                self.log.warning("protocol error: {}", exc)
                self._send_disconnect(exc.status, exc.detail)
                return f"protocol error {int(exc.status)}"
            except Exception:
                # A codec bug must cost this connection only, and say so (status 99).
                self.log.exception("unexpected error while decoding")
                self._send_disconnect(spop.StatusCode.UNKNOWN, "")
                return "internal error"
            if outcome is not None:
                return outcome
        return "stopping"

    def _handle_events(self, received_at: float) -> str | None:
        """Dispatch every complete frame of this read; a string means the connection ends."""
        while True:
            event = self.codec.next_event()
            if event is spop.NEED_DATA:
                return None
            # a whole frame, even when this read also holds the start of the next one
            self.active_at = received_at
            self.frame_started_at = None
            if isinstance(event, spop.Notify):
                # Blocks while the per-connection pool is full: back-pressure (module docstring).
                self.inflight.spawn(self._answer, event, received_at)
            elif isinstance(event, spop.HaproxyHello):
                self.log.debug(
                    "hello: offered versions={} max-frame-size={} capabilities={} "
                    "engine-id={} healthcheck={}; chosen max-frame-size={} pipelining={}",
                    event.supported_versions,
                    event.offered_max_frame_size,
                    ",".join(event.capabilities),
                    event.engine_id,
                    event.healthcheck,
                    event.max_frame_size,
                    event.pipelining,
                )
                self._flush_codec()
                if self.codec.state is spop.ConnectionState.CLOSING:
                    # docs/protocol.md "Health checks": reply AGENT-HELLO, then close
                    return "health check"
            elif isinstance(event, spop.HaproxyDisconnect):
                text = event.message.decode("latin-1")
                if event.status in ROUTINE_DISCONNECT_STATUSES:
                    self.log.debug("haproxy disconnect {} ({})", event.status, text)
                else:
                    self.log.warning("haproxy disconnect {} ({})", event.status, text)
                # docs/protocol.md "NOTIFYs after a HAPROXY-DISCONNECT": the NOTIFYs still running
                # will not be ACKed; ≤3.0 ignores ACKs from now on. They finish (their transactions
                # must be closed) but write nothing.
                self._flush_codec()
                self.closed = True
                return f"haproxy disconnect {event.status}"
            elif isinstance(event, spop.ConnectionClosed):
                return "peer closed"

    def _answer(self, notify: spop.Notify, received_at: float) -> None:
        actions: Sequence[spop.Action]
        try:
            if debug_enabled():
                # the message's debug line (message_log) names the connection it came on;
                # loguru's context is per greenlet, and each NOTIFY has its own greenlet
                with logger.contextualize(
                    peer=self.peer, stream_id=notify.stream_id, frame_id=notify.frame_id
                ):
                    actions = self.server.handler(notify.messages, received_at)
            else:
                actions = self.server.handler(notify.messages, received_at)
        except Exception:
            # Never silence (docs/compatibility.md "Errors"): HAProxy's `error > 0` rule fires at
            # once.
            self.log.bind(stream_id=notify.stream_id, frame_id=notify.frame_id).exception(
                "handler failed"
            )
            actions = _engine_failure_actions()
        if self.closed:
            return
        try:
            frame = self.codec.send_ack(notify.stream_id, notify.frame_id, actions)
        except (ValueError, spop.SpopError) as exc:
            # An action the codec refuses to encode, or an ACK above the negotiated
            # max-frame-size: still answer, with the error code (never silence).
            self.log.error("cannot encode ACK: {}", exc)
            frame = self.codec.send_ack(
                notify.stream_id, notify.frame_id, _engine_failure_actions()
            )
        self._queue_ack(frame)

    # ---- writing: ``workers.FrameWriter`` (whole frames, never interleaved; docs/protocol.md
    # "One frame, one write", coraza-spoa#217, haproxy#3478; ACKs completed in the same loop turn
    # leave in one send, docs/protocol.md "Agent design")

    def _queue_ack(self, frame: bytes) -> None:
        self.writer.queue(frame)

    def _write(self, frame: bytes) -> None:
        self.writer.write(frame)

    def _touch(self) -> None:
        self.active_at = time.monotonic()

    @property
    def closed(self) -> bool:
        """No more frames may be written."""
        return self.writer.closed

    @closed.setter
    def closed(self, value: bool) -> None:
        self.writer.closed = value

    def _flush_codec(self) -> None:
        self._write(self.codec.data_to_send())

    def _send_disconnect(self, status: spop.StatusCode, message: str) -> None:
        if self.closed:
            return
        try:
            frame = self.codec.send_disconnect(status, message)
        except spop.SpopError:
            return
        # after every ACK already queued: in-flight work that finished is still answered
        self._write(self.codec.data_to_send() + frame)
        self.closed = True

    def _drain_and_disconnect(self) -> None:
        """Graceful stop: finish in-flight NOTIFYs, then AGENT-DISCONNECT 0 (docs/protocol.md
        "Disconnect")."""
        self.inflight.join()
        if self.codec.state is spop.ConnectionState.READY:
            self._send_disconnect(spop.StatusCode.NORMAL, "normal")

    def _close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.close()


def _engine_failure_actions() -> list[spop.Action]:
    # Never silence (docs/compatibility.md "Errors"): HAProxy's `error > 0` rule fires at once.
    return error_actions(ErrorCode.ENGINE_FAILURE)


def peer_name(peer: Any, bind: BindAddress) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return f"unix:{bind.path}"


__all__ = ["AgentConnection", "Handler", "ServerSide", "peer_name"]
