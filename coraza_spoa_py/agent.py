"""Routes each SPOE message to its application and never leaves HAProxy without an answer.

``coraza-req`` / ``coraza-res`` go to the application named by the ``app`` argument (unknown:
``default_application``, else error 1002; absent: the default, else the only application). An
``app`` with a port (``echo.domain:8080``, from a Host header) routes like the bare host name.
``check-request``, the ModSecurity SPOAs' message, is rewritten by ``modsec_messages`` into a
request message, evaluated by the application without keeping its transaction (there is no
response message) and answered with ``code`` (docs/migrating-from-modsecurity-spoa.md); its
``ignorerules`` go to ``check_request_app`` (a copy of the application without those rules).
An unknown message name is answered with ``error`` = 1006 (and ``code``, so the ModSecurity
dialect's deny rule fires too), logged at warning once per name per interval and counted per
name for the metrics. Every failure of one message becomes ``error`` = our code at once
(docs/compatibility.md "Errors"): never silence, never a crash, never a silent pass. At debug, a
message that reaches no application gets its one line (``message_log``) here; the application writes
that line for all others.

``replace`` swaps the applications atomically on reload and keeps the previous generations
("retired") readable: a response whose request was seen before the reload is still found in
the old application's cache (docs/compatibility.md "Signals and reload"). Retired generations are
swept with the current one and dropped once their caches are empty.

Must not parse arguments beyond ``app``/``id`` (``modsec_messages`` reads ``check-request``),
touch the engine, sockets or gevent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from loguru import logger

from coraza_spoa_py.application import Application
from coraza_spoa_py.message_log import MessageTrace, debug_enabled, describe_message
from coraza_spoa_py.messages import (
    ARG_APP,
    ARG_ID,
    REQUEST_ARGS,
    RESPONSE_ARGS,
    MalformedArgumentError,
    app_name_arg,
    args_by_name,
    transaction_id_arg,
)
from coraza_spoa_py.modsec_messages import (
    ARG_IGNORE_RULES,
    CHECK_REQUEST_ARGS,
    MESSAGE_CHECK_REQUEST,
    error_to_code,
    ignored_rule_ids,
    to_request_message,
    verdict_to_code,
)
from coraza_spoa_py.outcome import MalformedMessageError, MessageError, NoApplicationError, Outcome
from coraza_spoa_py.spop.events import Action, Arg, Message
from coraza_spoa_py.transactions import TransactionStats
from coraza_spoa_py.verdicts import ErrorCode, error_actions

# message names of coraza-spoa's shipped coraza.cfg (docs/compatibility.md "Messages and arguments")
MESSAGE_REQUEST = "coraza-req"
MESSAGE_RESPONSE = "coraza-res"
# one log line per error code per interval at most: under overload every message fails the
# same way and the log must stay readable
ERROR_LOG_INTERVAL_S = 1.0
# unknown message names / application names counted one by one for the metrics; beyond that
# many distinct names (an ``app`` taken from a client's Host header has no bound), "other"
MAX_COUNTED_NAMES = 100
OTHER_NAMES = "other"


class CheckRequestApp(Protocol):
    """The application for a check-request message, given the routed application and the rule
    ids to remove (never empty): its copy without those rules
    (``check_request_apps.CheckRequestApps``, which runtime builds)."""

    dropped: TransactionStats  # counters of copies no longer kept

    def __call__(self, application: Application, removed: tuple[str, ...]) -> Application: ...

    def copies(self) -> list[Application]: ...


@dataclass(frozen=True, slots=True)
class _Generation:
    applications: Mapping[str, Application]
    default_application: str | None


def _validate(applications: Mapping[str, Application], default_application: str | None) -> None:
    if default_application is not None and default_application not in applications:
        raise ValueError(f"default application {default_application!r} is not defined")


class _ErrorLog:
    # Rate-limited warnings per error code; counts what it did not print.
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last: dict[tuple[ErrorCode, str], float] = {}
        self._suppressed: dict[tuple[ErrorCode, str], int] = {}

    def report(self, code: ErrorCode, message_name: str, detail: str, key: str = "") -> None:
        # one line per code (and per ``key``, e.g. an unknown message's name) per interval
        now = self._clock()
        slot = (code, key)
        last = self._last.get(slot)
        if last is not None and now - last < ERROR_LOG_INTERVAL_S:
            self._suppressed[slot] = self._suppressed.get(slot, 0) + 1
            return
        self._last[slot] = now
        suppressed = self._suppressed.pop(slot, 0)
        logger.bind(message=message_name, error=int(code)).warning(
            "message answered with error {}: {}{}",
            int(code),
            detail,
            f" ({suppressed} more since the last report)" if suppressed else "",
        )


class Agent:
    """The server's handler: ``agent.handle(messages, received_at) -> actions``."""

    def __init__(
        self,
        applications: Mapping[str, Application],
        default_application: str | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_retired: Callable[[Application], None] | None = None,
        check_request_app: CheckRequestApp | None = None,
    ) -> None:
        _validate(applications, default_application)
        self._current = _Generation(dict(applications), default_application)
        # newest first; kept until their open transactions are answered or expired
        self._retired: list[_Generation] = []
        self._on_retired = on_retired
        self._clock = clock
        self._errors = _ErrorLog(clock)
        # counters of retired applications already dropped, so totals never go backwards
        self._dropped = TransactionStats()
        self._check_request_app = check_request_app
        # messages answered with an error because of their name / their app, by that name
        self.unknown_messages: dict[str, int] = {}
        self.unknown_applications: dict[str, int] = {}

    @property
    def applications(self) -> Mapping[str, Application]:
        return self._current.applications

    @property
    def default_application(self) -> str | None:
        return self._current.default_application

    def all_applications(self) -> list[Application]:
        """Current applications, then retired ones still holding transactions."""
        found = list(self._current.applications.values())
        for generation in self._retired:
            found.extend(a for a in generation.applications.values() if a not in found)
        if self._check_request_app is not None:
            found.extend(self._check_request_app.copies())
        return found

    # ---- messages -----------------------------------------------------------------------

    def handle(self, messages: Sequence[Message], received_at: float) -> list[Action]:
        """Answer every message of one NOTIFY frame; their actions go into one ACK."""
        actions: list[Action] = []
        for message in messages:
            actions.extend(self._handle_one(message, received_at))
        return actions

    def _handle_one(self, message: Message, received_at: float) -> Sequence[Action]:
        name = message.name
        if name == MESSAGE_CHECK_REQUEST:
            return self._check_request(message, received_at)
        if name != MESSAGE_REQUEST and name != MESSAGE_RESPONSE:
            return self._unknown_message(message)
        # once per message, for routing, parsing and the debug line alike
        args = args_by_name(message)
        try:
            if name == MESSAGE_REQUEST:
                application = self._route(self._current, args)
                return application.handle_request(message, received_at, args)
            return self._route_response(args).handle_response(message, received_at, args)
        except Exception as exc:
            known = REQUEST_ARGS if name == MESSAGE_REQUEST else RESPONSE_ARGS
            return error_actions(self._failed(exc, message, received_at, args, known))

    def _check_request(self, message: Message, received_at: float) -> list[Action]:
        # the ModSecurity dialect: the same request handling, answered with `code`
        try:
            request = to_request_message(message)
        except MalformedArgumentError as exc:
            if debug_enabled():
                # positional or named, we cannot tell which argument is which: all are "known"
                described = describe_message(message, frozenset(a.name for a in message.args))
                code = int(ErrorCode.MALFORMED_MESSAGE)
                logger.debug(f"{described} -> error={code} ({exc})")
            self._errors.report(ErrorCode.MALFORMED_MESSAGE, message.name, str(exc))
            return error_to_code(ErrorCode.MALFORMED_MESSAGE)
        args = args_by_name(request)
        try:
            outcome = self._check(request, received_at, args)
        except Exception as exc:
            return error_to_code(self._failed(exc, request, received_at, args, CHECK_REQUEST_ARGS))
        if outcome.verdict is None:  # never once settled: the application raises instead
            return error_to_code(ErrorCode.ENGINE_FAILURE)
        return verdict_to_code(outcome.verdict, detect_only=outcome.detect_only)

    def _check(self, request: Message, received_at: float, args: Mapping[str, Arg]) -> Outcome:
        try:
            removed = ignored_rule_ids(args.get(ARG_IGNORE_RULES))
        except MalformedArgumentError as exc:
            malformed = MalformedMessageError(str(exc))
            self._trace_unhandled(malformed, received_at, lambda: self._trace_of(request, args))
            raise malformed from exc
        application = self._route(self._current, args)  # _failed writes a routing failure's line
        if removed:
            started = self._clock()
            try:
                if self._check_request_app is None:
                    raise MessageError(f"{ARG_IGNORE_RULES} is not available in this agent")
                application = self._check_request_app(application, removed)
            except Exception as exc:
                self._trace_unhandled(exc, received_at, lambda: self._trace_of(request, args))
                raise
            # the one-time compile of an exclusion set is not a wait for an engine thread: it
            # does not count against the processing budget (load shedding)
            received_at += self._clock() - started
        # check-request has no response message: its transaction is closed after the request
        return application.request(
            request, received_at, args, keep_for_response=False, known=CHECK_REQUEST_ARGS
        )

    @staticmethod
    def _trace_of(request: Message, args: Mapping[str, Arg]) -> MessageTrace:
        return MessageTrace.of(request, CHECK_REQUEST_ARGS, args)

    def _failed(
        self,
        exc: Exception,
        message: Message,
        received_at: float,
        args: Mapping[str, Arg],
        known: frozenset[str],
    ) -> ErrorCode:
        # the error code every failure of a message is answered with
        if isinstance(exc, NoApplicationError):
            self._trace_unhandled(exc, received_at, lambda: MessageTrace.of(message, known, args))
            _count(self.unknown_applications, app_name_arg(args.get(ARG_APP)) or "")
        if isinstance(exc, MessageError):
            self._errors.report(exc.code, message.name, str(exc))
            return exc.code
        # a bug of ours: still answer at once, so HAProxy's `error > 0` rule fires now
        logger.bind(message=message.name).opt(exception=exc).error("message handling failed")
        return ErrorCode.ENGINE_FAILURE

    def _trace_unhandled(
        self, exc: Exception, received_at: float, described: Callable[[], MessageTrace]
    ) -> None:
        # the application writes the debug line of every message it handles; this one failed
        # before it reached one (docs/troubleshooting.md: one line per message at debug).
        # ``described``: the message's trace, built only at debug
        if not debug_enabled():
            return
        trace = described()
        code = exc.code if isinstance(exc, MessageError) else ErrorCode.ENGINE_FAILURE
        answer = f"error={int(code)} ({exc})"
        logger.bind(tx=trace.transaction_id).debug(trace.line(answer, received_at, self._clock()))

    def _unknown_message(self, message: Message) -> list[Action]:
        # coraza-spoa ignores it; that is a silent pass for whoever mistyped a message name
        # (or runs another agent's SPOE config): answer with the error, in both dialects
        _count(self.unknown_messages, message.name)
        code = ErrorCode.UNKNOWN_MESSAGE
        detail = f"unknown SPOE message {message.name!r} (known: {MESSAGE_REQUEST}, "
        detail += f"{MESSAGE_RESPONSE}, {MESSAGE_CHECK_REQUEST})"
        if debug_enabled():
            # every name counts as known: none is "missing" from a message we do not know
            described = describe_message(message, frozenset(a.name for a in message.args))
            logger.debug(f"{described} -> error={int(code)} (unknown SPOE message)")
        self._errors.report(code, message.name, detail, key=message.name)
        return error_to_code(code)

    def _route(self, generation: _Generation, args: Mapping[str, Arg]) -> Application:
        name = app_name_arg(args.get(ARG_APP))
        applications = generation.applications
        if name is not None:
            found = applications.get(name) or applications.get(_without_port(name))
            if found is not None:
                return found
        if generation.default_application is not None:
            if name is not None:
                logger.debug("application {!r} not found, using the default", name)
            return applications[generation.default_application]
        if name is None and len(applications) == 1:
            # no `app` argument at all: the only application; a NAMED unknown app is an error
            # even then (a typo must not pass through another application's rules)
            return next(iter(applications.values()))
        raise NoApplicationError(
            f"no application {name!r} and no default_application"
            if name
            else "no app argument and no default_application"
        )

    def _route_response(self, args: Mapping[str, Arg]) -> Application:
        try:
            application = self._route(self._current, args)
        except NoApplicationError:
            # the app may be gone from the new config while its old transactions still wait
            application = None
        # after a reload only: a retired generation may hold its transaction
        transaction_id = _id_of(args) if self._retired else None
        if transaction_id and (
            application is None or not application.has_open_transaction(transaction_id)
        ):
            for generation in self._retired:
                try:
                    candidate = self._route(generation, args)
                except NoApplicationError:
                    continue
                if candidate.has_open_transaction(transaction_id):
                    return candidate
        if application is None:
            return self._route(self._current, args)  # raises NoApplicationError again
        return application

    # ---- lifetime -----------------------------------------------------------------------

    def replace(
        self, applications: Mapping[str, Application], default_application: str | None
    ) -> Mapping[str, Application]:
        """Reload: switch to new applications in one step; return the previous ones.

        The previous applications are NOT to be closed by the caller: the agent keeps them
        for the responses of requests they saw, sweeps them, and hands each to ``on_retired``
        once it holds no transaction any more.
        """
        _validate(applications, default_application)
        previous = self._current
        self._current = _Generation(dict(applications), default_application)
        self._retired.insert(0, previous)
        return previous.applications

    def sweep(self) -> int:
        """Expire transactions of every application, current and retired (every second)."""
        expired = sum(app.sweep() for app in self._current.applications.values())
        for generation in list(self._retired):
            retired = self._retired_only(generation)
            expired += sum(app.sweep() for app in retired)
            if all(_is_idle(app) for app in retired):
                self._retired.remove(generation)
                self._drop(generation)
        return expired

    def _retired_only(self, generation: _Generation) -> list[Application]:
        # a reload may reuse an unchanged application object: it belongs to the current one
        current = set(map(id, self._current.applications.values()))
        return [app for app in generation.applications.values() if id(app) not in current]

    def close_all(self) -> int:
        """Shutdown: close every open transaction everywhere, then log the totals."""
        closed = sum(app.close_all() for app in self.all_applications())
        for generation in self._retired:
            self._drop(generation)
        self._retired.clear()
        stats = self.stats()
        logger.info(
            "transactions opened={} closed={} expired={} evicted={} shed={} open={}",
            stats.opened,
            stats.closed,
            stats.expired,
            stats.evicted,
            stats.shed,
            stats.open + stats.in_flight,
        )
        return closed

    def stats(self) -> TransactionStats:
        """Counters summed over every application the agent still knows."""
        total = sum((app.stats for app in self.all_applications()), self._dropped)
        if self._check_request_app is not None:
            total += self._check_request_app.dropped
        return total

    def _drop(self, generation: _Generation) -> None:
        for app in self._retired_only(generation):
            self._dropped += app.stats.counts()
            if self._on_retired is not None:
                self._on_retired(app)


def _is_idle(app: Application) -> bool:
    stats = app.stats
    return stats.open == 0 and stats.in_flight == 0


def _id_of(args: Mapping[str, Arg]) -> str | None:
    found = transaction_id_arg(args.get(ARG_ID))
    return None if found is None else found.decode("latin-1")


def _without_port(name: str) -> str:
    # "echo.domain:8080" -> "echo.domain", "[::1]:80" -> "[::1]"; a name without a port as is
    host, colon, port = name.rpartition(":")
    if colon and port.isdigit() and host and (not host.startswith("[") or host.endswith("]")):
        return host
    return name


def _count(counts: dict[str, int], name: str) -> None:
    if name not in counts and len(counts) >= MAX_COUNTED_NAMES:
        name = OTHER_NAMES
    counts[name] = counts.get(name, 0) + 1
