"""The debug log of each SPOE message: what a user needs to troubleshoot a HAProxy setup from
the log alone (issue 4), spelled as ONE line per message.

``traced(handle, known, log, clock)`` wraps an application's message handler (as
``metrics.timed`` wraps the server's): ``MessageTrace.of(message, known)`` describes the message
as it arrived: name, every argument as ``name:TYPE(size)`` in the order HAProxy sent it (sizes
of text in bytes, never values), the known arguments that are missing and the unknown ones that
are ignored; the ``outcome.Outcome`` the handler returns (or its ``MessageError`` carries) adds
what happened (cache event, notes, engine-thread clock readings) and ``line(answer, ...)``
finishes it with the answer HAProxy got and the time spent. ``debug_enabled()`` tells whether
any sink takes debug records at all: the wrapper runs only then, so the hot path pays one
attribute read when the level is above debug.

Must not log by itself, decide levels or sinks, or show an argument's value: header values and
bodies never reach a log from here (issue 4; the rule engine's own match lines are another
matter, docs/compatibility.md "Logging").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Concatenate, ParamSpec

from loguru import logger

from coraza_spoa_py.messages import (
    ARG_BODY_SIZE,
    ARG_DETECT_ONLY,
    ARG_EXPORT_RULE_IDS,
    ARG_ID,
    ARG_URL,
    args_by_name,
    unknown_arg_names,
)
from coraza_spoa_py.models import Verdict
from coraza_spoa_py.outcome import MessageError, Outcome
from coraza_spoa_py.spop.events import Action, Arg, DataType, Message, SetVar
from coraza_spoa_py.verdicts import ErrorCode

if TYPE_CHECKING:
    from loguru import Logger

# loguru's numeric level of DEBUG (and of zerolog's "debug", logs.LEVELS)
DEBUG_LEVEL_NO = 10
# loguru's core is shared by every bound logger; its ``min_level`` is the lowest level any sink
# takes, which is loguru's own first check before it builds a record. Private, so it is read
# defensively: without it every message builds its line (correct, only slower).
_LOGURU_CORE = getattr(logger, "_core", None)
# the two flags are optional (coraza-spoa's own coraza.cfg does not send them); any other known
# argument that is absent changes what the rules see, so the line names it
# optional: none of the agents we replace sends url (docs/haproxy.md "Absolute-form") or
# body-size (docs/haproxy.md "Request bodies")
OPTIONAL_ARGS = frozenset({ARG_EXPORT_RULE_IDS, ARG_DETECT_ONLY, ARG_URL, ARG_BODY_SIZE})
_TEXT_TYPES = frozenset({DataType.STRING, DataType.BINARY})
# Enum.name goes through a descriptor: a plain dict keeps describing a message cheap at debug
_TYPE_NAMES = {data_type: data_type.name for data_type in DataType}
# the answer's variables in the order the line shows them: the verdict, then the metrics
_ANSWER_ORDER = ("error", "fail", "action", "status", "ruleid", "rules_hit", "anomaly_score")
NO_ID = "-"

P = ParamSpec("P")
# an application's handler: (message, received_at, arguments by name, ...) -> its outcome
Handler = Callable[Concatenate[Message, float, Mapping[str, Arg], P], Outcome]


def debug_enabled() -> bool:
    """Whether any sink takes debug records (read on every message: it follows reloads)."""
    return level_enabled(DEBUG_LEVEL_NO)


def level_enabled(level_no: int) -> bool:
    """Whether any sink takes records of loguru's numeric level ``level_no``: loguru's own
    first check, made before the caller builds what only the record would carry."""
    min_level = getattr(_LOGURU_CORE, "min_level", 0)
    return bool(min_level <= level_no)


def describe_arg(arg: Arg) -> str:
    """``name:TYPE(size)`` for text (size in bytes), ``name:TYPE`` for fixed-size types."""
    if arg.type in _TEXT_TYPES and isinstance(arg.value, bytes):
        return f"{arg.name}:{_TYPE_NAMES[arg.type]}({len(arg.value)})"
    return f"{arg.name}:{_TYPE_NAMES[arg.type]}"


def describe_message(message: Message, known: frozenset[str]) -> str:
    """``name args=[...] missing=[...] ignored=[...]`` (the last two only when not empty)."""
    text = f"{message.name} args=[{' '.join(describe_arg(arg) for arg in message.args)}]"
    sent = {arg.name for arg in message.args}
    missing = sorted(known - OPTIONAL_ARGS - sent)
    if missing:
        text += f" missing=[{' '.join(missing)}]"
    ignored = unknown_arg_names(message, known)
    if ignored:
        text += f" ignored=[{' '.join(ignored)}]"
    return text


def sent_id(message: Message, args: Mapping[str, Arg] | None = None) -> str:
    """The ``id`` argument as sent (the line's ``tx``), or ``-``; also before parsing, so a
    malformed message is still tied to its transaction."""
    arg = (args if args is not None else args_by_name(message)).get(ARG_ID)
    if arg is None or arg.type not in _TEXT_TYPES or not isinstance(arg.value, bytes):
        return NO_ID
    return arg.value.decode("latin-1") or NO_ID


def describe_answer(actions: Sequence[Action]) -> str:
    """The SET-VARs HAProxy gets as ``name=value`` (``id`` left out: the line carries ``tx``).
    These are the names HAProxy logs as ``txn.coraza.<name>``, so both logs read alike."""
    values = {
        a.name: a.value
        for a in actions
        # data is empty unless the rules redirect: an empty one says nothing
        if isinstance(a, SetVar) and a.name != ARG_ID and a.value not in ("", b"")
    }
    if not values:
        return "nothing"
    names = [name for name in _ANSWER_ORDER if name in values]
    names += [name for name in values if name not in _ANSWER_ORDER]
    return " ".join(f"{name}={_answer_value(values[name])}" for name in names)


def _answer_value(value: object) -> str:
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return f'"{text}"' if not text or " " in text else text


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}ms"


@dataclass(slots=True)
class MessageTrace:
    """The debug line of one message, filled in while the message is handled (hub only)."""

    described: str
    transaction_id: str = NO_ID
    cache: str = ""  # stored | not-stored | found | not-found
    note: str = ""  # "id generated", detect-only, response_check off
    # engine-thread clock readings; 0.0 = no engine thread ran for this message
    started: float = 0.0
    finished: float = 0.0

    @classmethod
    def of(
        cls, message: Message, known: frozenset[str], args: Mapping[str, Arg] | None = None
    ) -> MessageTrace:
        return cls(describe_message(message, known), sent_id(message, args))

    def add(self, outcome: Outcome | None, *, failed: bool = False) -> None:
        """What the handler reported (``failed``: only as far as it got before its error)."""
        if outcome is None:
            return
        if outcome.id_generated:
            self.transaction_id = outcome.transaction_id
        self.cache = outcome.cache
        self.note = _note(outcome, failed)
        self.started, self.finished = outcome.started, outcome.finished

    def line(self, answer: str, received_at: float, now: float) -> str:
        """``<message> -> <answer> (<note>) cache=… wait=… engine=… total=…``.

        ``wait``: from reading the frame until an engine thread picked the message up (the hub
        and the thread pool's queue; what the processing budget bounds). ``engine``: that
        thread's work (new transaction, phases, close). ``total``: until this line, on the hub.
        """
        text = f"{self.described} -> {answer}"
        if self.note:
            text += f" ({self.note})"
        if self.cache:
            text += f" cache={self.cache}"
        if self.finished:
            text += f" wait={_ms(self.started - received_at)}"
            text += f" engine={_ms(self.finished - self.started)}"
        return f"{text} total={_ms(now - received_at)}"


def _note(outcome: Outcome, failed: bool) -> str:
    if outcome.response_check_off:
        return "response_check off"
    if outcome.orphan:
        return "orphan: inspected without its request"
    note = "id generated" if outcome.id_generated else ""
    if failed:
        return note
    if outcome.truncated_body is not None:
        received, declared = outcome.truncated_body
        note = f"body truncated: {received} of {declared} bytes"
    if outcome.detect_only and outcome.verdict is not None:
        note = detect_only_note(outcome.verdict)
    return note


def traced(
    handle: Handler[P], known: frozenset[str], log: Logger, clock: Callable[[], float]
) -> Handler[P]:
    """``handle`` writing its message's one debug line to ``log``, whatever the outcome."""

    def run(
        message: Message, received_at: float, args: Mapping[str, Arg], /, *rest: P.args,
        **options: P.kwargs,
    ) -> Outcome:  # fmt: skip
        trace = MessageTrace.of(message, known, args)
        try:
            outcome = handle(message, received_at, args, *rest, **options)
        except Exception as exc:
            if isinstance(exc, MessageError):
                code, reached = exc.code, exc.outcome
            else:
                code, reached = ErrorCode.ENGINE_FAILURE, None
            trace.add(reached, failed=True)
            _write(log, trace, f"error={int(code)} ({exc})", received_at, clock())
            raise
        trace.add(outcome)
        _write(log, trace, describe_answer(outcome.actions), received_at, clock())
        return outcome

    return run


def _write(log: Logger, trace: MessageTrace, answer: str, received_at: float, now: float) -> None:
    # bound only now: an absent id was generated while the message was handled
    log.bind(tx=trace.transaction_id).debug(trace.line(answer, received_at, now))


def cache_removal(transaction_id: str, new_id: str | None) -> str:
    """Why a transaction left the cache other than through its response (``new_id``: the
    request whose ``put`` pushed it out; ``None``: the sweeper expired it)."""
    if new_id is None:
        return "cache: transaction expired (transaction_ttl_ms), closed without its response"
    if transaction_id == new_id:
        return "cache: transaction replaced by a new request with the same id, the old one closed"
    # the application's own warning names transaction_active_limit once a minute
    return "cache: transaction evicted (the cache is full), closed without its response"


def detect_only_note(verdict: Verdict) -> str:
    """What the rules decided when detect-only keeps HAProxy from blocking (empty if nothing)."""
    if not verdict.interrupted:
        return ""
    return (
        f"detect-only, not blocking: action={verdict.action} status={verdict.status}"
        f" ruleid={verdict.rule_id}"
    )
