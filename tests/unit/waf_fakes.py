"""A fake rule engine for unit tests of ``application`` and ``agent`` (the models.WafEngine
protocol), and helpers to build SPOE messages the way HAProxy sends them (docs/protocol.md "What
HAProxy sends")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

from coraza_spoa_py.models import (
    CloseWhen,
    DeadlineExceededError,
    RequestInfo,
    ResponseInfo,
    RuleMatch,
    Verdict,
)
from coraza_spoa_py.spop.events import Arg, DataType, Message, SetVar

Decide = Callable[[RequestInfo], Verdict]
DecideResponse = Callable[[ResponseInfo], Verdict]


def clean(_: object) -> Verdict:
    return Verdict()


@dataclass
class FakeTransaction:
    transaction_id: str
    engine: FakeEngine
    requests: list[RequestInfo] = field(default_factory=list)
    responses: list[ResponseInfo] = field(default_factory=list)
    deadlines: list[float] = field(default_factory=list)
    closed: int = 0
    close_whens: list[CloseWhen] = field(default_factory=list)
    closed_by_job: bool = False

    def process_request(
        self,
        request: RequestInfo,
        *,
        deadline: float = 0.0,
        close_when: CloseWhen = CloseWhen.NEVER,
    ) -> Verdict:
        return self._phases(
            self.requests, self.engine.decide_request, request, deadline, close_when
        )

    def process_response(
        self,
        response: ResponseInfo,
        *,
        deadline: float = 0.0,
        close_when: CloseWhen = CloseWhen.NEVER,
    ) -> Verdict:
        return self._phases(
            self.responses, self.engine.decide_response, response, deadline, close_when
        )

    def _phases(
        self,
        seen: list[Any],
        decide: Callable[[Any], Verdict],
        message: RequestInfo | ResponseInfo,
        deadline: float,
        close_when: CloseWhen,
    ) -> Verdict:
        assert not self.closed, "used after close"
        self.deadlines.append(deadline)
        self.close_whens.append(close_when)
        interrupted = False
        try:
            if self.engine.miss_deadlines:
                raise DeadlineExceededError("not started in time")
            seen.append(message)
            verdict = decide(message)
            interrupted = verdict.interrupted
            return verdict
        finally:
            self._close_by_job(close_when, interrupted)

    def _close_by_job(self, close_when: CloseWhen, interrupted: bool) -> None:
        # as the engine job does it (engine.ModSecTransaction): once, whatever happened for
        # ALWAYS, and never failing (fail_close is about close())
        if close_when is CloseWhen.ALWAYS or (
            close_when is CloseWhen.IF_INTERRUPTED and interrupted
        ):
            self.closed += 1
            self.closed_by_job = True

    def close(self) -> None:
        if self.closed:
            return  # idempotent, as ModSecTransaction.close
        self.closed += 1
        if self.engine.fail_close:
            raise RuntimeError("close failed")


@dataclass
class FakeEngine:
    decide_request: Decide = clean
    decide_response: DecideResponse = clean
    fail_new: bool = False
    fail_close: bool = False
    # the engine threads found every deadline passed (engine-side load shedding)
    miss_deadlines: bool = False
    # SecRequestBodyLimitAction Reject (with body access on): cut bodies are refused
    rejects_truncated_body: bool = False
    transactions: list[FakeTransaction] = field(default_factory=list)

    def new_transaction(self, transaction_id: str) -> FakeTransaction:
        if self.fail_new:
            raise RuntimeError("engine broken")
        tx = FakeTransaction(transaction_id, self)
        self.transactions.append(tx)
        return tx

    @property
    def open_transactions(self) -> list[FakeTransaction]:
        return [tx for tx in self.transactions if not tx.closed]


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class DirectScheduler:
    """``models.EngineScheduler`` for fake engines: nothing ever waits for an engine thread;
    fakes make no engine jobs."""

    def expected_wait_s(self) -> float:
        return 0.0

    def run(self, job: Any, *, urgent: bool, keep: object) -> None:
        raise AssertionError("a fake engine made an engine job")

    def detach(self, job: Any, *, keep: object) -> None:
        raise AssertionError("a fake engine made an engine job")


direct = DirectScheduler()


def s(name: str, value: bytes | str) -> Arg:
    return Arg(name, DataType.STRING, value.encode() if isinstance(value, str) else value)


def b(name: str, value: bytes) -> Arg:
    return Arg(name, DataType.BINARY, value)


def i64(name: str, value: int) -> Arg:
    return Arg(name, DataType.INT64, value)


def flag(name: str, value: bool) -> Arg:
    return Arg(name, DataType.BOOL, value)


def null(name: str) -> Arg:
    return Arg(name, DataType.NULL, None)


def request_message(*extra: Arg, app: str | None = "sample_app", path: str = "/") -> Message:
    """A coraza-req as the shipped coraza.cfg sends it (types of docs/protocol.md "What HAProxy
    sends")."""
    args = [
        Arg("src-ip", DataType.IPV4, IPv4Address("192.0.2.10")),
        i64("src-port", 40000),
        Arg("dst-ip", DataType.IPV4, IPv4Address("127.0.0.1")),
        i64("dst-port", 8080),
        s("method", "GET"),
        s("path", path),
        null("query"),
        s("version", "1.1"),
        s("headers", "host: example.com\r\nuser-agent: curl/8\r\n\r\n"),
        b("body", b""),
    ]
    if app is not None:
        args.insert(0, s("app", app))
    overridden = {a.name for a in extra}
    args = [a for a in args if a.name not in overridden] + list(extra)
    return Message("coraza-req", tuple(args))


def response_message(transaction_id: str | None, *extra: Arg, app: str | None = "sample_app"):
    args = [
        s("version", "1.1"),
        i64("status", 200),
        s("headers", "content-type: text/html\r\n\r\n"),
        b("body", b"<p>hi</p>"),
    ]
    if transaction_id is not None:
        args.insert(0, s("id", transaction_id))
    if app is not None:
        args.insert(0, s("app", app))
    overridden = {a.name for a in extra}
    args = [a for a in args if a.name not in overridden] + list(extra)
    return Message("coraza-res", tuple(args))


def as_dict(actions) -> dict[str, Any]:
    """Actions → {name: value}; asserts names are unique (HAProxy keeps the last one)."""
    names = [a.name for a in actions]
    assert len(names) == len(set(names)), names
    return {a.name: a.value for a in actions if isinstance(a, SetVar)}


def names(actions) -> list[str]:
    return [a.name for a in actions]


def interrupted(
    action: str = "deny",
    status: int = 403,
    rule_id: int = 949110,
    url: str = "",
    score: int = 5,
    ids=(930120, 949110),
) -> Verdict:
    return Verdict(
        interrupted=True,
        status=status,
        action=action,
        redirect_url=url,
        rule_id=rule_id,
        matched_rule_ids=tuple(ids),
        rules_hit=len(ids),
        anomaly_score=score,
        matches=tuple(RuleMatch(rule_id=r, msg="m", severity="critical") for r in ids),
    )
