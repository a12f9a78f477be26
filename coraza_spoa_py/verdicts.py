"""What the agent answers HAProxy: a ``Verdict`` as SET-VAR actions, and our error codes.

Variable names, SPOP types and order are coraza-spoa's (docs/compatibility.md "Variables we set")
plus ``fail`` and ``error`` (Part 1); HAProxy adds the ``txn.coraza.`` prefix (docs/protocol.md
"Variable names"). docs/haproxy.md documents every one of them.

Pure: no logging, no engine; ``application`` decides what happened, this module only spells it.
"""

from __future__ import annotations

from enum import IntEnum

from coraza_spoa_py.models import Verdict
from coraza_spoa_py.spop.events import Action, DataType, SetVar, VarScope


class ErrorCode(IntEnum):
    """What we put in ``txn.coraza.error`` (docs/compatibility.md "Errors"; docs/haproxy.md)."""

    MALFORMED_MESSAGE = 1001
    NO_APPLICATION = 1002
    ENGINE_FAILURE = 1003
    TRANSACTION_NOT_FOUND = 1004
    OVERLOADED = 1005
    UNKNOWN_MESSAGE = 1006


# ---- variables we set (names without the `txn.coraza.` prefix HAProxy adds, docs/protocol.md
# "Variable names") ----
VAR_ID = "id"
VAR_FAIL = "fail"
VAR_RULES_HIT = "rules_hit"
VAR_ANOMALY_SCORE = "anomaly_score"
VAR_RULE_IDS = "rule_ids"
VAR_STATUS = "status"
VAR_ACTION = "action"
VAR_DATA = "data"
VAR_RULE_ID = "ruleid"
VAR_ERROR = "error"

ACTION_DENY = "deny"
ACTION_REDIRECT = "redirect"
# Coraza's defaults, which coraza-spoa users see (docs/compatibility.md "Variables we set")
DEFAULT_DENY_STATUS = 403
DEFAULT_REDIRECT_STATUS = 302
# docs/compatibility.md "Variables we set": rules_hit / rule_ids count only the CRS attack and
# blocking-evaluation ranges and the "custom attack" range; 100000-189999 is deliberately left out.
COUNTED_RULE_ID_RANGES = ((910_000, 960_000), (190_000, 200_000))


def is_counted_rule_id(rule_id: int) -> bool:
    return any(low <= rule_id < high for low, high in COUNTED_RULE_ID_RANGES)


def _set(name: str, value: int | str | bytes) -> SetVar:
    # docs/compatibility.md "Errors": numbers as INT64 (coraza-spoa's types), text as STRING, even
    # when we hold it as bytes (the id HAProxy sent, returned byte for byte)
    data_type = DataType.INT64 if isinstance(value, int) else DataType.STRING
    return SetVar(VarScope.TRANSACTION, name, value, data_type)


def error_actions(code: ErrorCode) -> list[Action]:
    return [_set(VAR_ERROR, int(code))]


def verdict_actions(
    verdict: Verdict,
    *,
    transaction_id: str | None,
    export_rule_ids: bool,
    detect_only: bool,
) -> list[Action]:
    """SET-VAR actions for a verdict, in coraza-spoa's order (docs/compatibility.md "Variables we
    set") plus
    ``fail`` (Part 1). ``transaction_id`` is given on the request only; ``detect_only`` reports
    the metrics but never a blocking verdict."""
    actions: list[Action] = []
    if transaction_id is not None:
        # the id may come from HAProxy as any bytes: send back exactly what it sent (latin-1
        # round-trips every byte)
        actions.append(_set(VAR_ID, transaction_id.encode("latin-1")))
    blocking = verdict.interrupted and not detect_only
    actions.append(_set(VAR_FAIL, 1 if blocking else 0))
    actions.append(_set(VAR_RULES_HIT, verdict.rules_hit))
    actions.append(_set(VAR_ANOMALY_SCORE, verdict.anomaly_score))
    if export_rule_ids:
        counted = [
            str(rule_id) for rule_id in verdict.matched_rule_ids if is_counted_rule_id(rule_id)
        ]
        actions.append(_set(VAR_RULE_IDS, ",".join(counted)))
    if blocking:
        action = verdict.action or ACTION_DENY
        status = verdict.status
        if not status and action == ACTION_DENY:
            status = DEFAULT_DENY_STATUS
        elif not status and action == ACTION_REDIRECT:
            status = DEFAULT_REDIRECT_STATUS
        actions.append(_set(VAR_STATUS, status))
        actions.append(_set(VAR_ACTION, action))
        actions.append(_set(VAR_DATA, verdict.redirect_url if action == ACTION_REDIRECT else ""))
        actions.append(_set(VAR_RULE_ID, verdict.rule_id))
    return actions
