"""The applications ``check-request`` messages with ``ignorerules`` run in: per set of ids, a
copy of the application whose rules lack those ids. (Without ``ignorerules`` a check-request
runs in the application itself, which closes its transaction after the request phases:
``Application.request(keep_for_response=False)``.)

``ignorerules`` (the small Python ModSecurity SPOA's ``txn.ignorerules``): libmodsecurity's C
API cannot remove a rule from one transaction (``ctl:ruleRemoveById`` exists only as a rule
action, whose ids are fixed when the rule is parsed; docs/engine.md), so each distinct set of
ids gets its own rule set: the application's directives followed by ``SecRuleRemoveById <ids>``
(ModSecurity reference manual), compiled once, off the hub, by the injected ``compile``. The
ids come from the HAProxy config (a per-frontend ``set-var``), so there are few sets; at most
``MAX_COPIES`` are kept, least recently used dropped first. Requests that arrive while their set
compiles wait for that one compile.

Must not import gevent or the engine binding: compiling and building are injected (runtime).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

from loguru import logger

from coraza_spoa_py.application import Application
from coraza_spoa_py.models import WafEngine
from coraza_spoa_py.outcome import EngineFailureError
from coraza_spoa_py.settings import AppConfig
from coraza_spoa_py.transactions import TransactionStats

# distinct (application, removed ids) copies kept; each with ids is a whole compiled rule set
MAX_COPIES = 16

# an application's config (its directives ending in SecRuleRemoveById) -> a compiled engine
Compile = Callable[[AppConfig], WafEngine]
# config and engine -> an application using the agent's engine scheduler and processing budget
Build = Callable[[AppConfig, WafEngine], Application]


def without_rules(directives: str, removed: tuple[str, ...]) -> str:
    """The directives with the ids removed after every rule is defined (SecRuleRemoveById
    only affects rules defined before it)."""
    ids = " ".join(removed)
    return f"{directives}\n# ignorerules of check-request messages\nSecRuleRemoveById {ids}\n"


class CheckRequestApps:
    """``apps(application, removed_ids) -> Application``: the agent's ``check_request_app``."""

    def __init__(self, compile: Compile, build: Build, limit: int = MAX_COPIES) -> None:
        self._compile = compile
        self._build = build
        self._limit = limit
        self._copies: OrderedDict[tuple[Application, tuple[str, ...]], Application] = OrderedDict()
        # a set being compiled: later requests for it wait on its event
        self._pending: dict[tuple[Application, tuple[str, ...]], threading.Event] = {}
        # counters of copies already dropped, so the agent's totals never go backwards
        self.dropped = TransactionStats()

    def copies(self) -> list[Application]:
        """The copies kept now (the agent counts their transactions with its own)."""
        return list(self._copies.values())

    def __call__(self, application: Application, removed: tuple[str, ...]) -> Application:
        key = (application, removed)
        while True:
            found = self._copies.get(key)
            if found is not None:
                self._copies.move_to_end(key)
                return found
            pending = self._pending.get(key)
            if pending is None:
                break
            pending.wait()
            if key not in self._copies:
                raise EngineFailureError(f"rules without {' '.join(removed)} did not compile")
        done = self._pending[key] = threading.Event()
        try:
            copy = self._make(application, removed)
            self._copies[key] = copy
            while len(self._copies) > self._limit:
                _, old = self._copies.popitem(last=False)
                self._drop(old)
            return copy
        finally:
            del self._pending[key]
            done.set()

    def _drop(self, copy: Application) -> None:
        # a copy holds no open transaction (check-request keeps none): only its counters remain
        self.dropped += copy.stats.counts()

    def _make(self, application: Application, removed: tuple[str, ...]) -> Application:
        config = application.config
        try:
            directives = without_rules(config.directives, removed)
            engine = self._compile(replace(config, directives=directives))
        except Exception as exc:
            logger.bind(app=config.name).error(
                "rules without {} did not compile: {}", " ".join(removed), exc
            )
            raise EngineFailureError(f"rules without {' '.join(removed)}: {exc}") from exc
        logger.bind(app=config.name).info(
            "compiled the rules without {} for check-request messages", " ".join(removed)
        )
        copy = self._build(config, engine)
        # its verdicts count with the application's (metrics)
        copy.observer = application.observer
        return copy
