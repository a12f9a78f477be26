"""Every verdict rule: what the engine said → a ``Verdict`` (``phase_verdict``: the counted
rule ids, the deny/drop/redirect mapping, the body-limit statuses), a ``Verdict`` → the SET-VAR
actions the agent answers HAProxy with, and our error codes.

Variable names, SPOP types and order are coraza-spoa's (docs/compatibility.md "Variables we set")
plus ``fail`` and ``error`` (Part 1); HAProxy adds the ``txn.coraza.`` prefix (docs/protocol.md
"Variable names"). docs/haproxy.md documents every one of them.

Pure: no logging, no engine. The engine adapter (``engine.transaction``) reports only what the
engine said; ``application`` decides what happens to a message; this module spells both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from enum import IntEnum
from functools import lru_cache
from typing import Any

from coraza_spoa_py.models import RuleMatch, Verdict, value_record
from coraza_spoa_py.spop.events import Action, DataType, SetVar, VarScope


class ErrorCode(IntEnum):
    """What we put in ``txn.coraza.error`` (docs/compatibility.md "Errors"; docs/haproxy.md)."""

    MALFORMED_MESSAGE = 1001
    NO_APPLICATION = 1002
    ENGINE_FAILURE = 1003
    TRANSACTION_NOT_FOUND = 1004
    OVERLOADED = 1005
    UNKNOWN_MESSAGE = 1006


# what the server answers for a handler that raised: never silence
ENGINE_FAILURE_ERROR = int(ErrorCode.ENGINE_FAILURE)


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
ACTION_DROP = "drop"
ACTION_REDIRECT = "redirect"
# Coraza's defaults, which coraza-spoa users see (docs/compatibility.md "Variables we set")
DEFAULT_DENY_STATUS = 403
DEFAULT_REDIRECT_STATUS = 302
# a body over its limit interrupts with no rule: coraza-spoa reports 413 for a request body,
# 500 for a response body (docs/compatibility.md "Variables we set")
REQUEST_BODY_LIMIT_STATUS = 413
RESPONSE_BODY_LIMIT_STATUS = 500
LAST_REQUEST_PHASE = 2
# docs/compatibility.md "Variables we set": rules_hit / rule_ids count only the CRS attack and
# blocking-evaluation ranges and the "custom attack" range; 100000-189999 is deliberately left out.
COUNTED_RULE_ID_RANGES = ((910_000, 960_000), (190_000, 200_000))


(_CRS_LOW, _CRS_HIGH), (_CUSTOM_LOW, _CUSTOM_HIGH) = COUNTED_RULE_ID_RANGES


def is_counted_rule_id(rule_id: int) -> bool:
    """Whether coraza-spoa counts this id in ``rules_hit`` / ``rule_ids``."""
    # two comparisons, not a generator over the ranges: called for every match of every
    # verdict (docs/performance.md change 48)
    return _CRS_LOW <= rule_id < _CRS_HIGH or _CUSTOM_LOW <= rule_id < _CUSTOM_HIGH


@value_record
class Interruption:
    """What the engine said when it interrupted a phase group: its intervention's ``status``
    and ``url``, the ``phase``, whether a body limit made it (``body_limit``: no rule), and the
    disruptive ``rule``'s match with the action that rule ran (``rule_action``: "deny", "drop",
    "redirect", or "" for any other). ``rule.rule_id`` is 0 when no rule logged one (a body
    limit, or a rule with ``nolog``, docs/engine.md)."""

    status: int
    url: str
    phase: int
    body_limit: bool
    rule: RuleMatch
    rule_action: str = ""


def phase_verdict(
    matches: Sequence[RuleMatch],
    new_from: int,
    anomaly_score: int,
    interruption: Interruption | None,
    engine_times: tuple[float, float] | None = None,
) -> Verdict:
    """The verdict of a phase group: ``matches`` are every rule match of the transaction so
    far, those from ``new_from`` on this phase group's; ``anomaly_score`` the engine's inbound
    score where the request phases ended."""
    if not matches and interruption is None:
        # a clean phase group of a transaction that matched nothing (every clean GET): the
        # defaults are its ids, counts, lines and matches
        return Verdict(anomaly_score=anomaly_score, engine_times=engine_times)
    new_matches = tuple(matches[new_from:])
    # id 0: an intervention that no rule made (the body limits)
    matched_ids = tuple(m.rule_id for m in matches if m.rule_id)
    rules_hit = sum(1 for m in matches if m.msg and is_counted_rule_id(m.rule_id))
    common: dict[str, Any] = {
        "matched_rule_ids": matched_ids,
        "rules_hit": rules_hit,
        "anomaly_score": anomaly_score,
        "log_lines": tuple(m.raw for m in new_matches),
        "matches": new_matches,
        "engine_times": engine_times,
    }
    if interruption is None:
        return Verdict(**common)
    return Verdict(
        interrupted=True,
        status=_interruption_status(interruption),
        action=_interruption_action(interruption),
        redirect_url=interruption.url,
        rule_id=interruption.rule.rule_id,
        **common,
    )


def truncated_body_verdict(verdict: Verdict) -> Verdict:
    """A body cut short under ``SecRequestBodyLimitAction Reject``: what Coraza answers past
    ``SecRequestBodyLimit`` (deny, status 413, rule 0; docs/haproxy.md "Request bodies"),
    unless a rule already interrupted on the part that arrived (its verdict says more)."""
    if verdict.interrupted:
        return verdict
    return replace(
        verdict, interrupted=True, status=REQUEST_BODY_LIMIT_STATUS, action=ACTION_DENY, rule_id=0
    )


def orphan_response_verdict(verdict: Verdict, before: Verdict) -> Verdict:
    """An orphan's response verdict without what its stand-in request phases matched
    (``before``): the transaction-wide ids and counts (models.Verdict) would otherwise report
    rules like CRS 920280 "missing Host header" that only the stand-in ``GET /`` triggered, and
    its inbound score. The score stays only if the response phases reported one of their own."""
    return replace(
        verdict,
        matched_rule_ids=verdict.matched_rule_ids[len(before.matched_rule_ids) :],
        rules_hit=verdict.rules_hit - before.rules_hit,
        anomaly_score=0 if verdict.anomaly_score == before.anomaly_score else verdict.anomaly_score,
    )


def _interruption_status(interruption: Interruption) -> int:
    if not interruption.body_limit:
        return interruption.status
    if interruption.phase <= LAST_REQUEST_PHASE:
        return REQUEST_BODY_LIMIT_STATUS
    return RESPONSE_BODY_LIMIT_STATUS


def _interruption_action(interruption: Interruption) -> str:
    # redirect: the intervention has the URL; drop or deny: the rule's own action
    # (libmodsecurity 3.0.9 reports both as 403 "Access denied"; msc_glue_rm.cc reads which
    # one ran)
    if interruption.url:
        return ACTION_REDIRECT
    if interruption.rule_action == ACTION_DROP:
        return ACTION_DROP
    return ACTION_DENY


def _set(name: str, value: int | str | bytes) -> SetVar:
    # docs/compatibility.md "Errors": numbers as INT64 (coraza-spoa's types), text as STRING, even
    # when we hold it as bytes (the id HAProxy sent, returned byte for byte)
    kind = type(value)
    if kind is int:
        return _int_set_var(name, value)
    if kind is str:
        return _text_set_var(name, value)
    data_type = DataType.INT64 if isinstance(value, int) else DataType.STRING
    return SetVar(VarScope.TRANSACTION, name, value, data_type)


@lru_cache(maxsize=1024)
def _int_set_var(name: str, value: int) -> SetVar:
    # Most integer SET-VARs repeat (fail=0, rules_hit=0, anomaly_score=0 on every clean
    # message); a SetVar is frozen, so one object serves them all instead of a frozen
    # dataclass built per variable (docs/performance.md change 28). Exact ints only: True == 1
    # would share a key with 1.
    return SetVar(VarScope.TRANSACTION, name, value, DataType.INT64)


@lru_cache(maxsize=1024)
def _text_set_var(name: str, value: str) -> SetVar:
    # a blocked request's action ("deny", "drop", "redirect") and data ("", or a redirect
    # URL) repeat as the integers do (docs/performance.md change 48); a URL a rule built from
    # the request (a macro) or an exported rule-id list may not, and the LRU bound keeps those
    # to 1,024 entries; the transaction id, bytes, is never cached
    return SetVar(VarScope.TRANSACTION, name, value, DataType.STRING)


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
