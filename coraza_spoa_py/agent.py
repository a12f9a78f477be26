"""Routes each SPOE message to its application and never leaves HAProxy without an answer.

``coraza-req`` / ``coraza-res`` go to the application named by the ``app`` argument (absent or
unknown: ``default_application``; none set and exactly one application: that one). Unknown
message names are ignored (debug log, no actions), like coraza-spoa. Every failure of one
message becomes ``error`` = our code at once (compat.md Part 1): never silence, never a crash,
never a silent pass. At debug, a message that reaches no application gets its one line
(``message_log``) here; the application writes that line for all others.

``replace`` swaps the applications atomically on reload and keeps the previous generations
("retired") readable: a response whose request was seen before the reload is still found in
the old application's cache (compat.md Part 2 §11.5). Retired generations are swept with the
current one and dropped once their caches are empty.

Must not parse arguments beyond ``app``/``id``, touch the engine, sockets or gevent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from loguru import logger

from coraza_spoa_py.application import (
    Application,
    MessageError,
    NoApplicationError,
    TransactionStats,
)
from coraza_spoa_py.message_log import MessageTrace, debug_enabled, describe_message
from coraza_spoa_py.messages import (
    ARG_APP,
    ARG_ID,
    REQUEST_ARGS,
    RESPONSE_ARGS,
    app_name_arg,
    args_by_name,
)
from coraza_spoa_py.spop.events import Action, Arg, DataType, Message
from coraza_spoa_py.verdicts import ErrorCode, error_actions

# message names of coraza-spoa's shipped coraza.cfg (compat.md Part 2 §2.2, §2.3)
MESSAGE_REQUEST = "coraza-req"
MESSAGE_RESPONSE = "coraza-res"
# one log line per error code per interval at most: under overload every message fails the
# same way and the log must stay readable
ERROR_LOG_INTERVAL_S = 1.0


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
        self._last: dict[ErrorCode, float] = {}
        self._suppressed: dict[ErrorCode, int] = {}

    def report(self, code: ErrorCode, message_name: str, detail: str) -> None:
        now = self._clock()
        last = self._last.get(code)
        if last is not None and now - last < ERROR_LOG_INTERVAL_S:
            self._suppressed[code] = self._suppressed.get(code, 0) + 1
            return
        self._last[code] = now
        suppressed = self._suppressed.pop(code, 0)
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
        return found

    # ---- messages -----------------------------------------------------------------------

    def handle(self, messages: Sequence[Message], received_at: float) -> list[Action]:
        """Answer every message of one NOTIFY frame; their actions go into one ACK."""
        actions: list[Action] = []
        for message in messages:
            actions.extend(self._handle_one(message, received_at))
        return actions

    def _handle_one(self, message: Message, received_at: float) -> list[Action]:
        if message.name not in (MESSAGE_REQUEST, MESSAGE_RESPONSE):
            if debug_enabled():
                # every name counts as known: none is "missing" from a message we do not know
                described = describe_message(message, frozenset(a.name for a in message.args))
                logger.debug(f"{described} -> nothing (unknown SPOE message, ignored)")
            return []
        # once per message, for routing, parsing and the debug line alike
        args = args_by_name(message)
        try:
            if message.name == MESSAGE_REQUEST:
                application = self._route(self._current, args)
                return application.handle_request(message, received_at, args)
            application = self._route_response(args)
            return application.handle_response(message, received_at, args)
        except NoApplicationError as exc:
            # the application writes the debug line of every message it handles; this one
            # never reached one
            if debug_enabled():
                known = REQUEST_ARGS if message.name == MESSAGE_REQUEST else RESPONSE_ARGS
                trace = MessageTrace.of(message, known, args)
                answer = f"error={int(exc.code)} ({exc})"
                logger.bind(tx=trace.transaction_id).debug(
                    trace.line(answer, received_at, self._clock())
                )
            self._errors.report(exc.code, message.name, str(exc))
            return error_actions(exc.code)
        except MessageError as exc:
            self._errors.report(exc.code, message.name, str(exc))
            return error_actions(exc.code)
        except Exception:
            # a bug of ours: still answer at once, so HAProxy's `error > 0` rule fires now
            logger.bind(message=message.name).exception("message handling failed")
            return error_actions(ErrorCode.ENGINE_FAILURE)

    def _route(self, generation: _Generation, args: Mapping[str, Arg]) -> Application:
        name = app_name_arg(args.get(ARG_APP))
        applications = generation.applications
        if name is not None and name in applications:
            return applications[name]
        if generation.default_application is not None:
            if name is not None:
                logger.debug("application {!r} not found, using the default", name)
            return applications[generation.default_application]
        if len(applications) == 1:
            return next(iter(applications.values()))
        raise NoApplicationError(
            f"no application {name!r} and no default_application"
            if name
            else "no app argument and no default_application"
        )

    def _route_response(self, args: Mapping[str, Arg]) -> Application:
        transaction_id = _id_of(args)
        try:
            application = self._route(self._current, args)
        except NoApplicationError:
            # the app may be gone from the new config while its old transactions still wait
            application = None
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
        totals = [app.stats for app in self.all_applications()]
        return TransactionStats(
            opened=sum(s.opened for s in totals) + self._dropped.opened,
            closed=sum(s.closed for s in totals) + self._dropped.closed,
            expired=sum(s.expired for s in totals) + self._dropped.expired,
            evicted=sum(s.evicted for s in totals) + self._dropped.evicted,
            shed=sum(s.shed for s in totals) + self._dropped.shed,
            open=sum(s.open for s in totals),
            in_flight=sum(s.in_flight for s in totals),
        )

    def _drop(self, generation: _Generation) -> None:
        for app in self._retired_only(generation):
            stats = app.stats
            self._dropped = TransactionStats(
                opened=self._dropped.opened + stats.opened,
                closed=self._dropped.closed + stats.closed,
                expired=self._dropped.expired + stats.expired,
                evicted=self._dropped.evicted + stats.evicted,
                shed=self._dropped.shed + stats.shed,
            )
            if self._on_retired is not None:
                self._on_retired(app)


def _is_idle(app: Application) -> bool:
    stats = app.stats
    return stats.open == 0 and stats.in_flight == 0


def _id_of(args: Mapping[str, Arg]) -> str | None:
    arg = args.get(ARG_ID)
    if arg is None or arg.type not in (DataType.STRING, DataType.BINARY):
        return None
    if not isinstance(arg.value, bytes) or not arg.value:
        return None
    return arg.value.decode("latin-1")
