"""The WAF seam: what a request and a response look like to the engine, what the engine answers,
and the ``WafEngine`` protocol that ``application`` codes against.

Pure: standard library only. ``engine`` implements the protocol over libmodsecurity; unit tests
pass fakes. Every field that came from the client is ``bytes`` and is never decoded
(docs/engine.md "Bytes, not text": decoding and re-encoding changes what rules see).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Any, NamedTuple, Protocol, TypeVar, dataclass_transform

_Record = TypeVar("_Record")


@dataclass_transform(frozen_default=True)
def value_record(cls: type[_Record]) -> type[_Record]:
    """A dataclass with slots that the type checker treats as frozen (mypy rejects assigning to
    a field) but that is not frozen at run time, where it is built once or twice per message:
    a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, ~60 ns a
    field against ~15 (``RequestInfo``: 1.19 against 0.33 us; docs/performance.md change 47).
    Hashable and comparable as a frozen dataclass is; never assign to a field."""
    return dataclass(slots=True, unsafe_hash=True)(cls)


Header = tuple[bytes, bytes]
IPAddress = IPv4Address | IPv6Address


# RFC 9112 §3.2.2: scheme "://" authority ...
_ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://")


@value_record
class RequestInfo:
    transaction_id: str
    method: bytes = b"GET"
    path: bytes = b"/"
    # None: HAProxy sent NULL (no '?' in the URI); b"": the URI ended with '?'
    query: bytes | None = None
    # as HAProxy's req.ver: b"1.1", b"2.0" (no "HTTP/" prefix)
    version: bytes = b"1.1"
    # the pairs, in order; from a message, ``header_blocks.HeaderRecords`` (already packed)
    headers: Sequence[Header] = ()
    body: bytes = b""
    src_ip: IPAddress | None = None
    src_port: int = 0
    dst_ip: IPAddress | None = None
    dst_port: int = 0
    # the request target as HAProxy's ``url`` gives it (the optional ``url`` argument)
    target: bytes | None = None
    # the body's size as the client declared it (the optional ``body-size`` argument,
    # HAProxy's ``req.body_size``); None: not sent. docs/haproxy.md "Request bodies".
    declared_body_size: int | None = None

    @property
    def body_truncated(self) -> bool:
        """HAProxy sent less of the body than the client declared: its buffer (``tune.bufsize``)
        or the body argument's cap was full. Such a body must never be judged as complete."""
        return self.declared_body_size is not None and self.declared_body_size > len(self.body)

    @property
    def uri(self) -> bytes:
        # An HTTP/1 client that sent the absolute form (``GET http://host/p?q``) gets it to the
        # rules whole, scheme and host included, as the C agent builds its URI: HAProxy's
        # ``path`` has dropped them. (HTTP/2 targets are always absolute in HAProxy, whatever
        # the client sent, so only HTTP/1 ones are taken.) docs/haproxy.md "Absolute-form".
        if (
            self.target is not None
            and _ABSOLUTE_FORM.match(self.target)
            and self.version.startswith(b"1")
        ):
            return self.target
        return self.path if self.query is None else self.path + b"?" + self.query


@value_record
class ResponseInfo:
    transaction_id: str
    status: int = 200
    version: bytes = b"1.1"
    headers: Sequence[Header] = ()  # as RequestInfo's
    body: bytes = b""


class RuleMatch(NamedTuple):
    """One rule that matched and logged, as the engine reported it.

    Field names follow coraza-spoa's JSON rule-match object (docs/compatibility.md "Logging");
    ``raw`` is the engine's own text line.

    A NamedTuple, not a frozen dataclass: the hub builds one per rule message, and
    ``RuleMatch._make`` from the values in field order costs a tenth of a frozen dataclass's
    ``__init__`` (docs/performance.md change 43). Being a tuple, it iterates and equals a plain
    tuple of the same values; a log gets it as ``to_dict()`` (a generic conversion to JSON would
    make it a list)."""

    rule_id: int
    msg: str = ""
    data: str = ""
    severity: str = ""  # emergency alert critical error warning notice info debug, or ""
    severity_id: int = -1  # 0..7, -1 when the rule has no severity
    file: str = ""
    line: int = 0
    revision: str = ""
    version: str = ""
    maturity: str = ""
    accuracy: str = ""
    tags: tuple[str, ...] = ()
    server: str = ""
    uri: str = ""
    unique_id: str = ""
    client: str = ""
    disruptive: bool = False
    phase_id: int = 0
    phase: str = ""  # request-headers request-body response-headers response-body logging
    raw: str = ""

    def to_dict(self) -> dict[str, object]:
        return {
            "client": self.client,
            "file": self.file,
            "line": self.line,
            "rule_id": self.rule_id,
            "revision": self.revision,
            "msg": self.msg,
            "data": self.data,
            "severity": self.severity,
            "severity_id": self.severity_id,
            "version": self.version,
            "maturity": self.maturity,
            "accuracy": self.accuracy,
            "tags": list(self.tags),
            "server": self.server,
            "uri": self.uri,
            "unique_id": self.unique_id,
            "disruptive": self.disruptive,
            "phase_id": self.phase_id,
            "phase": self.phase,
            "raw": self.raw,
        }


@value_record
class Verdict:
    """What the rules decided for one phase group (request, or response).

    ``matched_rule_ids`` are the ids of every rule that matched and logged in the whole
    transaction so far, in match order. ``rules_hit`` counts those in coraza-spoa's ranges
    (docs/compatibility.md "Variables we set"). ``anomaly_score`` is CRS's inbound blocking score,
    exact."""

    interrupted: bool = False
    status: int = 0
    action: str = ""  # "deny" | "drop" | "redirect" when interrupted
    redirect_url: str = ""
    rule_id: int = 0  # the disruptive rule
    matched_rule_ids: tuple[int, ...] = ()
    rules_hit: int = 0
    anomaly_score: int = 0
    log_lines: tuple[str, ...] = field(default=(), repr=False)
    # the same matches as ``log_lines``, parsed (this phase group only)
    matches: tuple[RuleMatch, ...] = field(default=(), repr=False)
    # when an engine thread started this phase group and when it was done (time.monotonic()
    # seconds), for the debug line; None when the engine does not say (test fakes)
    engine_times: tuple[float, float] | None = field(default=None, repr=False, compare=False)


class DeadlineExceededError(Exception):
    """The engine did not start the work before the deadline it was given (load shedding)."""


class CloseWhen(enum.Enum):
    """Whether a phase group also closes its transaction once it is done: then the close costs
    no engine job of its own (docs/performance.md change 13)."""

    NEVER = "never"
    ALWAYS = "always"  # whatever happened, also when the call raises
    IF_INTERRUPTED = "if interrupted"  # only when the verdict interrupts


class WafTransaction(Protocol):
    """One ModSecurity transaction. Not thread-safe: one call at a time, any thread."""

    @property
    def transaction_id(self) -> str: ...

    def process_request(
        self, request: RequestInfo, *, deadline: float = 0.0, close_when: CloseWhen = ...
    ) -> Verdict:
        """Connection, URI, request headers and body phases (1 and 2). ``deadline``
        (``time.monotonic()`` seconds, 0 = none): raise ``DeadlineExceededError`` instead of
        starting later than that. ``close_when`` (default NEVER): close the transaction as
        ``close()`` would, right after these phases."""

    def process_response(
        self, response: ResponseInfo, *, deadline: float = 0.0, close_when: CloseWhen = ...
    ) -> Verdict:
        """Response headers and body phases (3 and 4); ``deadline`` and ``close_when`` as for
        requests."""

    def close(self) -> None:
        """Run the logging phase (5, audit log) and free the native transaction. Idempotent."""


class WafEngine(Protocol):
    """A loaded rule set. Thread-safe: many transactions on many threads at once."""

    # a request body that arrived cut short is refused, not judged on its part
    # (rules.ResolvedRules.rejects_truncated_body)
    rejects_truncated_body: bool

    def new_transaction(self, transaction_id: str) -> WafTransaction: ...


class EngineScheduler(Protocol):
    """Where a rule engine's jobs run, given to the engine and to its applications when they
    are built (``engine.RUN_HERE``: on the calling thread; ``engine.engine_pool.EnginePool``:
    on the native engine threads, the calling greenlet parked)."""

    def expected_wait_s(self) -> float:
        """How long a request arriving now would wait for an engine thread (load shedding on
        arrival, docs/performance.md "Overload")."""

    def run(self, job: Any, *, urgent: bool, keep: object) -> None:
        """Return once ``job`` (a ``cs_job``) has run, or was shed (``job.shed``: it waited past
        its deadline). ``urgent``: ahead of requests (responses, closes). ``keep`` (what the
        job points into) stays referenced until the job has run, even if the caller stops
        waiting (a greenlet killed at a forced shutdown)."""

    def detach(self, job: Any, *, keep: object) -> None:
        """Run ``job`` some time soon without waiting for it; ``keep`` as for ``run``."""
