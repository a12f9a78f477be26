"""One libmodsecurity transaction (``models.WafTransaction``): each phase group is one engine
job (a ``cs_job`` of ``native/msc_glue.c``) that its engine's scheduler runs, on the calling
thread (``RUN_HERE``, the GIL released) or on the native engine threads (``engine_pool``).

What it reports is only what the engine said: the rule matches (``matches``) and the
intervention; ``verdicts.phase_verdict`` turns that into a ``Verdict``. It must not log, read
configuration files, or touch gevent.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from ipaddress import IPv6Address
from typing import Any, Protocol

from coraza_spoa_py.engine.binding import (
    CHAR_ARRAY,
    JOB_PTR,
    LOG_PTR,
    EngineError,
    Native,
    c_string,
    ffi,
    lib,
    new_lock,
)
from coraza_spoa_py.engine.matches import phase_name, take_records
from coraza_spoa_py.header_blocks import HeaderRecords, pack_headers
from coraza_spoa_py.models import (
    CloseWhen,
    DeadlineExceededError,
    EngineScheduler,
    IPAddress,
    RequestInfo,
    ResponseInfo,
    RuleMatch,
    Verdict,
)
from coraza_spoa_py.verdicts import Interruption, phase_verdict

if lib is not None:
    _CLOSE_WHEN = {
        CloseWhen.NEVER: lib.CS_CLOSE_NEVER,
        CloseWhen.ALWAYS: lib.CS_CLOSE_ALWAYS,
        CloseWhen.IF_INTERRUPTED: lib.CS_CLOSE_IF_INTERRUPTED,
    }


def _ip_text(address: IPAddress | None) -> bytes:
    if address is None:
        return b""
    return _address_text(address)


@lru_cache(maxsize=1024)
def _address_text(address: IPAddress) -> bytes:
    # ipaddress spells an address in Python (~2 us, twice per request) and the same ones come
    # back: clients, the agent's own listeners (docs/performance.md change 29)
    # HAProxy maps IPv4 clients into IPv6 on v6 binds; rules (and IP lists) expect dotted quads
    mapped = address.ipv4_mapped if isinstance(address, IPv6Address) else None
    return str(mapped or address).encode()


def _port(port: int) -> int:
    return port if 0 <= port <= 65535 else 0


def _status(status: int) -> int:
    return status if 0 <= status <= 999 else 0


def _c_text(value: bytes) -> bytes:
    # The URI, method and protocol go through char*: a NUL would cut them short, so it is
    # percent-encoded as the client would have had to send it (rules decode ARGS as usual).
    return value.replace(b"\x00", b"%00")


def _packed_headers(headers: Sequence[tuple[bytes, bytes]]) -> bytes:
    # the header records msc_glue.c reads: one C call adds them all. A text block arrives
    # already packed (docs/performance.md change 42).
    if isinstance(headers, HeaderRecords):
        return headers.packed
    return pack_headers(headers)


class CompiledRules(Protocol):
    """What a transaction needs of its engine (``ruleset.ModSecEngine``)."""

    native: Native
    rules_set: Any  # the RulesSet the transactions are created in
    scheduler: EngineScheduler


class ModSecTransaction:
    """One native transaction (``models.WafTransaction``). One call at a time, any thread."""

    def __init__(self, engine: CompiledRules, transaction_id: str) -> None:
        self._engine = engine  # keeps the RulesSet alive while we run
        self._scheduler = engine.scheduler
        self._id = transaction_id
        self._lock = new_lock()
        self._closed = False
        self._matches: list[RuleMatch] = []
        self._anomaly_score = 0
        self._client = ""
        # the engine's rule messages for this transaction (copied in C++, read after each call)
        self._log: Any = ffi.new(LOG_PTR)
        self._id_buffer = ffi.new(CHAR_ARRAY, transaction_id.encode())
        # created by the first phase group's job, on an engine thread (msc_glue.c)
        self._tx: Any = ffi.NULL
        self._last_job: Any = None

    @property
    def transaction_id(self) -> str:
        return self._id

    # -- request: phases 1 and 2 ------------------------------------------------------------
    def process_request(
        self,
        request: RequestInfo,
        *,
        deadline: float = 0.0,
        close_when: CloseWhen = CloseWhen.NEVER,
    ) -> Verdict:
        client = _ip_text(request.src_ip)
        self._client = client.decode()
        job = self._job(lib.CS_REQUEST, deadline, close_when)
        server = _ip_text(request.dst_ip)
        uri, method = _c_text(request.uri), _c_text(request.method)
        # the library prefixes the version with "HTTP/" itself (REQUEST_PROTOCOL)
        version = _c_text(request.version)
        headers, body = _packed_headers(request.headers), _exact_bytes(request.body)
        lib.cs_job_set_request(
            job, client, _port(request.src_port), server, _port(request.dst_port), uri, method,
            version, headers, len(headers), body, len(body),
        )  # fmt: skip
        # the job points into these bytes (cs_job_set_request): kept until it ran
        keep = [client, server, uri, method, version, headers, body]
        return self._run(job, urgent=False, keep=keep)

    # -- response: phases 3 and 4 -----------------------------------------------------------
    def process_response(
        self,
        response: ResponseInfo,
        *,
        deadline: float = 0.0,
        close_when: CloseWhen = CloseWhen.NEVER,
    ) -> Verdict:
        job = self._job(lib.CS_RESPONSE, deadline, close_when)
        # here the library takes the protocol as given (RESPONSE_PROTOCOL)
        protocol = b"HTTP/" + _c_text(response.version)
        headers = _packed_headers(response.headers)
        body = _exact_bytes(response.body)
        lib.cs_job_set_response(
            job, _status(response.status), protocol, headers, len(headers), body, len(body)
        )
        # urgent: the request of this transaction already cost engine time (admission)
        return self._run(job, urgent=True, keep=[protocol, headers, body])

    def close(self) -> None:
        """Run the logging phase (audit log) and free the native transaction, through the
        engine's scheduler without waiting for it. Idempotent."""
        if not self._claim_for_close():
            return
        self._adopt_created_tx()
        job = self._job(lib.CS_CLOSE, 0.0)
        self._tx = ffi.NULL
        # the close job frees the log buffer itself (msc_glue.c cs_job_run); the scheduler keeps
        # this transaction (its job and log structs) until the job has run
        self._scheduler.detach(job, keep=self)

    def __del__(self) -> None:
        # A transaction the caller forgot: free the native side here rather than leak it.
        if not getattr(self, "_closed", True) and self._claim_for_close():
            self._adopt_created_tx()
            lib.cs_job_run(self._job(lib.CS_CLOSE, 0.0))

    # -- internals ----------------------------------------------------------------------------
    def _claim_for_close(self) -> bool:
        # never a wait, as in _run: the holder may be a greenlet parked on the hub
        if not self._lock.acquire(False):
            raise EngineError(f"transaction {self._id} is busy: cannot close it now")
        try:
            if self._closed:
                return False
            self._closed = True
            return True
        finally:
            self._lock.release()

    def _adopt_created_tx(self) -> None:
        # a caller that stopped waiting (killed) never stored what its job created (NULL again
        # if that job closed it); closing runs after that job (the scheduler keeps us alive until
        # then), so it can be read now
        if self._tx == ffi.NULL and self._last_job is not None:
            self._tx = self._last_job.tx

    def _job(self, kind: int, deadline: float, close_when: CloseWhen = CloseWhen.NEVER) -> Any:
        job = ffi.new(JOB_PTR)
        job.kind = kind
        job.close_when = _CLOSE_WHEN[close_when]
        job.tx = self._tx
        if self._tx == ffi.NULL:
            job.msc = self._engine.native.msc
            job.rules = self._engine.rules_set
            job.id = self._id_buffer
        job.log = self._log
        job.deadline = deadline
        if self._last_job is not None:
            # the thread whose malloc arena holds this transaction: its urgent jobs (response,
            # close) wait a little for it (docs/performance.md change 40, native/msc_glue.c)
            job.prefer = self._last_job.ran_on
        return job

    def _run(self, job: Any, *, urgent: bool, keep: list[Any]) -> Verdict:
        # one call at a time per transaction; a second caller is a bug, never a wait (the
        # first may be parked on the hub, where waiting would block the hub for good)
        if not self._lock.acquire(False):
            raise EngineError(f"transaction {self._id} is busy")
        try:
            self._check_open()
            start = len(self._matches)
            # the job points into our buffers, our log and our id: all kept until it ran
            keep.append(self)
            self._last_job = job
            self._scheduler.run(job, urgent=urgent, keep=keep)
            self._tx = job.tx
            try:
                if job.failed:
                    raise EngineError("msc_new_transaction_with_id failed")
                if job.shed:
                    raise DeadlineExceededError(f"transaction {self._id}: not started in time")
                # first: it records the matches and the score
                interruption = self._interruption(job)
                return phase_verdict(
                    self._matches,
                    start,
                    self._anomaly_score,
                    interruption,
                    (job.started_at, job.finished_at),
                )
            finally:
                if job.closed:
                    # the job closed the transaction (close_when) and left its lines for us
                    self._closed = True
                if job.closed or job.interrupted:
                    # read: the intervention's strings and a closed transaction's log buffer
                    # go back to the engine thread whose malloc arena holds them, which frees
                    # them before its next job (docs/performance.md change 44)
                    lib.cs_job_release(job)
        finally:
            self._lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(f"transaction {self._id} is closed")

    def _interruption(self, job: Any) -> Interruption | None:
        # After a phase group: record the rule messages the engine kept (msc_glue_rm.cc: every
        # field from the engine's RuleMessage, never from its text), then what its
        # intervention said, if there was one.
        out = ffi.addressof(job, "out")
        if job.kind == lib.CS_REQUEST and out.anomaly_score >= 0:
            # TX's inbound score where the request phases ended (docs/engine.md)
            self._anomaly_score = int(out.anomaly_score)
        disruptive = None
        for match, action in take_records(self._log, self._client, self._id):
            self._matches.append(match)
            if match.disruptive:
                disruptive = (match, action)
        if not out.disruptive:
            return None
        phase = int(out.phase)
        url = c_string(out.url) if out.url != ffi.NULL else ""
        log = c_string(out.log) if out.log != ffi.NULL else ""
        status = int(out.status)
        body_limit = bool(out.body_limit)
        if disruptive is None:
            # no rule message: a body limit, or a rule with `nolog` (docs/engine.md); the
            # intervention's own text is kept for display, and names no rule
            match = RuleMatch(
                rule_id=0,
                client=self._client,
                disruptive=True,
                phase_id=phase,
                phase=phase_name(phase),
                raw=log,
            )
            if log:
                self._matches.append(match)
            disruptive = (match, "")
        return Interruption(status, url, phase, body_limit, disruptive[0], disruptive[1])


def _exact_bytes(value: bytes) -> bytes:
    # cffi passes a bytes object to a char* argument as a pointer to its own buffer (no copy);
    # anything else that holds bytes is copied into one first
    return value if type(value) is bytes else bytes(value)
