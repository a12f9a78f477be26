"""One configured application: its rule engine, its open-transaction cache, its counters.

``handle_request`` / ``handle_response`` turn one ``coraza-req`` / ``coraza-res`` message into
the SET-VAR actions of docs/compatibility.md "Errors". The engine's jobs run where the injected
scheduler runs them (the native engine threads in production, the calling greenlet parked), never
on the gevent hub; the cache and the counters are only touched on the hub, so they need no lock.

Failures are raised as ``MessageError`` subclasses carrying our error code (1001-1005);
``agent`` turns them into ``error``. At debug, each message gets one line (``message_log``),
whatever its outcome, and every transaction leaving the cache without its response one more.

This module must not route messages, know other applications, import gevent or the engine
binding (the engine is injected).
"""

from __future__ import annotations

import random
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from loguru import logger

from coraza_spoa_py.cache import Entry, TransactionCache
from coraza_spoa_py.message_log import (
    MessageTrace,
    cache_removal,
    debug_enabled,
    describe_answer,
    detect_only_note,
)
from coraza_spoa_py.messages import (
    REQUEST_ARGS,
    RESPONSE_ARGS,
    MalformedArgumentError,
    RequestMessage,
    ResponseMessage,
    args_by_name,
    parse_orphan_request,
    parse_request_message,
    parse_response_message,
)
from coraza_spoa_py.models import (
    CloseWhen,
    DeadlineExceededError,
    EngineScheduler,
    RequestInfo,
    ResponseInfo,
    RuleMatch,
    Verdict,
    WafEngine,
    WafTransaction,
)
from coraza_spoa_py.settings import AppConfig
from coraza_spoa_py.spop.events import Action, Arg, Message
from coraza_spoa_py.verdicts import (
    VAR_ANOMALY_SCORE,
    VAR_RULE_IDS,
    VAR_RULES_HIT,
    ErrorCode,
    orphan_response_verdict,
    truncated_body_verdict,
    verdict_actions,
)


class MessageError(Exception):
    """Our processing of one message failed; ``code`` goes to HAProxy at once."""

    code: ClassVar[ErrorCode] = ErrorCode.ENGINE_FAILURE


class MalformedMessageError(MessageError):
    code = ErrorCode.MALFORMED_MESSAGE


class NoApplicationError(MessageError):
    code = ErrorCode.NO_APPLICATION


class EngineFailureError(MessageError):
    code = ErrorCode.ENGINE_FAILURE


class TransactionNotFoundError(MessageError):
    # only with ``orphan_responses: reject``; otherwise such a response is inspected on its own
    code = ErrorCode.TRANSACTION_NOT_FOUND


class OverloadedError(MessageError):
    code = ErrorCode.OVERLOADED


# the variables that describe the whole transaction so far (models.Verdict), not one message
_TRANSACTION_TOTALS = frozenset({VAR_RULES_HIT, VAR_ANOMALY_SCORE, VAR_RULE_IDS})

# coraza-spoa generates 16 random uppercase letters when HAProxy sends no id (Part 2 §2.2)
GENERATED_ID_LENGTH = 16
# repeated warnings (response check off, size-limit evictions): at most once a minute
WARNING_INTERVAL_S = 60.0
# how many transactions one step closes at most (sweep, eviction, shutdown), so that a large
# expiry is handed over in bounded steps
CLOSE_BATCH_SIZE = 64


# coraza-spoa's severity -> log level mapping (docs/compatibility.md "Logging"): warning -> warn,
# notice/info -> info, debug -> debug, everything else (and no severity) -> error
_LEVEL_BY_SEVERITY = {"warning": "WARNING", "notice": "INFO", "info": "INFO", "debug": "DEBUG"}
_LEVEL_ORDER = ("DEBUG", "INFO", "WARNING", "ERROR")


def rule_match_level(matches: Sequence[RuleMatch]) -> str:
    """The loguru level of a rule-match record: its most severe match, so that an app logging
    at ``error`` still sees a record containing a critical match."""
    levels = (_LEVEL_BY_SEVERITY.get(match.severity, "ERROR") for match in matches)
    return max(levels, key=_LEVEL_ORDER.index, default="ERROR")


def generate_transaction_id() -> str:
    return "".join(random.choices(string.ascii_uppercase, k=GENERATED_ID_LENGTH))


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


# What a message came to, for the metrics (``Application.observer``): the message name, whether
# it was inspected without its request's transaction, the verdict
Observer = Callable[[str, str, bool, Verdict], None]


@dataclass(slots=True)
class _Outcome:
    # What the engine work of one message did; read on the hub.
    verdict: Verdict | None = None
    opened: bool = False
    closed: bool = False
    shed: bool = False
    error: BaseException | None = None
    kept: WafTransaction | None = None
    # when an engine thread picked the message's engine work up, and when it was done (the
    # verdict's ``engine_times`` when the engine gives them, else our clock around the work)
    started: float = 0.0
    finished: float = 0.0


class Application:
    """One configured application (``applications[]`` entry of the config)."""

    def __init__(
        self,
        config: AppConfig,
        engine: WafEngine,
        scheduler: EngineScheduler,
        *,
        clock: Callable[[], float] = time.monotonic,
        processing_budget_s: float = 0.4,
    ) -> None:
        self.config = config
        self._engine = engine
        # the scheduler of the engine's jobs: the expected wait for an engine thread
        # (docs/performance.md "Overload"); responses go ahead of requests in the pool
        self._scheduler = scheduler
        self._clock = clock
        self._processing_budget_s = processing_budget_s
        self._cache: TransactionCache[WafTransaction] = TransactionCache(
            config.transaction_ttl_ms / 1000.0, config.transaction_active_limit, clock=clock
        )
        self._log = logger.bind(app=config.name)
        self._opened = 0
        self._closed = 0
        self._expired = 0
        self._evicted = 0
        self._shed = 0
        self._in_flight = 0
        self._orphans = 0
        # set by the runtime when metrics are served: called with every verdict (hub only)
        self.observer: Observer | None = None
        self._warned_at: dict[str, float] = {}
        # Transactions kept for the response while their request's greenlet waits for the engine,
        # until they are cached. If that greenlet is killed (forced shutdown), close_all() still
        # finds them here.
        self._handed_over: dict[int, Entry[WafTransaction]] = {}

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def engine(self) -> WafEngine:
        return self._engine

    @property
    def stats(self) -> TransactionStats:
        return TransactionStats(
            opened=self._opened,
            closed=self._closed,
            expired=self._expired,
            evicted=self._evicted,
            shed=self._shed,
            open=len(self._cache),
            in_flight=self._in_flight,
        )

    @property
    def orphan_responses(self) -> int:
        """``coraza-res`` messages inspected without their request's transaction."""
        return self._orphans

    def has_open_transaction(self, transaction_id: str) -> bool:
        return transaction_id in self._cache

    # ---- request ------------------------------------------------------------------------

    def handle_request(
        self, message: Message, received_at: float, args: Mapping[str, Arg] | None = None
    ) -> list[Action]:
        """Evaluate a ``coraza-req`` message (phases 1 and 2); keep the transaction for the
        response when this app checks responses and the request was not interrupted.

        ``args``: ``messages.args_by_name(message)`` if the caller already has it."""
        return self._dispatch(self._request, REQUEST_ARGS, message, received_at, args)

    def _request(
        self,
        message: Message,
        received_at: float,
        args: Mapping[str, Arg],
        trace: MessageTrace | None,
    ) -> list[Action]:
        # shed on arrival: a request that would wait past the budget is answered now,
        # before it costs a parse and an engine job, and the queue stays about one budget
        # long (the engine threads shed a job still waiting at its deadline: the safety net)
        # plus the time it already spent on the hub since it was read: when the hub is
        # the bottleneck (thousands of connections), the engine queue stays short while
        # messages age before they reach it, and their responses would then be shed
        # after their requests cost engine time (docs/performance.md "Overload")
        expected = (self._clock() - received_at) + self._scheduler.expected_wait_s()
        if expected > self._processing_budget_s:
            self._shed += 1
            raise OverloadedError(
                f"expected wait {expected:.3f}s exceeds {self._processing_budget_s:.3f}s"
            )
        try:
            parsed = parse_request_message(message, generate_transaction_id, args)
        except MalformedArgumentError as exc:
            raise MalformedMessageError(str(exc)) from exc
        if trace is not None and parsed.id_generated:
            trace.transaction_id, trace.note = parsed.request.transaction_id, "id generated"
        outcome = self._run(lambda started: self._evaluate_request(parsed, received_at, started))
        if trace is not None:
            trace.started, trace.finished = outcome.started, outcome.finished
        if outcome.kept is not None and self._handed_over.pop(id(outcome.kept), None) is None:
            # close_all() already took, closed and counted it (shutdown)
            outcome.kept, outcome.opened = None, False
        verdict = self._settle(outcome, parsed.request.transaction_id)
        if parsed.request.body_truncated:
            self._report_truncated_body(parsed.request, trace)
        if trace is not None:
            trace.cache = "stored" if outcome.kept is not None else "not-stored"
            trace.note = detect_only_note(verdict) if parsed.detect_only else trace.note
        if outcome.kept is not None:
            pushed_out = self._cache.put(parsed.request.transaction_id, outcome.kept)
            if pushed_out:
                self._debug_cache_removed(pushed_out, parsed.request.transaction_id)
                self._evicted += len(pushed_out)
                self._warn_every_minute(
                    "evicted",
                    "transaction_active_limit reached: oldest open transactions closed"
                    f" (evicted so far: {self._evicted})",
                )
                self._close_entries(pushed_out)
        self._log_matches(parsed.request.transaction_id, verdict)
        if self.observer is not None:
            self.observer(self.config.name, "coraza-req", False, verdict)
        return verdict_actions(
            verdict,
            transaction_id=parsed.request.transaction_id,
            export_rule_ids=parsed.export_rule_ids or self.config.export_rule_ids,
            detect_only=parsed.detect_only,
        )

    def _evaluate_request(
        self, parsed: RequestMessage, received_at: float, started: float
    ) -> _Outcome:
        # Its engine job runs on an engine thread. Never raises: the hub needs to know what was
        # opened. (Its budget was checked on arrival, just before.)
        request: RequestInfo = parsed.request
        try:
            transaction = self._engine.new_transaction(request.transaction_id)
        except Exception as exc:
            return _Outcome(error=exc)
        try:
            # the engine threads shed it too if it waits for one past the budget
            verdict = transaction.process_request(
                request,
                deadline=self._deadline(received_at),
                close_when=self._request_close_when(parsed.detect_only),
            )
        except DeadlineExceededError:
            self._close_quietly(request.transaction_id, transaction)
            return _Outcome(opened=True, closed=True, shed=True)
        except Exception as exc:
            self._close_quietly(request.transaction_id, transaction)
            return _Outcome(opened=True, closed=True, error=exc)
        if request.body_truncated and self._engine.rejects_truncated_body:
            verdict = truncated_body_verdict(verdict)
        if self.config.response_check and (parsed.detect_only or not verdict.interrupted):
            self._handed_over[id(transaction)] = (request.transaction_id, transaction)
            return _Outcome(verdict=verdict, opened=True, kept=transaction)
        self._close_quietly(request.transaction_id, transaction)  # done by its job already
        return _Outcome(verdict=verdict, opened=True, closed=True)

    def _report_truncated_body(self, request: RequestInfo, trace: MessageTrace | None) -> None:
        # docs/haproxy.md "Request bodies": never judged as if complete, and never silently
        received, declared = len(request.body), request.declared_body_size
        if trace is not None:
            trace.note = f"body truncated: {received} of {declared} bytes"
        outcome = (
            "refused (413, SecRequestBodyLimitAction Reject)"
            if self._engine.rejects_truncated_body
            else "judged on that part only (SecRequestBodyLimitAction ProcessPartial)"
        )
        self._warn_every_minute(
            "body_truncated",
            f"a request body reached the agent cut short ({received} of {declared} bytes, "
            f"HAProxy's tune.bufsize or the body argument's cap): {outcome}",
        )

    def _request_close_when(self, detect_only: bool) -> CloseWhen:
        # docs/compatibility.md "Errors": an interrupted request is closed at once, unless
        # detect-only asks to keep it so that its response can still be correlated (coraza-spoa PR
        # #374); the request's own engine job does it (no close job of its own)
        if not self.config.response_check:
            return CloseWhen.ALWAYS
        return CloseWhen.NEVER if detect_only else CloseWhen.IF_INTERRUPTED

    # ---- response -----------------------------------------------------------------------

    def handle_response(
        self, message: Message, received_at: float, args: Mapping[str, Arg] | None = None
    ) -> list[Action]:
        """Evaluate a ``coraza-res`` message (phases 3 and 4) in its request's transaction,
        then close it. ``args`` as for ``handle_request``."""
        return self._dispatch(self._response, RESPONSE_ARGS, message, received_at, args)

    def _response(
        self,
        message: Message,
        received_at: float,
        args: Mapping[str, Arg],
        trace: MessageTrace | None,
    ) -> list[Action]:
        if not self.config.response_check:
            self._warn_response_check_off()
            if trace is not None:
                trace.note = "response_check off"
            return []
        try:
            parsed = parse_response_message(message, args)
        except MalformedArgumentError as exc:
            raise MalformedMessageError(str(exc)) from exc
        transaction_id = parsed.response.transaction_id
        if not transaction_id:
            raise TransactionNotFoundError("response message without id")
        # popping takes the transaction away from the sweeper: from here on this message owns
        # it and must close it
        transaction = self._cache.pop(transaction_id)
        if trace is not None:
            trace.cache = "not-found" if transaction is None else "found"
        if transaction is None and self.config.orphan_responses == "reject":
            raise TransactionNotFoundError(f"no open transaction {transaction_id!r}")
        # in flight until answered, found or orphan: a retired application holding none is
        # dropped (Agent.sweep), and this job's opened/closed counts would go with it
        self._in_flight += 1
        try:
            if transaction is not None:
                outcome = self._run(
                    lambda started: self._evaluate_response(
                        parsed, transaction, received_at, started
                    )
                )
            else:
                outcome = self._orphan(parsed, args, received_at, trace)
        finally:
            self._in_flight -= 1
        if trace is not None:
            trace.started, trace.finished = outcome.started, outcome.finished
        verdict = self._settle(outcome, transaction_id)
        self._log_matches(transaction_id, verdict)
        if self.observer is not None:
            self.observer(self.config.name, "coraza-res", transaction is None, verdict)
        actions = verdict_actions(
            verdict,
            transaction_id=None,
            export_rule_ids=parsed.export_rule_ids or self.config.export_rule_ids,
            detect_only=parsed.detect_only,
        )
        if transaction is None and not verdict.matched_rule_ids:
            # an orphan that matched nothing leaves the request's transaction-wide variables
            # as its agent set them (HAProxy's log line keeps the request's ids and score);
            # one that matched reports its own (docs/operations.md "Several agents")
            actions = [a for a in actions if a.name not in _TRANSACTION_TOTALS]
        return actions

    def _evaluate_response(
        self,
        parsed: ResponseMessage,
        transaction: WafTransaction,
        received_at: float,
        started: float,
    ) -> _Outcome:
        response: ResponseInfo = parsed.response
        try:
            if started - received_at > self._processing_budget_s:
                return _Outcome(shed=True, closed=True)
            try:
                verdict = transaction.process_response(
                    response, deadline=self._deadline(received_at), close_when=CloseWhen.ALWAYS
                )
            except DeadlineExceededError:
                return _Outcome(shed=True, closed=True)
            except Exception as exc:
                return _Outcome(closed=True, error=exc)
            return _Outcome(verdict=verdict, closed=True)
        finally:
            # a no-op when its job closed it (CloseWhen.ALWAYS); not when the call failed early
            self._close_quietly(response.transaction_id, transaction)

    def _orphan(
        self,
        parsed: ResponseMessage,
        args: Mapping[str, Arg],
        received_at: float,
        trace: MessageTrace | None,
    ) -> _Outcome:
        # Another agent (or process) saw the request, or its transaction expired or was
        # evicted: inspect the response on its own rather than fail it (docs/operations.md
        # "Several agents"). The request-side TX state of the other agent is not here.
        try:
            request = parse_orphan_request(args, parsed.response.transaction_id)
        except MalformedArgumentError as exc:
            raise MalformedMessageError(str(exc)) from exc
        self._orphans += 1
        if trace is not None:
            trace.note = "orphan: inspected without its request"
        return self._run(
            lambda started: self._evaluate_orphan(parsed, request, received_at, started)
        )

    def _evaluate_orphan(
        self,
        parsed: ResponseMessage,
        request: RequestInfo,
        received_at: float,
        started: float,
    ) -> _Outcome:
        # Like _evaluate_request: never raises. A fresh transaction:
        # phases 1-2 with the request facts the message carries, because rule sets initialise
        # their TX variables there (CRS 901xxx: paranoia level, outbound threshold; without
        # them its 95x rules skip themselves); their verdict is not ours to give, the request
        # was answered elsewhere. Then phases 3-4, then closed.
        if started - received_at > self._processing_budget_s:
            return _Outcome(shed=True)
        transaction_id = parsed.response.transaction_id
        try:
            transaction = self._engine.new_transaction(transaction_id)
        except Exception as exc:
            return _Outcome(error=exc)
        deadline = self._deadline(received_at)
        try:
            before = transaction.process_request(request, deadline=deadline)
            verdict = transaction.process_response(
                parsed.response, deadline=deadline, close_when=CloseWhen.ALWAYS
            )
        except DeadlineExceededError:
            return _Outcome(opened=True, closed=True, shed=True)
        except Exception as exc:
            return _Outcome(opened=True, closed=True, error=exc)
        finally:
            self._close_quietly(transaction_id, transaction)
        return _Outcome(verdict=orphan_response_verdict(verdict, before), opened=True, closed=True)

    # ---- lifetime -----------------------------------------------------------------------

    def sweep(self) -> int:
        """Close every transaction past its TTL (called every second). Returns the count."""
        expired = self._cache.expire()
        if expired:
            self._expired += len(expired)
            self._log.debug("closing {} expired transaction(s)", len(expired))
            self._debug_cache_removed(expired, None)
            self._close_entries(expired)
        return len(expired)

    def close_all(self) -> int:
        """Shutdown: run the logging phase of every open transaction and free it."""
        entries = self._cache.drain()
        while self._handed_over:
            _, orphan = self._handed_over.popitem()
            self._opened += 1  # its request's greenlet never settled it
            entries.append(orphan)
        self._close_entries(entries)
        return len(entries)

    # ---- helpers ------------------------------------------------------------------------

    def _run(self, work: Callable[[float], _Outcome]) -> _Outcome:
        def timed() -> _Outcome:
            # on the calling greenlet, its engine jobs on the scheduler's threads: the start
            # also decides load shedding of responses (budget check)
            started = self._clock()
            done = work(started)
            verdict = done.verdict
            times = verdict.engine_times if verdict is not None else None
            done.started, done.finished = times or (started, self._clock())
            return done

        try:
            return timed()
        except Exception as exc:
            # the work failed outside the engine calls: an engine failure all the same
            return _Outcome(error=exc)

    def _deadline(self, received_at: float) -> float:
        # received_at is time.monotonic() in production, the engine threads' clock too
        return received_at + self._processing_budget_s

    def _settle(self, outcome: _Outcome, transaction_id: str) -> Verdict:
        # Counters move here, on the hub, never on engine threads.
        self._opened += outcome.opened
        self._closed += outcome.closed
        if outcome.shed:
            self._shed += 1
            raise OverloadedError(f"waited longer than {self._processing_budget_s:.3f}s")
        if outcome.error is not None or outcome.verdict is None:
            self._log.bind(tx=transaction_id).opt(exception=outcome.error).error(
                "rule engine failed: {}", outcome.error
            )
            raise EngineFailureError(str(outcome.error))
        return outcome.verdict

    def _close_entries(self, entries: Sequence[Entry[WafTransaction]]) -> None:
        for start in range(0, len(entries), CLOSE_BATCH_SIZE):
            batch = entries[start : start + CLOSE_BATCH_SIZE]
            self._in_flight += len(batch)
            try:
                self._close_batch(batch)
            except Exception:
                self._log.exception("closing transactions failed")
            finally:
                self._in_flight -= len(batch)
                self._closed += len(batch)

    def _close_batch(self, batch: Sequence[Entry[WafTransaction]]) -> None:
        for transaction_id, transaction in batch:
            self._close_quietly(transaction_id, transaction)

    def _close_quietly(self, transaction_id: str, transaction: WafTransaction) -> None:
        try:
            transaction.close()
        except Exception:
            self._log.bind(tx=transaction_id).exception("closing the transaction failed")

    def _dispatch(
        self,
        handle: Callable[[Message, float, Mapping[str, Arg], MessageTrace | None], list[Action]],
        known_args: frozenset[str],
        message: Message,
        received_at: float,
        args: Mapping[str, Arg] | None,
    ) -> list[Action]:
        # the arguments by name once per message; the debug trace only when debug is on (the
        # hot path pays one level check, message_log.debug_enabled)
        if args is None:
            args = args_by_name(message)
        if not debug_enabled():
            return handle(message, received_at, args, None)
        trace = MessageTrace.of(message, known_args, args)
        return self._traced(handle, message, received_at, args, trace)

    def _traced(
        self,
        handle: Callable[[Message, float, Mapping[str, Arg], MessageTrace | None], list[Action]],
        message: Message,
        received_at: float,
        args: Mapping[str, Arg],
        trace: MessageTrace,
    ) -> list[Action]:
        # debug only: run the message, then write its one line, whatever the outcome
        try:
            actions = handle(message, received_at, args, trace)
        except Exception as exc:
            code = exc.code if isinstance(exc, MessageError) else ErrorCode.ENGINE_FAILURE
            self._debug_line(trace, received_at, f"error={int(code)} ({exc})")
            raise
        self._debug_line(trace, received_at, describe_answer(actions))
        return actions

    def _debug_line(self, trace: MessageTrace, received_at: float, answer: str) -> None:
        # bound only now: an absent id was generated while the message was handled
        line = trace.line(answer, received_at, self._clock())
        self._log.bind(tx=trace.transaction_id).debug(line)

    def _debug_cache_removed(
        self, entries: Sequence[Entry[WafTransaction]], new_id: str | None
    ) -> None:
        # the cache events that are not on a message line: expired, evicted, replaced
        if debug_enabled():
            for transaction_id, _ in entries:
                self._log.bind(tx=transaction_id).debug(cache_removal(transaction_id, new_id))

    def _warn_response_check_off(self) -> None:
        self._warn_every_minute(
            "response_check_off",
            "coraza-res received but response_check is false: answering without a verdict",
        )

    def _warn_every_minute(self, key: str, text: str) -> None:
        # conditions that repeat on every message must not flood the log
        now = self._clock()
        last = self._warned_at.get(key)
        if last is None or now - last >= WARNING_INTERVAL_S:
            self._warned_at[key] = now
            self._log.warning(text)

    def _log_matches(self, transaction_id: str, verdict: Verdict) -> None:
        # docs/architecture.md "Rule-match log records": at most one record per message
        if verdict.matches:
            records = [match.to_dict() for match in verdict.matches]
            self._log.bind(tx=transaction_id, kind="rule_match", matches=records).log(
                rule_match_level(verdict.matches), "rules matched"
            )
