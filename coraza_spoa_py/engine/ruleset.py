"""Loading rules into libmodsecurity: ``load_engine`` resolves an application's directives
(``rules``) and compiles them into one ``RulesSet`` (``ModSecEngine``), refusing a set that
loaded fewer rules than its files define (the rule-count guard, docs/engine.md "Rule-count
guard"). It must not log, read configuration files, or touch gevent.
"""

from __future__ import annotations

import functools
import os
import re
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from coraza_spoa_py.engine import rules, waf_text
from coraza_spoa_py.engine.binding import (
    CHAR_PTR_PTR,
    RUN_HERE,
    c_string,
    ffi,
    native_library,
)
from coraza_spoa_py.engine.transaction import ModSecTransaction
from coraza_spoa_py.models import EngineScheduler
from coraza_spoa_py.settings import AppConfig, RulePaths


class RulesError(Exception):
    """The rules did not load. ``problems`` holds one "file:line: message" string each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def load_engine(
    app: AppConfig, rule_paths: RulePaths, scheduler: EngineScheduler = RUN_HERE
) -> ModSecEngine:
    """Resolve ``app.directives`` (``rules.resolve``) and load them into a fresh rule set
    whose jobs ``scheduler`` runs.

    Raises ``RulesError`` listing every problem as "file:line: message".
    """
    resolved = rules.resolve(app, rule_paths)
    if resolved.problems:
        raise RulesError(list(resolved.problems))
    return ModSecEngine(resolved, scheduler)


class ModSecEngine:
    """One loaded ``RulesSet``; thread-safe, shared by every transaction of an application.
    ``scheduler`` runs its transactions' engine jobs (``RUN_HERE``: on the calling thread; the
    agent's ``engine_pool.EnginePool``: on the engine threads), fixed when it is built."""

    # nothing can be set on an engine after it is built (an ``engine.runner = ...`` of old
    # code fails instead of being ignored)
    __slots__ = (
        "__weakref__",
        "_finalizer",
        "native",
        "rejects_truncated_body",
        "rule_count",
        "rules_set",
        "scheduler",
        "warnings",
    )

    def __init__(
        self, resolved: rules.ResolvedRules, scheduler: EngineScheduler = RUN_HERE
    ) -> None:
        self.native = native_library()
        lib = self.native.lib
        self.rules_set = lib.msc_create_rules_set()
        # Freed when the last transaction (which holds a reference to us) is gone. Not at
        # interpreter exit: transactions still alive then would touch freed rules.
        self._finalizer = weakref.finalize(self, lib.msc_rules_cleanup, self.rules_set)
        self._finalizer.atexit = False
        self.scheduler = scheduler
        self.warnings: tuple[str, ...] = resolved.warnings
        self.rejects_truncated_body: bool = resolved.rejects_truncated_body
        count = self._add(resolved)
        _check_rule_count(count, resolved, self._finalizer)
        self.rule_count: int = count

    def _add(self, resolved: rules.ResolvedRules) -> int:
        count, message = _rules_add(self.native.lib, self.rules_set, resolved.text)
        if count < 0 or message:
            self._finalizer()
            raise RulesError(waf_text.rules_problems(message, resolved))
        return count

    def new_transaction(self, transaction_id: str) -> ModSecTransaction:
        return ModSecTransaction(self, transaction_id)

    def close(self) -> None:
        """Free the rule set now; only once no transaction uses it any more."""
        self._finalizer()


def _rules_add(lib: Any, rules_set: Any, text: str) -> tuple[int, str]:
    """``msc_rules_add``: the count it returns and its error text ("" when none). Rule files
    are read with surrogateescape (rules: not every file is UTF-8), and go back to the
    engine as the bytes they were."""
    error = ffi.new(CHAR_PTR_PTR)
    count = int(lib.msc_rules_add(rules_set, text.encode(errors="surrogateescape"), error))
    message = ""
    if error[0] != ffi.NULL:
        message = c_string(error[0]).strip()
        lib.free(error[0])
    return count, message


def _count_loaded(text: str) -> int | None:
    """How many rules (and markers) the engine loads from ``text`` in a rule set of its
    own; None when it refuses the text."""
    lib = native_library().lib
    scratch = lib.msc_create_rules_set()
    try:
        count, message = _rules_add(lib, scratch, text)
    finally:
        lib.msc_rules_cleanup(scratch)
    return None if message or count < 0 else count


@functools.cache
def _marker_weight() -> int:
    # libmodsecurity adds a SecMarker to every phase and counts each copy as a rule
    return _count_loaded("SecMarker RULE_COUNT_PROBE\n") or 0


def _expected_count(directives: Sequence[rules.Directive]) -> int:
    defined, markers = rules.count_defined(directives)
    return defined + markers * _marker_weight()


def _check_rule_count(
    loaded: int, resolved: rules.ResolvedRules, release: Callable[[], Any]
) -> None:
    """Refuse a rule set that loaded fewer rules than its files define (docs/engine.md
    "Rule-count guard"): libmodsecurity's parser can stop early without an error (a quote
    left open runs to the end of the file), and a WAF that silently lost its rules must
    never start or validate."""
    expected = _expected_count(resolved.directives)
    if loaded >= expected:
        return
    release()
    raise RulesError([_where_loading_stopped(resolved.directives, loaded, expected)])


# operators that read a data file, which the engine looks for beside the rule file
_DATA_FILE = re.compile(r"(@(?:pmFromFile|pmf|ipMatchFromFile|ipMatchF)\s+)([^\s\"/][^\s\"]*)")


def _standalone(directive: rules.Directive) -> str:
    # one directive loaded as text, away from its file: its data files by absolute path
    if not directive.file.startswith("/"):
        return directive.text
    folder = os.path.dirname(directive.file)
    return _DATA_FILE.sub(lambda m: m[1] + os.path.join(folder, m[2]), directive.text)


def _continues_chain(directives: Sequence[rules.Directive], end: int) -> bool:
    return end < len(directives) and directives[end].continues_chain


def _where_loading_stopped(
    directives: Sequence[rules.Directive], loaded: int, expected: int
) -> str:
    # Binary search for the first directive whose prefix loads short (or not at all): once a
    # directive has swallowed what follows it, every longer prefix stays short.
    def short(end: int) -> bool:
        prefix = directives[:end]
        # a blank line between directives: a SecRule without actions takes the next line as
        # its actions otherwise
        count = _count_loaded("\n\n".join(_standalone(d) for d in prefix) + "\n")
        return count is None or count < _expected_count(prefix)

    # a prefix may only end where a rule ends: after the whole chain
    ends = [i for i in range(1, len(directives) + 1) if not _continues_chain(directives, i)]
    culprit = None  # when only the files together load short: name no line
    if ends and short(ends[-1]):
        low, high = 0, len(ends) - 1
        while low < high:
            middle = (low + high) // 2
            if short(ends[middle]):
                high = middle
            else:
                low = middle + 1
        # the first rule lost: it starts after the previous prefix
        first = ends[low - 1] if low > 0 else 0
        culprit = next(
            (d for d in directives[first : ends[low]] if d.rules or d.markers),
            directives[ends[low] - 1],
        )
    summary = (
        f"the rules stop loading here: libmodsecurity loaded {loaded} of the {expected} rules "
        "and markers the files define, without an error"
    )
    if culprit is None:
        return f"<rules>:0: {summary}"
    before = directives.index(culprit) - 1
    if before >= 0:
        previous = directives[before]
        summary += (
            f"; does the directive before it ({previous.file}:{previous.line}) leave a quote open?"
        )
    return f"{culprit.file}:{culprit.line}: {summary}"
