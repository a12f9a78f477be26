"""The per-application cache of open transactions waiting for their response.

A TTL cache with a size limit (docs/compatibility.md "Transactions": ``transaction_ttl_ms``,
``transaction_active_limit``, oldest evicted first). Every entry that leaves the cache other
than through ``pop`` -- expired, evicted by the size limit, replaced by a new entry with the same
id -- is handed back to the caller, who must close it: a transaction is never dropped without
its logging phase and without freeing the native object.

Every entry has the same TTL and the clock only moves forward, so the order of insertion is the
order of expiry: one ``OrderedDict``, oldest first, is both the TTL queue and the eviction
order, and a put, pop or lookup is a few dict operations (cachetools' ``TTLCache`` cost ~3.5 us
per transaction on the hub in timers, links and layers of methods; docs/performance.md change
31).

Pure and single-threaded: no callbacks, no locks, no threads, no logging. ``application`` calls
it only from the gevent hub thread, where nothing switches inside a method; the clock is
injected so tests drive expiry by hand.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")
Entry = tuple[str, V]


class TransactionCache(Generic[V]):
    """Open transactions by id, with a time-to-live and a maximum count.

    ``put`` returns what it pushed out (size-limit evictions, a replaced entry with the same
    id); ``expire`` returns every entry whose TTL has passed, including those taken out while
    ``put`` ran. ``pop`` of an expired entry returns ``None``: the response came too late, and
    the next ``expire`` hands the entry back for closing.
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
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        # id -> (when it expires, the transaction), oldest first
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        # past their TTL, taken out of ``_entries`` by ``put``, not yet handed back by ``expire``
        self._expired: list[Entry[V]] = []

    def put(self, transaction_id: str, transaction: V) -> list[Entry[V]]:
        """Store ``transaction``; return the entries pushed out, for the caller to close."""
        now = self._clock()
        self._collect_expired(now)
        pushed_out: list[Entry[V]] = []
        # a live entry with the same id is not overwritten silently, leaking the old transaction
        # (coraza-spoa's behaviour, docs/compatibility.md "Transactions"): handed back. (An expired
        # one was collected just above: ``expire`` hands it back.)
        replaced = self._entries.pop(transaction_id, None)
        if replaced is not None:
            pushed_out.append((transaction_id, replaced[1]))
        while len(self._entries) >= self.max_entries:
            oldest_id, (_, oldest) = self._entries.popitem(last=False)
            pushed_out.append((oldest_id, oldest))
        self._entries[transaction_id] = (now + self.ttl_s, transaction)
        return pushed_out

    def pop(self, transaction_id: str) -> V | None:
        """Remove and return the live transaction with this id, or ``None``."""
        entry = self._entries.get(transaction_id)
        if entry is None or entry[0] <= self._clock():
            return None  # an expired one stays for ``expire``
        del self._entries[transaction_id]
        return entry[1]

    def expire(self) -> list[Entry[V]]:
        """Remove and return every entry whose time-to-live has passed."""
        self._collect_expired(self._clock())
        expired, self._expired = self._expired, []
        return expired

    def drain(self) -> list[Entry[V]]:
        """Remove and return every entry, expired or not (shutdown)."""
        entries = self.expire()
        entries.extend(
            (transaction_id, entry[1]) for transaction_id, entry in self._entries.items()
        )
        self._entries.clear()
        return entries

    def __contains__(self, transaction_id: object) -> bool:
        entry = self._entries.get(transaction_id)  # type: ignore[call-overload]
        return entry is not None and self._clock() < entry[0]

    def __len__(self) -> int:
        # entries still held (some may have expired and wait for ``expire``) plus those already
        # taken out but not collected yet: everything still to be closed
        return len(self._entries) + len(self._expired)

    def _collect_expired(self, now: float) -> None:
        # the oldest first: stop at the first one still alive
        entries = self._entries
        while entries:
            transaction_id, (expires, transaction) = next(iter(entries.items()))
            if now < expires:
                return
            del entries[transaction_id]
            self._expired.append((transaction_id, transaction))
