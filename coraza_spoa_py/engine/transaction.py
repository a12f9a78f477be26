"""The rule engine: our compiled cffi binding (``native/``) over the system
``libmodsecurity.so.3``.

This is the only module that knows libmodsecurity exists. It loads rule sets
(``load_engine``), runs transactions (``WafEngine`` / ``WafTransaction`` of ``models``) and turns
what the engine says into a ``Verdict``. Each phase group is a job that the engine's
``runner`` runs: on the calling thread by default (``RUN_HERE``, the GIL released), on the
native pool's threads in the agent (``engine_pool``). It must not log, read configuration files,
or touch gevent.
"""

from __future__ import annotations

import _thread
import functools
import os
import re
import struct
import sys
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from coraza_spoa_py import __version__, rules, waf_text
from coraza_spoa_py.models import (
    CloseWhen,
    DeadlineExceededError,
    IPAddress,
    RequestInfo,
    ResponseInfo,
    RuleMatch,
    Verdict,
)
from coraza_spoa_py.settings import AppConfig, RulePaths

try:
    # our compiled binding (native/build.py, built by `make install`): API mode, with the glue
    # of native/msc_glue.c that runs a phase group in one call
    from coraza_spoa_py._msc import ffi as _ffi
    from coraza_spoa_py._msc import lib as _lib
except ImportError as exc:  # pragma: no cover - depends on the build
    _ffi = _lib = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

CONNECTOR_INFO = f"coraza-spoa-py v{__version__}"

# Resolved once here: ``new`` with a type object skips parsing the type string per call.
if _ffi is not None:
    _LOG_PTR = _ffi.typeof("cs_log *")
    _CHAR_ARRAY = _ffi.typeof("char[]")
    _CHAR_PTR_PTR = _ffi.typeof("char **")
    _JOB_PTR = _ffi.typeof("cs_job *")
    _CLOSE_WHEN = {
        CloseWhen.NEVER: _lib.CS_CLOSE_NEVER,
        CloseWhen.ALWAYS: _lib.CS_CLOSE_ALWAYS,
        CloseWhen.IF_INTERRUPTED: _lib.CS_CLOSE_IF_INTERRUPTED,
    }
# one header record of native/msc_glue.c: a length, little endian, before each name and value
_LENGTH = struct.Struct("<I")


def native_lock_factory() -> Callable[[], Any]:
    """``_thread.allocate_lock`` as it was before any gevent monkey-patching.

    Our locks are taken on native engine threads, where a gevent lock must never be used (a
    waiter on a contended gevent lock outside the hub is never woken). Patching can only have
    happened if ``gevent.monkey`` was imported, and then it remembers the original; looking it
    up in ``sys.modules`` keeps this module free of gevent imports.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        original: Callable[[], Any] = monkey.get_original("_thread", "allocate_lock")
        return original
    return _thread.allocate_lock


# Resolved at import: before patching ``_thread.allocate_lock`` is the original, after it gevent
# remembers the original; either way this is never a gevent lock.
_new_lock = native_lock_factory()


class JobRunner(Protocol):
    """Where an engine job (a ``cs_job``) runs. ``RunHere`` runs it on the calling thread; the
    agent's runner (``engine_pool``) hands it to the native engine threads and parks the calling
    greenlet, so the gevent hub never waits for the engine."""

    def run(self, job: Any, *, urgent: bool, keep: object) -> None:
        """Return once ``job`` has run (or was shed: ``job.shed``). ``keep`` (the buffers and
        the transaction the job points into) stays referenced until the job has run, even if
        the caller stops waiting (a greenlet killed at a forced shutdown)."""

    def detach(self, job: Any, *, keep: object) -> None:
        """Run ``job`` some time soon without waiting for it; ``keep`` (what the job points
        into) stays referenced until it has run."""


class RunHere:
    """The default runner: the job runs in the calling thread (one C call, GIL released)."""

    def run(self, job: Any, *, urgent: bool, keep: object) -> None:
        _lib.cs_job_run(job)

    def detach(self, job: Any, *, keep: object) -> None:
        _lib.cs_job_run(job)


RUN_HERE = RunHere()


class NativePool:
    """The engine threads of msc_glue.c: they run jobs without ever taking the GIL. No gevent
    here: ``engine_pool`` watches ``fd`` and calls ``take_done`` on the hub."""

    def __init__(self) -> None:
        _native()  # the library is usable before a thread starts
        self._pool = _lib.cs_pool_new()
        if self._pool == _ffi.NULL:
            raise EngineError("cannot create the engine thread pool (eventfd)")
        self.fd: int = int(_lib.cs_pool_fd(self._pool))

    def resize(self, threads: int) -> int:
        return int(_lib.cs_pool_resize(self._pool, max(1, threads)))

    def push(self, job: Any, *, urgent: bool) -> None:
        """Queue ``job`` without waking a thread: call ``wake`` once after a batch."""
        _lib.cs_pool_push(self._pool, job, 1 if urgent else 0)

    def wake(self) -> None:
        """Wake as many idle threads as jobs wait (docs/performance.md change 16)."""
        _lib.cs_pool_wake(self._pool)

    def waiting(self) -> int:
        """Jobs queued for a thread, both lanes."""
        return int(_lib.cs_pool_waiting(self._pool))

    def take_done(self) -> list[Any]:
        """The jobs finished since the last call (pointers; the caller still owns them)."""
        jobs = []
        job = _lib.cs_pool_take_done(self._pool)
        while job != _ffi.NULL:
            jobs.append(job)
            job = job.next
        return jobs

    def stop(self) -> None:
        """Finish the queued jobs, then end every thread (blocks until they are gone)."""
        _lib.cs_pool_stop(self._pool)


class RulesError(Exception):
    """The rules did not load. ``problems`` holds one "file:line: message" string each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class EngineError(Exception):
    """The native library could not be loaded or refused an operation."""


class _Native:
    """The compiled binding and the process-wide ``ModSecurity`` instance (created once)."""

    def __init__(self) -> None:
        if _IMPORT_ERROR is not None or _lib is None:
            raise EngineError(
                f"the compiled engine binding is missing ({_IMPORT_ERROR}): "
                "run `make install` (python -m coraza_spoa_py.native.build)"
            )
        self.lib: Any = _lib
        self.msc: Any = _lib.msc_init()
        _lib.msc_set_connector_info(self.msc, CONNECTOR_INFO.encode())
        # Without a log callback the library prints every match to stderr (docs/engine.md "Engine
        # facts"). Ours (msc_glue_rm.cc) does nothing: the glue copies the transaction's rule
        # messages after each engine step, without the GIL.
        _lib.cs_install_log_callback(self.msc)


_native_lock = _new_lock()
_native_instance: _Native | None = None


def _native() -> _Native:
    global _native_instance
    with _native_lock:
        if _native_instance is None:
            _native_instance = _Native()
        return _native_instance


def _c_string(pointer: Any) -> str:
    value = _ffi.string(pointer)
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def trim_heap() -> bool:
    """Give the heap's free pages back to the kernel (glibc's malloc_trim); True if any were.
    It releases the GIL but blocks its caller: call it from a thread, not the hub."""
    if _lib is None:
        return False
    return bool(_lib.cs_trim_heap())


def engine_version() -> str:
    """The engine's own name and version, e.g. "ModSecurity v3.0.9 (Linux)"."""
    native = _native()
    return _c_string(native.lib.msc_who_am_i(native.msc))


def load_engine(app: AppConfig, rule_paths: RulePaths) -> ModSecEngine:
    """Resolve ``app.directives`` (``rules.resolve``) and load them into a fresh rule set.

    Raises ``RulesError`` listing every problem as "file:line: message".
    """
    resolved = rules.resolve(app, rule_paths)
    if resolved.problems:
        raise RulesError(list(resolved.problems))
    return ModSecEngine(resolved)


class ModSecEngine:
    """One loaded ``RulesSet``; thread-safe, shared by every transaction of an application."""

    def __init__(self, resolved: rules.ResolvedRules) -> None:
        self._native = _native()
        lib = self._native.lib
        self._rules = lib.msc_create_rules_set()
        # Freed when the last transaction (which holds a reference to us) is gone. Not at
        # interpreter exit: transactions still alive then would touch freed rules.
        self._finalizer = weakref.finalize(self, lib.msc_rules_cleanup, self._rules)
        self._finalizer.atexit = False
        self.warnings: tuple[str, ...] = resolved.warnings
        self.rejects_truncated_body: bool = resolved.rejects_truncated_body
        # where this engine's jobs run: here by default, the engine threads in the agent
        self.runner: JobRunner = RUN_HERE
        count = self._add(resolved)
        _check_rule_count(count, resolved, self._finalizer)
        self.rule_count: int = count

    def _add(self, resolved: rules.ResolvedRules) -> int:
        count, message = _rules_add(self._native.lib, self._rules, resolved.text)
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
    are read with surrogateescape (rules.py: not every file is UTF-8), and go back to the
    engine as the bytes they were."""
    error = _ffi.new(_CHAR_PTR_PTR)
    count = int(lib.msc_rules_add(rules_set, text.encode(errors="surrogateescape"), error))
    message = ""
    if error[0] != _ffi.NULL:
        message = _c_string(error[0]).strip()
        lib.free(error[0])
    return count, message


def _count_loaded(text: str) -> int | None:
    """How many rules (and markers) the engine loads from ``text`` in a rule set of its
    own; None when it refuses the text."""
    lib = _native().lib
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
    return sum(d.rules for d in directives) + sum(d.markers for d in directives) * _marker_weight()


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


def _ip_text(address: IPAddress | None) -> bytes:
    if address is None:
        return b""
    # HAProxy maps IPv4 clients into IPv6 on v6 binds; rules (and IP lists) expect dotted quads
    mapped = getattr(address, "ipv4_mapped", None)
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
    # the header records msc_glue.c reads: one C call adds them all
    pack = _LENGTH.pack
    return b"".join([pack(len(n)) + n + pack(len(v)) + v for n, v in headers])


class ModSecTransaction:
    """One native transaction (``models.WafTransaction``). One call at a time, any thread."""

    def __init__(self, engine: ModSecEngine, transaction_id: str) -> None:
        self._engine = engine  # keeps the RulesSet alive while we run
        self._lib = engine._native.lib
        self._id = transaction_id
        self._lock = _new_lock()
        self._closed = False
        self._matches: list[RuleMatch] = []
        self._anomaly_score = 0
        self._client = ""
        # the engine's rule messages for this transaction (copied in C++, read after each call)
        self._log: Any = _ffi.new(_LOG_PTR)
        self._id_buffer = _ffi.new(_CHAR_ARRAY, transaction_id.encode())
        # created by the first phase group's job, on an engine thread (msc_glue.c)
        self._tx: Any = _ffi.NULL
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
        self._client = _ip_text(request.src_ip).decode()
        job = self._job(_lib.CS_REQUEST, deadline, close_when)
        keep = [
            self._text(job, "client_ip", self._client.encode()),
            self._text(job, "server_ip", _ip_text(request.dst_ip)),
            self._text(job, "uri", _c_text(request.uri)),
            self._text(job, "method", _c_text(request.method)),
            # the library prefixes the version with "HTTP/" itself (REQUEST_PROTOCOL)
            self._text(job, "version", _c_text(request.version)),
            _bytes_field(job, "headers", _packed_headers(request.headers)),
            _bytes_field(job, "body", request.body),
        ]
        job.client_port = _port(request.src_port)
        job.server_port = _port(request.dst_port)
        return self._run(job, urgent=False, keep=keep)

    # -- response: phases 3 and 4 -----------------------------------------------------------
    def process_response(
        self,
        response: ResponseInfo,
        *,
        deadline: float = 0.0,
        close_when: CloseWhen = CloseWhen.NEVER,
    ) -> Verdict:
        job = self._job(_lib.CS_RESPONSE, deadline, close_when)
        keep = [
            # here the library takes the protocol as given (RESPONSE_PROTOCOL)
            self._text(job, "protocol", b"HTTP/" + _c_text(response.version)),
            _bytes_field(job, "headers", _packed_headers(response.headers)),
            _bytes_field(job, "body", response.body),
        ]
        job.status = _status(response.status)
        # urgent: the request of this transaction already cost engine time (admission.py)
        return self._run(job, urgent=True, keep=keep)

    def close(self) -> None:
        """Run the logging phase (audit log) and free the native transaction, through the
        engine's runner without waiting for it. Idempotent."""
        if not self._claim_for_close():
            return
        self._adopt_created_tx()
        job = self._job(_lib.CS_CLOSE, 0.0)
        self._tx = _ffi.NULL
        # the close job frees the log buffer itself (msc_glue.c cs_job_run); the runner keeps
        # this transaction (its job and log structs) until the job has run
        self._engine.runner.detach(job, keep=self)

    def __del__(self) -> None:
        # A transaction the caller forgot: free the native side here rather than leak it.
        if not getattr(self, "_closed", True) and self._claim_for_close():
            self._adopt_created_tx()
            _lib.cs_job_run(self._job(_lib.CS_CLOSE, 0.0))

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
        # if that job closed it); closing runs after that job (the runner keeps us alive until
        # then), so it can be read now
        if self._tx == _ffi.NULL and self._last_job is not None:
            self._tx = self._last_job.tx

    def _job(self, kind: int, deadline: float, close_when: CloseWhen = CloseWhen.NEVER) -> Any:
        job = _ffi.new(_JOB_PTR)
        job.kind = kind
        job.close_when = _CLOSE_WHEN[close_when]
        job.tx = self._tx
        if self._tx == _ffi.NULL:
            job.msc = self._engine._native.msc
            job.rules = self._engine._rules
            job.id = self._id_buffer
        job.log = self._log
        job.deadline = deadline
        return job

    @staticmethod
    def _text(job: Any, field: str, value: bytes) -> Any:
        # a NUL-terminated copy for a char* field; the caller keeps it alive
        buffer = _ffi.new(_CHAR_ARRAY, value)
        setattr(job, field, buffer)
        return buffer

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
            self._engine.runner.run(job, urgent=urgent, keep=keep)
            self._tx = job.tx
            try:
                if job.failed:
                    raise EngineError("msc_new_transaction_with_id failed")
                if job.shed:
                    raise DeadlineExceededError(f"transaction {self._id}: not started in time")
                times = (job.started_at, job.finished_at)
                return self._verdict(self._settle_outcome(job), start, times)
            finally:
                if job.closed:
                    # the job closed the transaction (close_when) and left its lines for us;
                    # once they are read, the buffer goes
                    self._closed = True
                    _lib.cs_log_free(self._log)
        finally:
            self._lock.release()

    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(f"transaction {self._id} is closed")

    def _settle_outcome(self, job: Any) -> _Intervention | None:
        # After a phase group: record the rule messages the engine kept (msc_glue_rm.cc: every
        # field from the engine's RuleMessage, never from its text), then the disruptive
        # intervention if there was one.
        out = _ffi.addressof(job, "out")
        if job.kind == _lib.CS_REQUEST and out.anomaly_score >= 0:
            # TX's inbound score where the request phases ended (docs/engine.md)
            self._anomaly_score = int(out.anomaly_score)
        disruptive = None
        for match, action in _match_records(self._log, self._client, self._id):
            self._matches.append(match)
            if match.disruptive:
                disruptive = (match, action)
        if not out.disruptive:
            return None
        phase = int(out.phase)
        url = _c_string(out.url) if out.url != _ffi.NULL else ""
        log = _c_string(out.log) if out.log != _ffi.NULL else ""
        status = int(out.status)
        body_limit = bool(out.body_limit)
        _lib.cs_outcome_clear(out)
        if body_limit:
            # no rule: the body limit itself. Report it as coraza-spoa does (docs/compatibility.md
            # "Variables we set"): 413 for a request body, 500 for a response body.
            status = 413 if phase <= 2 else 500
        if disruptive is None:
            # no rule message: a body limit, or a rule with `nolog` (docs/engine.md); the
            # intervention's own text is kept for display, and names no rule
            match = RuleMatch(
                rule_id=0,
                client=self._client,
                disruptive=True,
                phase_id=phase,
                phase=_PHASE_NAMES.get(phase, ""),
                raw=log,
            )
            if log:
                self._matches.append(match)
            return _Intervention(status=status, url=url, match=match, action=_lib.CS_ACTION_OTHER)
        return _Intervention(status=status, url=url, match=disruptive[0], action=disruptive[1])

    def _verdict(
        self, intervention: _Intervention | None, start: int, engine_times: tuple[float, float]
    ) -> Verdict:
        new_matches = tuple(self._matches[start:])
        # id 0: an intervention that no rule made (the body limits)
        matched_ids = tuple(m.rule_id for m in self._matches if m.rule_id)
        rules_hit = sum(1 for m in self._matches if m.msg and in_rules_hit_ranges(m.rule_id))
        common: dict[str, Any] = {
            "matched_rule_ids": matched_ids,
            "rules_hit": rules_hit,
            "anomaly_score": self._anomaly_score,
            "log_lines": tuple(m.raw for m in new_matches),
            "matches": new_matches,
            "engine_times": engine_times,
        }
        if intervention is None:
            return Verdict(**common)
        return Verdict(
            interrupted=True,
            status=intervention.status,
            action=_action_of(intervention),
            redirect_url=intervention.url,
            rule_id=intervention.match.rule_id,
            **common,
        )


def _bytes_field(job: Any, field: str, value: bytes) -> Any:
    # a pointer into ``value`` itself (no copy) and its length; the caller keeps it alive
    if not value:
        return None
    buffer = _ffi.from_buffer(value)
    setattr(job, field, buffer)
    setattr(job, field + "_len", len(value))
    return buffer


_MATCH_HEAD = struct.Struct("<qIIIIII")  # msc_glue.h "cs_log records"
_STRING_FIELDS = 8  # file, msg, data, rev, ver, server, uri, raw
# severity numbers of the SecLang severity action, in order (ModSecurity reference manual)
_SEVERITIES = ("emergency", "alert", "critical", "error", "warning", "notice", "info", "debug")
_PHASE_NAMES = {
    1: "request-headers",
    2: "request-body",
    3: "response-headers",
    4: "response-body",
    5: "logging",
}
# rules_hit / rule_ids count matches with a msg and an id in these ranges (docs/compatibility.md
# "Variables we set"): the CRS attack and blocking-evaluation rules, and the "custom attack" range.
RULES_HIT_RANGES = ((910_000, 960_000), (190_000, 200_000))


def in_rules_hit_ranges(rule_id: int) -> bool:
    """Whether coraza-spoa counts this id in ``rules_hit`` / ``rule_ids``."""
    return any(low <= rule_id < high for low, high in RULES_HIT_RANGES)


def _match_records(log: Any, client: str, unique_id: str) -> list[tuple[RuleMatch, int]]:
    """The rule messages msc_glue_rm.cc copied since the last call, as ``RuleMatch`` and the
    disruptive action (``CS_ACTION_*``); empties the log. Field names as docs/compatibility.md
    "Logging"."""
    if not log.len:
        return []
    raw = bytes(_ffi.buffer(log.buf, log.len))
    log.len = 0
    records = []
    head_size = _MATCH_HEAD.size
    unpack_head = _MATCH_HEAD.unpack_from
    unpack_length = _LENGTH.unpack_from  # the tag count
    at, end = 0, len(raw)
    while at + head_size <= end:
        rule_id, line, phase, severity_id, maturity, accuracy, action = unpack_head(raw, at)
        at += head_size
        texts, at = _strings(raw, at, _STRING_FIELDS)
        tags, at = _strings(raw, at + 4, unpack_length(raw, at)[0])
        file, msg, data, revision, version, server, uri, text = texts
        match = RuleMatch(
            rule_id=rule_id,
            msg=msg,
            data=data,
            # 3.0.9 has 0 for a rule without `severity`, so those read as emergency
            severity=_SEVERITIES[severity_id] if severity_id < len(_SEVERITIES) else "",
            severity_id=severity_id if severity_id < len(_SEVERITIES) else -1,
            file=file,
            line=line,
            revision=revision,
            version=version,
            maturity=str(maturity),
            accuracy=str(accuracy),
            tags=tuple(tags),
            server=server,
            uri=uri,
            unique_id=unique_id,
            client=client,
            disruptive=action != _lib.CS_ACTION_NONE,
            phase_id=phase,
            phase=_PHASE_NAMES.get(phase, ""),
            raw=text,
        )
        records.append((match, action))
    return records


def _strings(raw: bytes, at: int, count: int) -> tuple[list[str], int]:
    """``count`` length-prefixed strings of a record from ``at``; and where they end."""
    texts = []
    unpack_length = _LENGTH.unpack_from
    for _ in range(count):
        length = unpack_length(raw, at)[0]
        at += 4
        texts.append(raw[at : at + length].decode("utf-8", "replace"))
        at += length
    return texts, at


class _Intervention:
    __slots__ = ("status", "url", "match", "action")

    def __init__(self, status: int, url: str, match: RuleMatch, action: int) -> None:
        self.status = status
        self.url = url
        self.match = match
        self.action = action  # CS_ACTION_* of the disruptive rule


def _action_of(intervention: _Intervention) -> str:
    # redirect: the intervention has the URL; drop or deny: the rule's own actions (libmodsecurity
    # 3.0.9 reports both as 403 "Access denied"; msc_glue_rm.cc reads which one ran)
    if intervention.url:
        return "redirect"
    if intervention.action == _lib.CS_ACTION_DROP:
        return "drop"
    return "deny"
