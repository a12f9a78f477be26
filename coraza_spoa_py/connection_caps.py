"""The connection caps of the SPOP server: ``max_connections`` and
``max_connections_per_source``, enforced on accept by closing an idle connection (issue 15).

Not a bounded accept pool: a full pool would stop accepting, and HAProxy's new connections would
wait behind idle ones in the backlog. At a cap the oldest idle connection that never said HELLO,
else the one idle the longest, is evicted (AGENT-DISCONNECT 0); when every connection has a
message in flight the new one is refused instead. So the bound still holds (docs/development.md
"Bounded input") give or take the connections closing in this loop turn.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from coraza_spoa_py import spop


class Capped(Protocol):
    """What the caps need of a connection (``connection.AgentConnection``)."""

    source: str
    active_at: float

    @property
    def state(self) -> spop.ConnectionState: ...

    def is_idle(self) -> bool: ...

    def evict(self) -> None: ...


class ConnectionCaps:
    def __init__(self, max_connections: int, max_connections_per_source: int | None) -> None:
        self.max_connections = max_connections
        self.max_per_source = max_connections_per_source or max_connections
        # every connection not being evicted. Insertion order = accept order, so the oldest
        # connection awaiting HELLO comes first.
        self._counted: dict[Capped, None] = {}
        self._per_source: dict[str, int] = {}
        self.evicted = 0  # connections closed to make room for a new one
        self.refused = 0  # new connections closed because every connection was busy

    def from_source(self, source: str) -> int:
        return self._per_source.get(source, 0)

    def admit(self, connection: Capped) -> bool:
        """Count ``connection``, after closing another if a cap is reached; False (and not
        counted) when every connection is busy."""
        if not self._make_room(connection.source):
            self.refused += 1
            return False
        self._counted[connection] = None
        self._per_source[connection.source] = self.from_source(connection.source) + 1
        return True

    def release(self, connection: Capped) -> None:
        if connection in self._counted:
            del self._counted[connection]
            left = self._per_source[connection.source] - 1
            if left:
                self._per_source[connection.source] = left
            else:
                del self._per_source[connection.source]

    def _make_room(self, source: str) -> bool:
        candidates: Iterable[Capped]
        if len(self._counted) >= self.max_connections:
            candidates = self._counted
        elif self.from_source(source) >= self.max_per_source:
            candidates = (c for c in self._counted if c.source == source)
        else:
            return True
        victim = eviction_victim(candidates)
        if victim is None:
            return False
        self.evicted += 1
        self.release(victim)
        victim.evict()
        return True


def eviction_victim(connections: Iterable[Capped]) -> Capped | None:
    """The oldest idle connection still awaiting HELLO (in accept order), else the idle one
    whose last whole frame or write is the oldest; None when none is idle."""
    oldest: Capped | None = None
    for connection in connections:
        if not connection.is_idle():
            continue
        if connection.state is spop.ConnectionState.AWAIT_HELLO:
            return connection
        if oldest is None or connection.active_at < oldest.active_at:
            oldest = connection
    return oldest


def source_of(peer: Any) -> str:
    """The per-source cap's key: the peer's address without its port (one key for unix)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0])
    return "unix"


__all__ = ["ConnectionCaps", "eviction_victim", "source_of"]
