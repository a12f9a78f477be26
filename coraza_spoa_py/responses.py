"""One application's ``coraza-res`` handling: the response phases (3 and 4) in its request's
transaction, taken from the open transactions and closed after, or, when that transaction is
not here, an orphan response.

An orphan (another agent or process saw the request, or its transaction expired or was evicted)
is inspected on its own rather than failed (docs/operations.md "Several agents"): a fresh
transaction runs phases 1-2 with the request facts the message carries (rule sets initialise
their TX variables there: CRS 901xxx sets the paranoia level and the outbound threshold,
without which its 95x rules skip themselves), then phases 3-4. The stand-in request phases'
verdict is not ours to give: the request was answered elsewhere. ``orphan_actions`` is the one
place that decides which transaction-wide variables such an answer sets.

Must not route messages, import gevent or the engine binding (the engine is injected).
"""

from __future__ import annotations

from collections.abc import Mapping

from coraza_spoa_py.messages import (
    MalformedArgumentError,
    ResponseMessage,
    parse_response_message,
    request_info,
)
from coraza_spoa_py.models import (
    CloseWhen,
    DeadlineExceededError,
    RequestInfo,
    ResponseInfo,
    Verdict,
    WafEngine,
    WafTransaction,
)
from coraza_spoa_py.outcome import (
    CACHE_FOUND,
    CACHE_NOT_FOUND,
    MalformedMessageError,
    Outcome,
    TransactionNotFoundError,
)
from coraza_spoa_py.settings import AppConfig
from coraza_spoa_py.spop.events import Action, Arg, Message
from coraza_spoa_py.transactions import Transactions, Warnings
from coraza_spoa_py.verdicts import (
    VAR_ANOMALY_SCORE,
    VAR_RULE_IDS,
    VAR_RULES_HIT,
    orphan_response_verdict,
    verdict_actions,
)

# the variables that describe the whole transaction so far (models.Verdict), not one message
_TRANSACTION_TOTALS = frozenset({VAR_RULES_HIT, VAR_ANOMALY_SCORE, VAR_RULE_IDS})


class Responses:
    """``handle(message, received_at, args) -> Outcome`` for one application's responses."""

    def __init__(
        self,
        config: AppConfig,
        engine: WafEngine,
        transactions: Transactions,
        *,
        processing_budget_s: float,
        warnings: Warnings,
    ) -> None:
        # no reference back to the application: it would make a reference cycle, and an
        # application's engine and transactions must be freed when it is dropped, not by the
        # garbage collector at some later point
        self._config = config
        self._engine = engine
        self._transactions = transactions
        self._budget_s = processing_budget_s
        self._warnings = warnings
        # coraza-res messages inspected without their request's transaction
        self.orphans = 0

    def handle(self, message: Message, received_at: float, args: Mapping[str, Arg]) -> Outcome:
        if not self._config.response_check:
            self._warnings.every_minute(
                "response_check_off",
                "coraza-res received but response_check is false: answering without a verdict",
            )
            return Outcome(actions=[], response_check_off=True)
        try:
            parsed = parse_response_message(message, args)
        except MalformedArgumentError as exc:
            raise MalformedMessageError(str(exc)) from exc
        transaction_id = parsed.response.transaction_id
        if not transaction_id:
            raise TransactionNotFoundError("response message without id")
        # popping takes the transaction away from the sweeper: from here on this message owns
        # it and must close it
        transaction = self._transactions.pop(transaction_id)
        outcome = Outcome(
            transaction_id=transaction_id,
            cache=CACHE_NOT_FOUND if transaction is None else CACHE_FOUND,
        )
        if transaction is None and self._config.orphan_responses == "reject":
            raise TransactionNotFoundError(f"no open transaction {transaction_id!r}", outcome)
        # in flight until answered, found or orphan: a retired application holding none is
        # dropped (Agent.sweep), and this job's opened/closed counts would go with it
        self._transactions.in_flight += 1
        try:
            if transaction is not None:
                self._transactions.run(
                    lambda outcome, started: self._evaluate(
                        parsed.response, transaction, outcome, received_at, started
                    ),
                    outcome,
                )
            else:
                self._orphan(parsed, args, outcome, received_at)
        finally:
            self._transactions.in_flight -= 1
        verdict = self._transactions.settle(outcome, transaction_id)
        export_rule_ids = parsed.export_rule_ids or self._config.export_rule_ids
        if outcome.before is not None:
            outcome.actions = orphan_actions(
                verdict, outcome.before, export_rule_ids=export_rule_ids,
                detect_only=parsed.detect_only,
            )  # fmt: skip
        else:
            outcome.actions = verdict_actions(
                verdict,
                transaction_id=None,
                export_rule_ids=export_rule_ids,
                detect_only=parsed.detect_only,
            )
        return outcome

    def _evaluate(
        self,
        response: ResponseInfo,
        transaction: WafTransaction,
        outcome: Outcome,
        received_at: float,
        started: float,
    ) -> None:
        # its engine job runs on an engine thread; never raises
        outcome.closed = True
        try:
            if started - received_at > self._budget_s:
                outcome.shed = True
                return
            outcome.verdict = transaction.process_response(
                response, deadline=received_at + self._budget_s, close_when=CloseWhen.ALWAYS
            )
        except DeadlineExceededError:
            outcome.shed = True
        except Exception as exc:
            outcome.error = exc
        finally:
            # a no-op when its job closed it (CloseWhen.ALWAYS); not when the call failed early
            self._transactions.close_quietly(response.transaction_id, transaction)

    def _orphan(
        self, parsed: ResponseMessage, args: Mapping[str, Arg], outcome: Outcome, received_at: float
    ) -> None:
        try:
            request = request_info(args, parsed.response.transaction_id, orphan=True)
        except MalformedArgumentError as exc:
            raise MalformedMessageError(str(exc), outcome) from exc
        self.orphans += 1
        outcome.orphan = True
        self._transactions.run(
            lambda outcome, started: self._evaluate_orphan(
                request, parsed.response, outcome, received_at, started
            ),
            outcome,
        )

    def _evaluate_orphan(
        self,
        request: RequestInfo,
        response: ResponseInfo,
        outcome: Outcome,
        received_at: float,
        started: float,
    ) -> None:
        # like _evaluate: never raises; a fresh transaction, phases
        # 1-2 then 3-4, then closed
        if started - received_at > self._budget_s:
            outcome.shed = True
            return
        transaction_id = response.transaction_id
        try:
            transaction = self._engine.new_transaction(transaction_id)
        except Exception as exc:
            outcome.error = exc
            return
        outcome.opened = outcome.closed = True
        deadline = received_at + self._budget_s
        try:
            outcome.before = transaction.process_request(request, deadline=deadline)
            outcome.verdict = transaction.process_response(
                response, deadline=deadline, close_when=CloseWhen.ALWAYS
            )
        except DeadlineExceededError:
            outcome.shed = True
        except Exception as exc:
            outcome.error = exc
        finally:
            self._transactions.close_quietly(transaction_id, transaction)


def orphan_actions(
    verdict: Verdict, before: Verdict, *, export_rule_ids: bool, detect_only: bool
) -> list[Action]:
    """The SET-VARs of an orphan's answer. One that matched nothing in its response phases
    leaves the request's transaction-wide variables as its agent set them (HAProxy's log line
    keeps the request's ids and score). One that matched reports its own, without what the
    stand-in ``GET /`` matched (verdicts.orphan_response_verdict)."""
    response_side = orphan_response_verdict(verdict, before)
    actions = verdict_actions(
        response_side,
        transaction_id=None,
        export_rule_ids=export_rule_ids,
        detect_only=detect_only,
    )
    if response_side.matched_rule_ids:
        return actions
    return [action for action in actions if action.name not in _TRANSACTION_TOTALS]
