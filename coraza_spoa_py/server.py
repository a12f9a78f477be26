"""The SPOP agent server: gevent listeners, one reader per connection, NOTIFYs on reused greenlets.

Its job is I/O only: accept HAProxy's connections (TCP over IPv4/IPv6, or a unix socket;
``listeners``), feed each to its ``connection.AgentConnection`` (the sans-IO codec, the NOTIFYs
run concurrently, pipelining, docs/protocol.md "Capabilities by version"), enforce the caps
(``connection_caps``) and the deadlines, and stop gracefully. It must not decode frames itself,
know about applications or the WAF, or configure logging sinks (``logs`` does that); ``wiring``
builds it around ``agent.handle``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.pool
from gevent import socket
from gevent.server import StreamServer
from loguru import logger

from coraza_spoa_py import listeners, settings, spop
from coraza_spoa_py.connection import DORMANT_AFTER_S, AgentConnection, Handler, peer_name
from coraza_spoa_py.connection_caps import ConnectionCaps, source_of
from coraza_spoa_py.settings import BindAddress

# the agent's own error code for "the rule engine failed on this transaction": a handler
# exception is answered with it at once (connection.py), never silence
from coraza_spoa_py.verdicts import ENGINE_FAILURE_ERROR
from coraza_spoa_py.workers import GreenletPool

# How often the watchdog looks, at most: a connection is closed between its deadline and the
# deadline + this. A per-recv socket timeout would be exact, but costs a gevent Timeout and a
# libev timer on every message (docs/performance.md change 14).
IDLE_CHECK_INTERVAL_S = 1.0


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
        # a server built without a config (tests, benchmarks) has the settings' defaults
        max_frame_size: int = settings.DEFAULT_MAX_FRAME_SIZE,
        max_connections: int = settings.DEFAULT_MAX_CONNECTIONS,
        max_connections_per_source: int | None = None,
        idle_timeout_s: float = settings.DEFAULT_IDLE_TIMEOUT_S,
        hello_timeout_s: float = settings.DEFAULT_HELLO_TIMEOUT_S,
        frame_timeout_s: float = settings.DEFAULT_FRAME_TIMEOUT_S,
        max_inflight_per_connection: int = 64,
        dormant_after_s: float = DORMANT_AFTER_S,
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
        # an idle connection's reader greenlet ends after this long (connection.py "dormant")
        self.dormant_after_s = dormant_after_s
        # the greenlets that answer NOTIFYs, shared by the connections (workers.GreenletPool)
        self.worker_pool = GreenletPool()
        # a socket bound by someone else (the master process, docs/architecture.md "Process
        # model"): served as is, and its unix socket file is its owner's to remove
        self._inherited_listener = listener
        # enforced on accept, not by a bounded pool (connection_caps)
        self.caps = ConnectionCaps(max_connections, max_connections_per_source)
        self._connection_pool = gevent.pool.Pool()
        self._connections: set[AgentConnection] = set()
        self._stream_server: StreamServer | None = None
        self._address: BindAddress | None = None
        self._stopping = False
        self._stopped = gevent.event.Event()
        self._idle_watchdog: gevent.Greenlet[Any, Any] | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        listener = self._inherited_listener
        if listener is None:
            listener = listeners.listen(self.bind)
        else:
            # the master binds without listening: connections are refused, as by a single
            # process, until the first worker has compiled its rules and serves
            listener.listen(listeners.LISTEN_BACKLOG)
        self._address = listeners.bound_address(self.bind, listener)
        self._stream_server = _ConnectionServer(
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
    def evicted(self) -> int:
        """Connections closed to make room for a new one."""
        return self.caps.evicted

    @property
    def refused(self) -> int:
        """New connections closed because every connection was busy."""
        return self.caps.refused

    @property
    def stopping(self) -> bool:
        return self._stopping

    def serve_forever(self) -> None:
        if self._stream_server is None:
            self.start()
        self._stopped.wait()

    def stop(self, graceful_timeout_s: float = settings.DEFAULT_GRACEFUL_TIMEOUT_S) -> None:
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
        self.worker_pool.kill()  # the idle ones: every connection's calls have ended
        if self.bind.kind == "unix" and self._inherited_listener is None:
            listeners.remove_unix_socket(self.bind.path)
        logger.info("stopped listening on {}", self._address or self.bind)
        self._stopped.set()

    def _enforce_deadlines(self) -> None:
        shortest = min(
            self.idle_timeout_s, self.hello_timeout_s, self.frame_timeout_s, self.dormant_after_s
        )
        interval = min(IDLE_CHECK_INTERVAL_S, shortest / 4)
        while True:
            gevent.sleep(interval)
            now = time.monotonic()
            for connection in list(self._connections):
                connection.interrupt_if_past_deadline(now)

    # ---- per connection ---------------------------------------------------------------------

    def _serve_connection(self, sock: socket.socket, peer: Any) -> None:
        source = source_of(peer)
        try:
            connection = AgentConnection(self, sock, peer_name(peer, self.bind), source)
        except BaseException:
            sock.close()  # no connection to close it (_ConnectionServer)
            raise
        if not self.caps.admit(connection):
            connection.log.warning(
                "every connection is busy ({} open, {} from {}): new connection refused",
                len(self._connections),
                self.caps.from_source(source),
                source,
            )
            connection.close_unserved()
            return
        self._connections.add(connection)
        self._serve_until_dormant(connection, connection.run)

    def wake(self, connection: AgentConnection) -> None:
        """A dormant connection's next reader (connection.py "dormant"), in the pool whose
        greenlets ``stop`` waits for."""
        self._connection_pool.spawn(self._serve_until_dormant, connection, connection.resume)

    def _serve_until_dormant(self, connection: AgentConnection, serve: Callable[[], bool]) -> None:
        ended = True
        try:
            ended = serve()
        finally:
            if ended:
                connection.close_socket()
                self._connections.discard(connection)
                self.caps.release(connection)


class _ConnectionServer(StreamServer):
    """gevent's ``StreamServer`` without its close of the socket when the handler returns:
    a dormant connection's first greenlet returns with the connection open, and every
    connection closes its own socket when it ends (``AgentConnection.close_socket``)."""

    def do_close(self, *args: Any) -> None:
        pass


__all__ = ["ENGINE_FAILURE_ERROR", "AgentServer", "Handler"]
