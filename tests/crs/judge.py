"""Decide whether one stage passed, from what was observed for THAT transaction.

The observation carries the rule ids the agent (or the engine, in direct mode) reported for
the stage's transaction — request and response phases — instead of a scraped log. ftw and
go-ftw search log lines with regexes such as ``id "920100"``; we give them one synthetic line
per matched rule in ModSecurity's own form, ``[id "920100"]``, so the files' regexes work
unchanged (and a regex that never matched a real ModSecurity line, like ``id:921140``, still
never matches). A log regex that names no rule id (a message text, e.g. ``Invalid HTTP
Request Line``) is searched in the messages of the rules that matched, one ``[msg "..."]``
line each, when the mode knows them (``Observation.messages``); when it does not, the stage is
*skipped*, never passed.

``observe_with_retry`` is go-ftw's ``retry_once``: a failing stage is observed once more.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tests.crs.loader import StageOutput

Outcome = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class Observation:
    status: int | None = None  # None: no HTTP response (error)
    rule_ids: tuple[int, ...] = ()
    response: bytes = b""
    error: str | None = None  # sender error (timeout, garbage) — ftw's TestError
    # txn.coraza.error seen on the response: the agent (>= 1000) or HAProxy's SPOE (< 256,
    # 256 + N) could not process the stage, so its rule ids are not the rules' answer
    agent_error: int | None = None
    # the messages (``msg``) of the rules that matched in this transaction, when the mode can
    # tell them (the engine's verdict; the agent's rule-match log); None: not known
    messages: tuple[str, ...] | None = None
    transaction_id: str = ""  # the agent's id of the transaction (through HAProxy)


@dataclass(frozen=True)
class Judgement:
    outcome: Outcome
    reasons: tuple[str, ...] = field(default=())


RULE_ID_PATTERN = re.compile(r"\d{6}")


def log_lines(rule_ids: Sequence[int], messages: Sequence[str] = ()) -> list[str]:
    return [f'[id "{rule_id}"]' for rule_id in rule_ids] + [f'[msg "{m}"]' for m in messages]


def observe_with_retry(observe: Callable[[], Observation], expected: StageOutput) -> Observation:
    """go-ftw ``retry_once``: a stage that fails is observed again, and the second try counts."""
    seen = observe()
    if expected.retry_once and judge(expected, seen).outcome == "failed":
        seen = observe()
    return seen


def judge(expected: StageOutput, seen: Observation) -> Judgement:
    if expected.expect_error:
        # ftw 1.x run_stage: with expect_error only the error itself is checked
        if seen.error is not None:
            return Judgement("passed")
        return Judgement("failed", (f"expected an error, got status {seen.status}",))
    if seen.error is not None:
        return Judgement("failed", (f"request failed: {seen.error}",))
    if seen.agent_error is not None:
        return Judgement("failed", (f"txn.coraza.error = {seen.agent_error}",))
    if seen.messages is None:
        for regex in (*expected.log_regexes, *expected.no_log_regexes):
            if not RULE_ID_PATTERN.search(regex):
                reason = f"log regex {regex!r} names no rule id and this mode logs no messages"
                return Judgement("skipped", (reason,))

    reasons: list[str] = []
    lines = log_lines(seen.rule_ids, seen.messages or ())
    for regex in expected.log_regexes:
        if not any(re.search(regex, line) for line in lines):
            reasons.append(f"log_contains {regex!r} not found")
    for regex in expected.no_log_regexes:
        if any(re.search(regex, line) for line in lines):
            reasons.append(f"no_log_contains {regex!r} found")
    found = set(seen.rule_ids)
    missing = [i for i in expected.expect_ids if i not in found]
    if missing:
        reasons.append(f"expected ids not found: {missing}")
    unwanted = [i for i in expected.no_expect_ids if i in found]
    if unwanted:
        reasons.append(f"unexpected ids found: {unwanted}")
    if expected.status and seen.status not in expected.status:
        reasons.append(f"status {seen.status}, expected {list(expected.status)}")
    if expected.response_contains is not None and not re.search(
        expected.response_contains, seen.response.decode("utf-8", "replace")
    ):
        reasons.append(f"response_contains {expected.response_contains!r} not found")
    if reasons:
        return Judgement("failed", tuple(reasons))
    return Judgement("passed")
