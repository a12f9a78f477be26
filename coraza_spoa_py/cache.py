"""The per-application cache of open transactions waiting for their response.

A TTL cache with a size limit over ``cachetools.TTLCache`` (docs/compatibility.md "Transactions":
``transaction_ttl_ms``, ``transaction_active_limit``, oldest evicted first). Every entry that
leaves the cache other than through ``pop`` -- expired, evicted by the size limit, replaced by a
new entry with the same id -- is handed back to the caller, who must close it: a transaction is
never dropped without its logging phase and without freeing the native object.

Pure and single-threaded: no callbacks, no locks, no threads, no logging. ``application`` calls
it only from the gevent hub thread, where nothing switches inside a method; the clock is
injected so tests drive expiry by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from cachetools import TTLCache

V = TypeVar("V")
Entry = tuple[str, V]


class _CollectingTTLCache(TTLCache[str, Any]):
    # cachetools removes entries on its own in two places: ``expire`` (also called from
    # ``__setitem__`` and ``popitem``) and ``popitem`` (called from ``__setitem__`` when the
    # size limit is reached). Both are overridden to keep what they remove instead of losing it.

    def __init__(self, maxsize: int, ttl: float, timer: Callable[[], float]) -> None:
        super().__init__(maxsize=maxsize, ttl=ttl, timer=timer)
        self.expired: list[tuple[str, Any]] = []
        self.evicted: list[tuple[str, Any]] = []

    def expire(self, time: float | None = None) -> list[tuple[str, Any]]:
        removed = list(super().expire(time))
        self.expired.extend(removed)
        return removed

    def popitem(self) -> tuple[str, Any]:
        key, value = super().popitem()
        self.evicted.append((key, value))
        return key, value


class TransactionCache(Generic[V]):
    """Open transactions by id, with a time-to-live and a maximum count.

    ``put`` returns what it pushed out (size-limit evictions, a replaced entry with the same
    id); ``expire`` returns every entry whose TTL has passed, including those cachetools
    removed while ``put`` ran. ``pop`` of an expired entry returns ``None``: the response came
    too late, and the next ``expire`` hands the entry back for closing.
    """

    def __init__(
        self,
        ttl_s: float,
        max_entries: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self._entries = _CollectingTTLCache(max_entries, ttl_s, clock)
        self.ttl_s = ttl_s
        self.max_entries = max_entries

    def put(self, transaction_id: str, transaction: V) -> list[Entry[V]]:
        """Store ``transaction``; return the entries pushed out, for the caller to close."""
        pushed_out: list[Entry[V]] = []
        # cachetools would overwrite a live entry with the same id silently, leaking the old
        # transaction (coraza-spoa's behaviour, docs/compatibility.md "Transactions"): take it out
        # first.
        replaced = self._entries.pop(transaction_id, None)
        if replaced is not None:
            pushed_out.append((transaction_id, replaced))
        self._entries[transaction_id] = transaction
        pushed_out.extend(self._entries.evicted)
        self._entries.evicted.clear()
        return pushed_out

    def pop(self, transaction_id: str) -> V | None:
        """Remove and return the live transaction with this id, or ``None``."""
        value: V | None = self._entries.pop(transaction_id, None)
        return value

    def expire(self) -> list[Entry[V]]:
        """Remove and return every entry whose time-to-live has passed."""
        self._entries.expire()
        expired: list[Entry[V]] = list(self._entries.expired)
        self._entries.expired.clear()
        return expired

    def drain(self) -> list[Entry[V]]:
        """Remove and return every entry, expired or not (shutdown)."""
        entries = self.expire()
        while True:
            try:
                entries.append(self._entries.popitem())
            except KeyError:
                break
        # popitem() itself expires first; those entries went to the expired list
        entries.extend(self._entries.expired)
        self._entries.expired.clear()
        self._entries.evicted.clear()
        return entries

    def __contains__(self, transaction_id: object) -> bool:
        return transaction_id in self._entries

    def __len__(self) -> int:
        # entries cachetools still holds (some may have expired and wait for ``expire``) plus
        # those it already removed but nobody collected yet: everything still to be closed
        return len(self._entries) + len(self._entries.expired) + len(self._entries.evicted)
