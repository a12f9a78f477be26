"""The SPOP agent server: gevent listeners, one reader per connection, NOTIFYs on reused greenlets.

Its job is I/O only: accept HAProxy's connections (TCP over IPv4/IPv6, or a unix socket), feed
the bytes to the sans-IO codec (``spop.Connection``), run the injected handler for every
NOTIFY concurrently (pipelining, docs/protocol.md "Capabilities by version"), write each ACK as one
whole frame, and stop gracefully. It must not decode frames itself, know about applications or the
WAF, or configure logging sinks (``logs`` does that); ``cli`` wires it to ``agent.handle``.

Per connection (docs/protocol.md "Agent design"):
- one reader greenlet: ``recv`` → ``receive_data`` → every complete frame of that read;
- each NOTIFY runs concurrently on a per-connection set of at most
  ``max_inflight_per_connection`` reused greenlets (``workers.Workers``); when all are busy the
  reader waits for one and stops reading, so TCP back-pressure reaches HAProxy
  (docs/protocol.md "At most 20 in flight");
- every frame is built whole by the codec and never split across writes; writes happen under
  the connection's lock, so concurrent ACKs never interleave (docs/protocol.md "One frame, one
  write", coraza-spoa#217, haproxy#3478). ACKs go out in completion order (docs/protocol.md "Stream
  and frame ids by version"); those that complete in the same loop turn share one ``sendall``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.pool
import greenlet
from gevent import socket
from gevent.server import StreamServer
from loguru import logger

from coraza_spoa_py import spop
from coraza_spoa_py.message_log import debug_enabled
from coraza_spoa_py.settings import BindAddress
from coraza_spoa_py.spop_native import NativeConnection
from coraza_spoa_py.verdicts import ENGINE_FAILURE_ERROR
from coraza_spoa_py.verdicts import VAR_ERROR as ERROR_VARIABLE
from coraza_spoa_py.workers import Flusher, Workers

Handler = Callable[[tuple[spop.Message, ...], float], Sequence[spop.Action]]


# 64 KiB reads: several small NOTIFYs per read; a big frame (tune.bufsize 131072) takes a few.
RECV_SIZE = 64 * 1024
LISTEN_BACKLOG = 1024
# HAPROXY-DISCONNECT statuses that are routine: normal, I/O, idle timeout (docs/protocol.md
# "Disconnect").
ROUTINE_DISCONNECT_STATUSES = frozenset({0, 1, 2})
# errnos of a peer that went away: a normal close, not an error (docs/protocol.md "Abrupt closes are
# normal").
PEER_GONE_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ENOTCONN})


class _StopReadingError(Exception):
    """Thrown into a reader parked in ``recv`` when the server stops (graceful drain)."""


class _DeadlineError(Exception):
    """Thrown into a reader parked in ``recv`` by the watchdog: a deadline of the connection
    passed (``reason``, ``status``: what the log and the AGENT-DISCONNECT say)."""

    def __init__(self, reason: str, status: spop.StatusCode = spop.StatusCode.TIMEOUT) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


# How often the watchdog looks, at most: a connection is closed between its deadline and the
# deadline + this. A per-recv socket timeout would be exact, but costs a gevent Timeout and a
# libev timer on every message (docs/performance.md change 14).
IDLE_CHECK_INTERVAL_S = 1.0
# Until HELLO, a connection is someone's, not yet HAProxy's: HAProxy sends its HELLO as soon
# as it connects (its `timeout hello` is 100 ms-ish, SPOE.txt §3.4), so a few seconds is ample.
DEFAULT_HELLO_TIMEOUT_S = 5.0
# From a frame's first byte to its last: HAProxy writes a frame whole, so only a peer that
# trickles bytes (each read reset the idle timer before) takes this long.
DEFAULT_FRAME_TIMEOUT_S = 10.0


class AgentServer:
    """Serves SPOP on ``bind`` and answers every NOTIFY with ``handler(messages, received_at)``.

    ``start()`` binds and starts accepting (port 0 picks a free port, see ``address``);
    ``serve_forever()`` blocks until ``stop()``. ``stop(graceful_timeout_s)`` stops accepting,
    lets every connection finish its in-flight NOTIFYs, sends AGENT-DISCONNECT 0 and closes;
    whatever is still running at the deadline is killed.
    """

    def __init__(
        self,
        bind: BindAddress,
        handler: Handler,
        *,
        max_frame_size: int = 4 * 1024 * 1024,
        max_connections: int = 1024,
        max_connections_per_source: int | None = None,
        idle_timeout_s: float = 600.0,
        hello_timeout_s: float = DEFAULT_HELLO_TIMEOUT_S,
        frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S,
        max_inflight_per_connection: int = 64,
        listener: socket.socket | None = None,
    ) -> None:
        # the codec checks the cap (256 .. 2^32-1); fail here, not at the first connection
        spop.Connection(max_frame_size=max_frame_size)
        self.bind = bind
        self.handler = handler
        self.max_frame_size = max_frame_size
        self.idle_timeout_s = idle_timeout_s
        self.hello_timeout_s = hello_timeout_s
        self.frame_timeout_s = frame_timeout_s
        self.max_inflight_per_connection = max_inflight_per_connection
        # a socket bound by someone else (the master process, docs/architecture.md "Process
        # model"): served as is, and its unix socket file is its owner's to remove
        self._inherited_listener = listener
        self.max_connections = max_connections
        self.max_connections_per_source = max_connections_per_source or max_connections
        # Not bounded by the pool: a full pool would stop accepting, and HAProxy's new
        # connections would wait behind idle ones in the backlog (issue 15). The caps are
        # enforced on accept instead (``_make_room``): the oldest idle connection is closed, or
        # the new one is when every connection is busy, so the bound still holds
        # (docs/development.md "Bounded input") give or take the connections closing in this loop
        # turn.
        self._connection_pool = gevent.pool.Pool()
        self._connections: set[_AgentConnection] = set()
        # what the caps count: every connection not being evicted. Insertion order = accept
        # order, so the oldest connection awaiting HELLO comes first.
        self._counted: dict[_AgentConnection, None] = {}
        self._per_source: dict[str, int] = {}
        self.evicted = 0  # connections closed to make room for a new one
        self.refused = 0  # new connections closed because every connection was busy
        self._stream_server: StreamServer | None = None
        self._address: BindAddress | None = None
        self._stopping = False
        self._stopped = gevent.event.Event()
        self._idle_watchdog: gevent.Greenlet[Any, Any] | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        listener = self._inherited_listener or _listen(self.bind)
        if self._inherited_listener is not None:
            # the master binds without listening: connections are refused, as by a single
            # process, until the first worker has compiled its rules and serves
            listener.listen(LISTEN_BACKLOG)
        self._address = _bound_address(self.bind, listener)
        self._stream_server = StreamServer(
            listener, self._serve_connection, spawn=self._connection_pool
        )
        if self._inherited_listener is not None:
            # the workers share this socket, and every idle one wakes for a connection:
            # accepting one per wake-up lets them take turns, where gevent's default (up to
            # 100 per wake-up) hands a burst of HAProxy's connections to one worker
            self._stream_server.max_accept = 1
        self._stream_server.start()
        self._idle_watchdog = gevent.spawn(self._enforce_deadlines)
        logger.info("listening on {}", self._address)

    @property
    def address(self) -> BindAddress:
        """The bound address: for TCP port 0, the port the kernel picked."""
        if self._address is None:
            raise RuntimeError("AgentServer.start() has not been called")
        return self._address

    @property
    def connection_count(self) -> int:
        """Connections being served right now."""
        return len(self._connections)

    @property
    def stopping(self) -> bool:
        return self._stopping

    def serve_forever(self) -> None:
        if self._stream_server is None:
            self.start()
        self._stopped.wait()

    def stop(self, graceful_timeout_s: float = 10.0) -> None:
        if self._stopping:
            self._stopped.wait()
            return
        self._stopping = True
        if self._stream_server is not None:
            self._stream_server.close()  # stop accepting; close the listening socket
        if self._idle_watchdog is not None:
            self._idle_watchdog.kill(block=False)
        for connection in list(self._connections):
            connection.request_stop()
        if not self._connection_pool.join(timeout=graceful_timeout_s):
            logger.warning(
                "graceful stop timed out after {}s, closing {} connection(s)",
                graceful_timeout_s,
                len(self._connections),
            )
            self._connection_pool.kill(block=True, timeout=1)
        if self.bind.kind == "unix" and self._inherited_listener is None:
            _remove_stale_unix_socket(self.bind.path)
        logger.info("stopped listening on {}", self._address or self.bind)
        self._stopped.set()

    def _enforce_deadlines(self) -> None:
        shortest = min(self.idle_timeout_s, self.hello_timeout_s, self.frame_timeout_s)
        interval = min(IDLE_CHECK_INTERVAL_S, shortest / 4)
        while True:
            gevent.sleep(interval)
            now = time.monotonic()
            for connection in list(self._connections):
                connection.interrupt_if_past_deadline(now)

    # ---- per connection ---------------------------------------------------------------------

    def _serve_connection(self, sock: socket.socket, peer: Any) -> None:
        source = _source_of(peer)
        connection = _AgentConnection(self, sock, _peer_name(peer, self.bind), source)
        if not self._make_room(source):
            self.refused += 1
            connection.log.warning(
                "every connection is busy ({} open, {} from {}): new connection refused",
                len(self._connections),
                self._per_source.get(source, 0),
                source,
            )
            connection.close_unserved()
            return
        self._connections.add(connection)
        self._counted[connection] = None
        self._per_source[source] = self._per_source.get(source, 0) + 1
        try:
            connection.run()
        finally:
            self._connections.discard(connection)
            self._uncount(connection)

    def _uncount(self, connection: _AgentConnection) -> None:
        if connection in self._counted:
            del self._counted[connection]
            left = self._per_source[connection.source] - 1
            if left:
                self._per_source[connection.source] = left
            else:
                del self._per_source[connection.source]

    def _make_room(self, source: str) -> bool:
        """Under the caps, or one connection closed to get there: the oldest that never said
        HELLO, else the one idle the longest. False when every connection is busy."""
        candidates: Iterable[_AgentConnection]
        if len(self._counted) >= self.max_connections:
            candidates = self._counted
        elif self._per_source.get(source, 0) >= self.max_connections_per_source:
            candidates = (c for c in self._counted if c.source == source)
        else:
            return True
        victim = _eviction_victim(candidates)
        if victim is None:
            return False
        self.evicted += 1
        self._uncount(victim)
        victim.evict()
        return True


class _AgentConnection:
    """One HAProxy connection: the reader loop, the NOTIFY greenlets and the write lock."""

    def __init__(self, server: AgentServer, sock: socket.socket, peer: str, source: str) -> None:
        self.server = server
        self.sock = sock
        self.peer = peer
        self.source = source
        self.log = logger.bind(peer=peer)
        # the codec with its NOTIFY decoder in C (spop_native; the pure one is its reference)
        self.codec = NativeConnection(max_frame_size=server.max_frame_size)
        self.write_lock = gevent.lock.Semaphore()
        self.outbox: list[bytes] = []  # whole ACK frames waiting for the flusher
        self.flusher = Flusher(self._flush_outbox)
        # reused greenlets, not one per NOTIFY (workers.py: a new greenlet maps a stack)
        self.inflight = Workers(server.max_inflight_per_connection)
        self.closed = False  # no more frames may be written
        self.stop_requested = False
        self.reader: greenlet.greenlet | None = None
        self.parked_in_recv = False
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
        if self.reader is not None:
            gevent.get_hub().loop.run_callback(self._interrupt_recv, _StopReadingError)

    def _interrupt_recv(self, error: type[Exception] | Exception) -> None:
        # Runs in the hub, so the reader is switched out: either parked inside recv (then it
        # is safe to throw there), or anywhere else, possibly in the middle of writing a frame,
        # where it must not be interrupted; it checks ``stop_requested`` before its next read.
        # (gevent.kill would throw wherever the reader happens to be when the callback runs.)
        # From the hub, not from another greenlet: the reader switches back to the hub when it
        # next waits, never to whoever threw, which would be left suspended for good.
        reader = self.reader
        if self.parked_in_recv and reader is not None and not reader.dead:
            reader.throw(error)

    def interrupt_if_past_deadline(self, now: float) -> None:
        """Called by the watchdog; the reader is interrupted from the hub, as for a stop.
        Waiting on our own in-flight work is never past a deadline."""
        if self._past_deadline(now) is not None:
            gevent.get_hub().loop.run_callback(self._interrupt_if_still_past_deadline)

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

    def is_idle(self) -> bool:
        """Nothing in flight and waiting for bytes: closing it loses no message."""
        return self.parked_in_recv and len(self.inflight) == 0

    def evict(self) -> None:
        """Closed to make room for a newer connection (``AgentServer._make_room``)."""
        # if a frame arrives before the callback runs, the reader ends before its next read
        self.evicting = True
        gevent.get_hub().loop.run_callback(
            self._interrupt_recv,
            _DeadlineError("closed to make room for a new connection", spop.StatusCode.NORMAL),
        )

    def close_unserved(self) -> None:
        """A new connection refused because every connection is busy: closed at once."""
        self.flusher.stop()
        self._close()

    def run(self) -> None:
        self.reader = gevent.getcurrent()
        # accepted just before stop() and started after it: never got request_stop()
        self.stop_requested = self.server.stopping
        if self.sock.family in (socket.AF_INET, socket.AF_INET6):
            # ACKs are small and latency-bound; never wait for Nagle.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # no socket timeout: the server's idle watchdog closes idle connections
        self.sock.settimeout(None)
        self.log.debug("connection open")
        reason = "closed"
        try:
            try:
                reason = self._read_loop()
                if reason == "stopping":
                    self._drain_and_disconnect()
            finally:
                self._close()
                self.log.debug("connection closed ({})", reason)
            # Handlers still running (the peer left, or HAProxy disconnected) finish before
            # this connection's slot is released, so stop() waits for them and the application
            # never sees close_all() race a transaction in progress; their ACKs are dropped.
            self.inflight.join()
            self.inflight.kill()  # the idle workers
        except gevent.GreenletExit:
            # stop() ran out of graceful time: the handlers go with the connection
            self.inflight.kill(block=False)
            raise
        finally:
            self.flusher.stop()

    def _read_loop(self) -> str:
        """Read until the connection ends; returns why (for the debug log)."""
        while not (self.stop_requested or self.evicting):
            try:
                self.parked_in_recv = True
                try:
                    chunk = self.sock.recv(RECV_SIZE)
                finally:
                    self.parked_in_recv = False
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
            self.codec.receive_data(chunk)
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

    # ---- writing ----------------------------------------------------------------------------
    # Every frame is built whole by the codec and only the holder of ``write_lock`` writes, so
    # frames never interleave or split (docs/protocol.md "One frame, one write", coraza-spoa#217,
    # haproxy#3478). ACKs are queued and sent by the connection's flusher: the ACKs that complete in
    # the same loop turn (typically a pipelined batch from one read) leave in ONE sendall instead of
    # one syscall each (docs/protocol.md "Agent design").

    def _queue_ack(self, frame: bytes) -> None:
        if self.closed:
            return
        self.outbox.append(frame)
        self.flusher.request()

    def _flush_outbox(self) -> None:
        # An ACK queued while this one waits for the lock or for the socket is either taken by
        # this write or requests the next flush.
        self._write(b"")

    def _write(self, frame: bytes) -> None:
        """Send the queued ACKs, then ``frame`` (whole frames only), in one sendall."""
        with self.write_lock:
            if self.closed:
                self.outbox.clear()
                return
            if self.outbox:
                self.outbox.append(frame)
                frame = b"".join(self.outbox)
                self.outbox.clear()
            if not frame:
                return
            self.active_at = time.monotonic()
            try:
                # one send() is nearly always enough for ACKs; gevent's sendall() would also
                # ask the socket's buffer size (a getsockopt system call) on every call
                sent = self.sock.send(frame)
                if sent < len(frame):
                    self.sock.sendall(memoryview(frame)[sent:])
            except OSError as exc:
                # The peer went away while we answered; the reader sees it too.
                self.closed = True
                self.log.debug("write failed: {}", exc)

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
    return [spop.SetVar(spop.VarScope.TRANSACTION, ERROR_VARIABLE, ENGINE_FAILURE_ERROR)]


# ---- listeners --------------------------------------------------------------------------------


def open_listener(bind: BindAddress) -> socket.socket:
    """Bind ``bind`` as ``AgentServer.start`` does, without listening (the master process binds
    once for its workers, the first worker that serves listens); a unix socket file left by a
    dead agent is replaced."""
    return _listen(bind, listen=False)


def remove_unix_socket(path: str) -> None:
    _remove_stale_unix_socket(path)


def _listen(bind: BindAddress, listen: bool = True) -> socket.socket:
    if bind.kind == "unix":
        return _listen_unix(bind.path, listen)
    return _listen_tcp(bind.host, bind.port, listen)


def _listen_tcp(host: str, port: int, listen: bool = True) -> socket.socket:
    if host in ("", "*"):
        # ":9000" (coraza-spoa's Go form) means every interface: dual-stack when possible.
        candidates = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
    else:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        candidates = [(family, str(info[0])) for family, _, _, _, info in infos]
    last_error: OSError | None = None
    for family, address in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and address == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((address, port))
            if listen:
                sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            last_error = exc
            continue
        return sock
    raise last_error or OSError(f"cannot listen on {host}:{port}")


def _listen_unix(path: str, listen: bool = True) -> socket.socket:
    if _unix_socket_is_live(path):
        raise OSError(errno.EADDRINUSE, f"another process listens on {path}")
    _remove_stale_unix_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        if listen:
            sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _unix_socket_is_live(path: str) -> bool:
    # A socket file left by a crashed agent refuses connections and may be replaced; one that
    # accepts belongs to a running agent, which we must not steal from (Go's net.Listen fails).
    if not os.path.exists(path):
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def _remove_stale_unix_socket(path: str) -> None:
    # Only ever remove a socket file: a typo in `bind` must not delete a regular file.
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)


def _bound_address(bind: BindAddress, sock: socket.socket) -> BindAddress:
    if bind.kind == "unix":
        return bind
    host, port = sock.getsockname()[:2]
    return BindAddress(kind="tcp", host=str(host), port=int(port))


def _eviction_victim(connections: Iterable[_AgentConnection]) -> _AgentConnection | None:
    """The oldest idle connection still awaiting HELLO (in accept order), else the idle one
    whose last whole frame or write is the oldest; None when none is idle."""
    oldest: _AgentConnection | None = None
    for connection in connections:
        if not connection.is_idle():
            continue
        if connection.codec.state is spop.ConnectionState.AWAIT_HELLO:
            return connection
        if oldest is None or connection.active_at < oldest.active_at:
            oldest = connection
    return oldest


def _source_of(peer: Any) -> str:
    """The per-source cap's key: the peer's address without its port (one key for unix)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0])
    return "unix"


def _peer_name(peer: Any, bind: BindAddress) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return f"unix:{bind.path}"


__all__ = ["ENGINE_FAILURE_ERROR", "AgentServer", "Handler", "open_listener", "remove_unix_socket"]
