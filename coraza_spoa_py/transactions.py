"""One application's transaction lifetime: the open transactions waiting for their response
(a TTL cache), the engine work of a message, closing what leaves the cache without its response
(expired, evicted, shutdown), and the counters.

The cache and the counters are only touched on the hub, so they need no lock; the hand-over
dict is used with single dict operations only.
At debug, every transaction leaving the cache without its response gets one line.

Must not read messages or know the engine binding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from loguru import logger

from coraza_spoa_py.cache import Entry, TransactionCache
from coraza_spoa_py.message_log import cache_removal, debug_enabled
from coraza_spoa_py.models import Verdict, WafTransaction
from coraza_spoa_py.outcome import EngineFailureError, Outcome, OverloadedError
from coraza_spoa_py.settings import AppConfig

if TYPE_CHECKING:
    from loguru import Logger

# repeated warnings (response check off, size-limit evictions): at most once a minute
WARNING_INTERVAL_S = 60.0
# how many transactions one step closes at most (sweep, eviction, shutdown), so that a large
# expiry is handed over in bounded steps
CLOSE_BATCH_SIZE = 64


@dataclass(frozen=True, slots=True)
class TransactionStats:
    """Counters of one application. Invariant: ``opened == closed + open + in_flight``."""

    opened: int = 0
    closed: int = 0
    expired: int = 0
    evicted: int = 0
    shed: int = 0
    open: int = 0
    in_flight: int = 0

    def __add__(self, other: TransactionStats) -> TransactionStats:
        return TransactionStats(
            opened=self.opened + other.opened,
            closed=self.closed + other.closed,
            expired=self.expired + other.expired,
            evicted=self.evicted + other.evicted,
            shed=self.shed + other.shed,
            open=self.open + other.open,
            in_flight=self.in_flight + other.in_flight,
        )

    def counts(self) -> TransactionStats:
        """The counters without the ``open`` / ``in_flight`` gauges: what an application
        leaves behind when it is dropped, so that totals never go backwards."""
        return replace(self, open=0, in_flight=0)


class Warnings:
    """Warnings of conditions that repeat on every message: at most one a minute per kind, so
    they never flood the log."""

    def __init__(self, log: Logger, clock: Callable[[], float]) -> None:
        self._log = log
        self._clock = clock
        self._warned_at: dict[str, float] = {}

    def every_minute(self, key: str, text: str) -> None:
        now = self._clock()
        last = self._warned_at.get(key)
        if last is None or now - last >= WARNING_INTERVAL_S:
            self._warned_at[key] = now
            self._log.warning(text)


class Transactions:
    """The open transactions of one application."""

    def __init__(
        self,
        config: AppConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        processing_budget_s: float,
        warnings: Warnings,
    ) -> None:
        self._clock = clock
        self._processing_budget_s = processing_budget_s
        self._warnings = warnings
        self._cache: TransactionCache[WafTransaction] = TransactionCache(
            config.transaction_ttl_ms / 1000.0, config.transaction_active_limit, clock=clock
        )
        self._log = logger.bind(app=config.name)
        self.opened = 0
        self.closed = 0
        self.expired = 0
        self.evicted = 0
        self.shed = 0
        self.in_flight = 0
        # Transactions kept for the response while their request's greenlet waits for the engine,
        # until they are cached. If that greenlet is killed (forced shutdown), close_all() still
        # finds them here.
        self._handed_over: dict[int, Entry[WafTransaction]] = {}

    @property
    def stats(self) -> TransactionStats:
        return TransactionStats(
            opened=self.opened,
            closed=self.closed,
            expired=self.expired,
            evicted=self.evicted,
            shed=self.shed,
            open=len(self._cache),
            in_flight=self.in_flight,
        )

    def __contains__(self, transaction_id: str) -> bool:
        return transaction_id in self._cache

    # ---- engine work ----------------------------------------------------------------------

    def run(self, work: Callable[[Outcome, float], None], outcome: Outcome) -> None:
        """The engine work of one message: ``work(outcome, started)`` fills the outcome's engine
        fields. On the calling greenlet, its engine jobs on the scheduler's threads: the start
        also decides load shedding of responses (budget check)."""
        started = self._clock()
        try:
            work(outcome, started)
        except Exception as exc:
            # the work failed outside the engine calls: an engine failure all the same
            outcome.error = exc
        verdict = outcome.verdict
        times = verdict.engine_times if verdict is not None else None
        outcome.started, outcome.finished = times or (started, self._clock())

    def settle(self, outcome: Outcome, transaction_id: str) -> Verdict:
        """On the hub: count what the engine work did; its verdict, or the ``MessageError``."""
        # Counters move here, on the hub, never on engine threads.
        self.opened += outcome.opened
        self.closed += outcome.closed
        if outcome.shed:
            self.shed += 1
            raise OverloadedError(f"waited longer than {self._processing_budget_s:.3f}s", outcome)
        if outcome.error is not None or outcome.verdict is None:
            self._log.bind(tx=transaction_id).opt(exception=outcome.error).error(
                "rule engine failed: {}", outcome.error
            )
            raise EngineFailureError(str(outcome.error), outcome)
        return outcome.verdict

    # ---- the cache ------------------------------------------------------------------------

    def hand_over(self, transaction_id: str, transaction: WafTransaction) -> None:
        """On the engine thread: a transaction kept for its response, until ``store``."""
        self._handed_over[id(transaction)] = (transaction_id, transaction)

    def take_back(self, transaction: WafTransaction) -> bool:
        """On the hub: False when close_all() already took, closed and counted it (shutdown)."""
        return self._handed_over.pop(id(transaction), None) is not None

    def store(self, transaction_id: str, transaction: WafTransaction) -> None:
        pushed_out = self._cache.put(transaction_id, transaction)
        if pushed_out:
            self._debug_cache_removed(pushed_out, transaction_id)
            self.evicted += len(pushed_out)
            self._warnings.every_minute(
                "evicted",
                "transaction_active_limit reached: oldest open transactions closed"
                f" (evicted so far: {self.evicted})",
            )
            self.close_entries(pushed_out)

    def pop(self, transaction_id: str) -> WafTransaction | None:
        """Take a transaction away from the sweeper: the caller owns it and must close it."""
        return self._cache.pop(transaction_id)

    def sweep(self) -> int:
        """Close every transaction past its TTL (called every second). Returns the count."""
        expired = self._cache.expire()
        if expired:
            self.expired += len(expired)
            self._log.debug("closing {} expired transaction(s)", len(expired))
            self._debug_cache_removed(expired, None)
            self.close_entries(expired)
        return len(expired)

    def close_all(self) -> int:
        """Shutdown: run the logging phase of every open transaction and free it."""
        entries = self._cache.drain()
        while self._handed_over:
            _, orphan = self._handed_over.popitem()
            self.opened += 1  # its request's greenlet never settled it
            entries.append(orphan)
        self.close_entries(entries)
        return len(entries)

    # ---- closing --------------------------------------------------------------------------

    def close_entries(self, entries: Sequence[Entry[WafTransaction]]) -> None:
        for start in range(0, len(entries), CLOSE_BATCH_SIZE):
            batch = entries[start : start + CLOSE_BATCH_SIZE]
            self.in_flight += len(batch)
            try:
                self._close_batch(batch)
            except Exception:
                self._log.exception("closing transactions failed")
            finally:
                self.in_flight -= len(batch)
                self.closed += len(batch)

    def _close_batch(self, batch: Sequence[Entry[WafTransaction]]) -> None:
        for transaction_id, transaction in batch:
            self.close_quietly(transaction_id, transaction)

    def close_quietly(self, transaction_id: str, transaction: WafTransaction) -> None:
        try:
            transaction.close()
        except Exception:
            self._log.bind(tx=transaction_id).exception("closing the transaction failed")

    def _debug_cache_removed(
        self, entries: Sequence[Entry[WafTransaction]], new_id: str | None
    ) -> None:
        # the cache events that are not on a message line: expired, evicted, replaced
        if debug_enabled():
            for transaction_id, _ in entries:
                self._log.bind(tx=transaction_id).debug(cache_removal(transaction_id, new_id))
