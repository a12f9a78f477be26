"""One configured application: turns one ``coraza-req`` / ``coraza-res`` message into the
SET-VAR actions of docs/compatibility.md "Errors", in its rule engine and its open
transactions (``transactions``). The engine's jobs run where the injected scheduler runs them
(the native engine threads in production, the calling greenlet parked), never on the gevent hub.

Failures are raised as ``outcome.MessageError`` subclasses carrying our error code
(1001-1005); ``agent`` turns them into ``error``. Each message's ``outcome.Outcome`` says what
it came to; at debug, ``message_log.traced`` wraps the handlers and writes one line per message
from it, whatever the outcome.

This module must not route messages, know other applications, import gevent or the engine
binding (the engine is injected).
"""

from __future__ import annotations

import random
import string
import time
from collections.abc import Callable, Mapping, Sequence

from loguru import logger

from coraza_spoa_py.message_log import debug_enabled, level_enabled, traced
from coraza_spoa_py.messages import (
    REQUEST_ARGS,
    RESPONSE_ARGS,
    MalformedArgumentError,
    RequestMessage,
    args_by_name,
    parse_request_message,
)
from coraza_spoa_py.models import (
    CloseWhen,
    DeadlineExceededError,
    EngineScheduler,
    RequestInfo,
    RuleMatch,
    Verdict,
    WafEngine,
)
from coraza_spoa_py.outcome import (
    CACHE_NOT_STORED,
    CACHE_STORED,
    EngineFailureError,
    MalformedMessageError,
    MessageError,
    NoApplicationError,
    Outcome,
    OverloadedError,
    TransactionNotFoundError,
)
from coraza_spoa_py.responses import Responses
from coraza_spoa_py.settings import DEFAULT_PROCESSING_BUDGET_MS, AppConfig
from coraza_spoa_py.spop.events import Action, Arg, Message
from coraza_spoa_py.transactions import Transactions, TransactionStats, Warnings
from coraza_spoa_py.verdicts import truncated_body_verdict, verdict_actions

__all__ = [
    "Application",
    "EngineFailureError",
    "MalformedMessageError",
    "MessageError",
    "NoApplicationError",
    "OverloadedError",
    "TransactionNotFoundError",
    "TransactionStats",
]

# coraza-spoa generates 16 random uppercase letters when HAProxy sends no id (Part 2 §2.2)
GENERATED_ID_LENGTH = 16


# coraza-spoa's severity -> log level mapping (docs/compatibility.md "Logging"): warning -> warn,
# notice/info -> info, debug -> debug, everything else (and no severity) -> error
_LEVEL_BY_SEVERITY = {"warning": "WARNING", "notice": "INFO", "info": "INFO", "debug": "DEBUG"}
_LEVEL_RANK = {"DEBUG": 0, "INFO": 1, "WARNING": 2, "ERROR": 3}
# loguru's numbers of those levels
_LEVEL_NO = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}


def rule_match_level(matches: Sequence[RuleMatch]) -> str:
    """The loguru level of a rule-match record: its most severe match, so that an app logging
    at ``error`` still sees a record containing a critical match."""
    level, rank = "ERROR", -1  # no matches: error
    for match in matches:
        candidate = _LEVEL_BY_SEVERITY.get(match.severity, "ERROR")
        if _LEVEL_RANK[candidate] > rank:
            level, rank = candidate, _LEVEL_RANK[candidate]
    return level


def rule_match_records_logged() -> bool:
    """Whether any log sink takes a rule-match record of some level: the most severe a record
    gets is ERROR (``rule_match_level``), so a sink above it (``log_level: disabled``, ``fatal``,
    ``panic``) never sees one, and the engine need not format the matches' text
    (``RuleMatch.raw``; docs/performance.md change 54)."""
    return level_enabled(_LEVEL_NO["ERROR"])


def generate_transaction_id() -> str:
    return "".join(random.choices(string.ascii_uppercase, k=GENERATED_ID_LENGTH))


# What a message came to, for the metrics (``Application.observer``): the app, the message
# name, whether it was inspected without its request's transaction, the verdict
Observer = Callable[[str, str, bool, Verdict], None]


class Application:
    """One configured application (``applications[]`` entry of the config)."""

    def __init__(
        self,
        config: AppConfig,
        engine: WafEngine,
        scheduler: EngineScheduler,
        *,
        clock: Callable[[], float] = time.monotonic,
        processing_budget_s: float = DEFAULT_PROCESSING_BUDGET_MS / 1000,
    ) -> None:
        self.config = config
        self._engine = engine
        # the scheduler of the engine's jobs: the expected wait for an engine thread
        # (docs/performance.md "Overload"); responses go ahead of requests in the pool
        self._scheduler = scheduler
        self._clock = clock
        self._processing_budget_s = processing_budget_s
        self._log = logger.bind(app=config.name)
        warnings = self._warnings = Warnings(self._log, clock)
        self._transactions = Transactions(
            config, clock=clock, processing_budget_s=processing_budget_s,
            warnings=warnings,
        )  # fmt: skip
        self._responses = Responses(
            config, engine, self._transactions, processing_budget_s=processing_budget_s,
            warnings=warnings,
        )  # fmt: skip
        # set by the runtime when metrics are served: called with every verdict (hub only)
        self.observer: Observer | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def engine(self) -> WafEngine:
        return self._engine

    @property
    def stats(self) -> TransactionStats:
        return self._transactions.stats

    @property
    def orphan_responses(self) -> int:
        """``coraza-res`` messages inspected without their request's transaction."""
        return self._responses.orphans

    def has_open_transaction(self, transaction_id: str) -> bool:
        return transaction_id in self._transactions

    def sweep(self) -> int:
        """Close every transaction past its TTL (called every second). Returns the count."""
        return self._transactions.sweep()

    def close_all(self) -> int:
        """Shutdown: run the logging phase of every open transaction and free it."""
        return self._transactions.close_all()

    # ---- request ------------------------------------------------------------------------

    def handle_request(
        self, message: Message, received_at: float, args: Mapping[str, Arg] | None = None
    ) -> Sequence[Action]:
        """Evaluate a ``coraza-req`` message (phases 1 and 2); keep the transaction for the
        response when this app checks responses and the request was not interrupted.

        ``args``: ``messages.args_by_name(message)`` if the caller already has it."""
        return self.request(message, received_at, args).actions

    def request(
        self,
        message: Message,
        received_at: float,
        args: Mapping[str, Arg] | None = None,
        *,
        keep_for_response: bool = True,
        known: frozenset[str] = REQUEST_ARGS,
    ) -> Outcome:
        """``handle_request``'s outcome. ``keep_for_response=False``: close the transaction
        after the request phases whatever ``response_check`` says (``check-request`` has no
        response message). ``known``: the argument names the message's dialect reads (the
        debug line lists the others as ignored)."""
        if args is None:
            args = args_by_name(message)
        if debug_enabled():
            # built per message at debug only: kept on self, it would make a reference cycle
            handle = traced(self._request, known, self._log, self._clock)
            return handle(message, received_at, args, keep_for_response)
        return self._request(message, received_at, args, keep_for_response)

    def _request(
        self,
        message: Message,
        received_at: float,
        args: Mapping[str, Arg],
        keep_for_response: bool,
    ) -> Outcome:
        # shed on arrival: a request that would wait past the budget is answered now,
        # before it costs a parse and an engine job, and the queue stays about one budget
        # long (the engine threads shed a job still waiting at its deadline: the safety net)
        # plus the time it already spent on the hub since it was read: when the hub is
        # the bottleneck (thousands of connections), the engine queue stays short while
        # messages age before they reach it, and their responses would then be shed
        # after their requests cost engine time (docs/performance.md "Overload")
        expected = (self._clock() - received_at) + self._scheduler.expected_wait_s()
        if expected > self._processing_budget_s:
            self._transactions.shed += 1
            raise OverloadedError(
                f"expected wait {expected:.3f}s exceeds {self._processing_budget_s:.3f}s"
            )
        try:
            parsed = parse_request_message(message, generate_transaction_id, args)
        except MalformedArgumentError as exc:
            raise MalformedMessageError(str(exc)) from exc
        request = parsed.request
        transaction_id = request.transaction_id
        outcome = Outcome(
            transaction_id=transaction_id,
            id_generated=parsed.id_generated,
            detect_only=parsed.detect_only,
        )
        keep = keep_for_response and self.config.response_check
        self._transactions.run(
            lambda outcome, started: self._evaluate_request(
                parsed, keep, outcome, received_at, started
            ),
            outcome,
        )
        if outcome.kept is not None and not self._transactions.take_back(outcome.kept):
            outcome.kept, outcome.opened = None, False
        verdict = self._transactions.settle(outcome, transaction_id)
        if request.body_truncated:
            self._report_truncated_body(request, outcome)
        if outcome.kept is not None:
            outcome.cache = CACHE_STORED
            self._transactions.store(transaction_id, outcome.kept)
        else:
            outcome.cache = CACHE_NOT_STORED
        self._report(message.name, transaction_id, False, verdict)
        outcome.actions = verdict_actions(
            verdict,
            transaction_id=transaction_id,
            export_rule_ids=parsed.export_rule_ids or self.config.export_rule_ids,
            detect_only=parsed.detect_only,
        )
        return outcome

    def _evaluate_request(
        self,
        parsed: RequestMessage,
        keep: bool,
        outcome: Outcome,
        received_at: float,
        started: float,
    ) -> None:
        # Its engine job runs on an engine thread. Never raises: the hub needs to know what was
        # opened. (Its budget was checked on arrival, just before.)
        request: RequestInfo = parsed.request
        try:
            transaction = self._engine.new_transaction(request.transaction_id)
        except Exception as exc:
            outcome.error = exc
            return
        outcome.opened = True
        try:
            # the engine threads shed it too if it waits for one past the budget
            verdict = transaction.process_request(
                request,
                deadline=self._deadline(received_at),
                close_when=_request_close_when(keep, parsed.detect_only),
            )
        except DeadlineExceededError:
            outcome.shed = True
        except Exception as exc:
            outcome.error = exc
        else:
            if request.body_truncated and self._engine.rejects_truncated_body:
                verdict = truncated_body_verdict(verdict)
            outcome.verdict = verdict
            if keep and (parsed.detect_only or not verdict.interrupted):
                self._transactions.hand_over(request.transaction_id, transaction)
                outcome.kept = transaction
                return
        # done by its job already, unless the job failed
        self._transactions.close_quietly(request.transaction_id, transaction)
        outcome.closed = True

    def _report_truncated_body(self, request: RequestInfo, outcome: Outcome) -> None:
        # docs/haproxy.md "Request bodies": never judged as if complete, and never silently
        received, declared = len(request.body), request.declared_body_size or 0
        outcome.truncated_body = (received, declared)
        result = (
            "refused (413, SecRequestBodyLimitAction Reject)"
            if self._engine.rejects_truncated_body
            else "judged on that part only (SecRequestBodyLimitAction ProcessPartial)"
        )
        self._warnings.every_minute(
            "body_truncated",
            f"a request body reached the agent cut short ({received} of {declared} bytes, "
            f"HAProxy's tune.bufsize or the body argument's cap): {result}",
        )

    # ---- response -----------------------------------------------------------------------

    def handle_response(
        self, message: Message, received_at: float, args: Mapping[str, Arg] | None = None
    ) -> Sequence[Action]:
        """Evaluate a ``coraza-res`` message (phases 3 and 4) in its request's transaction,
        then close it (``responses``). ``args`` as for ``handle_request``."""
        if args is None:
            args = args_by_name(message)
        if debug_enabled():
            handle = traced(self._response, RESPONSE_ARGS, self._log, self._clock)
            return handle(message, received_at, args).actions
        return self._response(message, received_at, args).actions

    def _response(self, message: Message, received_at: float, args: Mapping[str, Arg]) -> Outcome:
        outcome = self._responses.handle(message, received_at, args)
        if outcome.verdict is not None:
            self._report(message.name, outcome.transaction_id, outcome.orphan, outcome.verdict)
        return outcome

    # ---- helpers ------------------------------------------------------------------------

    def _deadline(self, received_at: float) -> float:
        # received_at is time.monotonic() in production, the engine threads' clock too
        return received_at + self._processing_budget_s

    def _report(
        self, message_name: str, transaction_id: str, orphan: bool, verdict: Verdict
    ) -> None:
        # docs/architecture.md "Rule-match log records": at most one record per message, only
        # when a sink takes its level (docs/performance.md change 30); it carries the
        # RuleMatch objects, which only a JSON sink turns into dicts (change 46)
        if verdict.matches:
            level = rule_match_level(verdict.matches)
            if level_enabled(_LEVEL_NO[level]):
                self._log.bind(
                    tx=transaction_id, kind="rule_match", matches=list(verdict.matches)
                ).log(level, "rules matched")
        if self.observer is not None:
            self.observer(self.config.name, message_name, orphan, verdict)


def _request_close_when(keep: bool, detect_only: bool) -> CloseWhen:
    # docs/compatibility.md "Errors": an interrupted request is closed at once, unless
    # detect-only asks to keep it so that its response can still be correlated (coraza-spoa PR
    # #374); the request's own engine job does it (no close job of its own)
    if not keep:
        return CloseWhen.ALWAYS
    return CloseWhen.NEVER if detect_only else CloseWhen.IF_INTERRUPTED
