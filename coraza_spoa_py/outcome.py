"""What one message came to: the ``Outcome`` an application hands back (its answer, and the
facts the debug line reports), and the ``MessageError`` codes it fails with.

The handler fills one ``Outcome`` per message whatever the log level (it also carries the
engine work's result from the engine thread to the hub), so the debug trace
(``message_log.traced``) wraps the handler and reads it afterwards instead of being passed
through the handling; a ``MessageError`` carries the ``Outcome`` of as far as the message got.

Pure: no logging, no engine, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from coraza_spoa_py.models import Verdict, WafTransaction
from coraza_spoa_py.spop.events import Action
from coraza_spoa_py.verdicts import ErrorCode

# what happened to the transaction in the cache (the debug line's ``cache=``)
CACHE_STORED = "stored"
CACHE_NOT_STORED = "not-stored"
CACHE_FOUND = "found"
CACHE_NOT_FOUND = "not-found"


@dataclass(slots=True)
class Outcome:
    """One message's way through an application. The engine fields are set by the engine work,
    the others on the hub."""

    # ---- the engine work
    verdict: Verdict | None = None
    opened: bool = False
    closed: bool = False
    shed: bool = False
    error: BaseException | None = None
    kept: WafTransaction | None = None
    # an orphan's verdict of its stand-in request phases (``orphans.orphan_actions``)
    before: Verdict | None = None
    # when an engine thread picked the message's engine work up, and when it was done (the
    # verdict's ``engine_times`` when the engine gives them, else our clock around the work)
    started: float = 0.0
    finished: float = 0.0
    # ---- the message, for the answer and the debug line
    actions: Sequence[Action] = ()
    transaction_id: str = ""
    id_generated: bool = False
    detect_only: bool = False
    cache: str = ""  # CACHE_*; "" when the cache was not asked
    orphan: bool = False
    response_check_off: bool = False
    # a request body cut short: (received, declared) bytes
    truncated_body: tuple[int, int] | None = None


class MessageError(Exception):
    """Our processing of one message failed; ``code`` goes to HAProxy at once. ``outcome``: as
    far as the message got (None: before any of it was read)."""

    code: ClassVar[ErrorCode] = ErrorCode.ENGINE_FAILURE

    def __init__(self, detail: str, outcome: Outcome | None = None) -> None:
        super().__init__(detail)
        self.outcome = outcome


class MalformedMessageError(MessageError):
    code = ErrorCode.MALFORMED_MESSAGE


class NoApplicationError(MessageError):
    code = ErrorCode.NO_APPLICATION


class EngineFailureError(MessageError):
    code = ErrorCode.ENGINE_FAILURE


class TransactionNotFoundError(MessageError):
    # only with ``orphan_responses: reject``; otherwise such a response is inspected on its own
    code = ErrorCode.TRANSACTION_NOT_FOUND


class OverloadedError(MessageError):
    code = ErrorCode.OVERLOADED
