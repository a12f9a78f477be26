"""The rule engine: our own cffi (ABI mode) binding over the system ``libmodsecurity.so.3``.

This is the only module that knows libmodsecurity exists. It loads rule sets
(``load_engine``), runs transactions (``WafEngine`` / ``WafTransaction`` of ``models``) and turns
what the engine says into a ``Verdict``. It must not log, read configuration files, or touch
gevent: engine calls block the calling thread (they release the GIL, engine.md "Decision"),
so callers run them on native threads.
"""

from __future__ import annotations

import _thread
import sys
import weakref
from collections.abc import Callable
from typing import Any

from cffi import FFI

from coraza_spoa_py import __version__, rules, waf_text
from coraza_spoa_py.models import IPAddress, RequestInfo, ResponseInfo, RuleMatch, Verdict
from coraza_spoa_py.settings import AppConfig, RulePaths

LIBRARY_NAME = "libmodsecurity.so.3"
CONNECTOR_INFO = f"coraza-spoa-py v{__version__}"

# The subset of /usr/include/modsecurity/{modsecurity,rules_set,transaction,intervention}.h we
# call (engine.md "The C API we need"). Opaque handles are void*.
_CDEF = """
typedef struct ModSecurityIntervention_t {
    int status;
    int pause;
    char *url;
    char *log;
    int disruptive;
} ModSecurityIntervention;
typedef void (*ModSecLogCb)(void *, const void *);

void *msc_init(void);
const char *msc_who_am_i(void *msc);
void msc_set_connector_info(void *msc, const char *connector);
void msc_set_log_cb(void *msc, ModSecLogCb cb);

void *msc_create_rules_set(void);
int msc_rules_add(void *rules, const char *plain_rules, const char **error);
int msc_rules_cleanup(void *rules);

void *msc_new_transaction_with_id(void *ms, void *rules, char *id, void *logCbData);
int msc_process_connection(void *t, const char *client, int cPort, const char *server, int sPort);
int msc_process_uri(void *t, const char *uri, const char *protocol, const char *http_version);
int msc_add_n_request_header(void *t, const unsigned char *key, size_t len_key,
                             const unsigned char *value, size_t len_value);
int msc_process_request_headers(void *t);
int msc_append_request_body(void *t, const unsigned char *body, size_t size);
int msc_process_request_body(void *t);
int msc_add_n_response_header(void *t, const unsigned char *key, size_t len_key,
                              const unsigned char *value, size_t len_value);
int msc_process_response_headers(void *t, int code, const char *protocol);
int msc_append_response_body(void *t, const unsigned char *body, size_t size);
int msc_process_response_body(void *t);
int msc_process_logging(void *t);
int msc_intervention(void *t, ModSecurityIntervention *it);
void msc_transaction_cleanup(void *t);

void free(void *ptr);
"""

_ffi = FFI()
_ffi.cdef(_CDEF)
# Resolved once here: ``FFI.new("...")`` / ``FFI.cast("...")`` parse the string and take cffi's
# lock on a cold type cache, and engine threads must never take a lock gevent may have patched
# (docs/performance.md item 1). Type objects skip both.
_INTERVENTION_PTR = _ffi.typeof("ModSecurityIntervention *")
_CHAR_ARRAY = _ffi.typeof("char[]")
_CHAR_PTR = _ffi.typeof("char *")
_CHAR_PTR_PTR = _ffi.typeof("char **")
_FUNCTIONS = [
    "msc_init",
    "msc_who_am_i",
    "msc_set_connector_info",
    "msc_set_log_cb",
    "msc_create_rules_set",
    "msc_rules_add",
    "msc_rules_cleanup",
    "msc_new_transaction_with_id",
    "msc_process_connection",
    "msc_process_uri",
    "msc_add_n_request_header",
    "msc_process_request_headers",
    "msc_append_request_body",
    "msc_process_request_body",
    "msc_add_n_response_header",
    "msc_process_response_headers",
    "msc_append_response_body",
    "msc_process_response_body",
    "msc_process_logging",
    "msc_intervention",
    "msc_transaction_cleanup",
    "free",
]


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


class RulesError(Exception):
    """The rules did not load. ``problems`` holds one "file:line: message" string each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class EngineError(Exception):
    """The native library could not be loaded or refused an operation."""


class _Native:
    """The loaded library and the process-wide ``ModSecurity`` instance (created once)."""

    def __init__(self) -> None:
        lib: Any
        try:
            lib = _ffi.dlopen(LIBRARY_NAME)
        except OSError as exc:
            raise EngineError(f"cannot load {LIBRARY_NAME}: {exc}") from exc
        # resolve every function now: cffi takes its lock on a function's first lookup
        for name in _FUNCTIONS:
            getattr(lib, name)
        self.lib = lib
        self.msc: Any = lib.msc_init()
        lib.msc_set_connector_info(self.msc, CONNECTOR_INFO.encode())
        # Without a log callback the library prints every match to stderr (engine.md).
        self.log_callback = _ffi.callback("void(void *, const void *)", _on_engine_log)
        lib.msc_set_log_cb(self.msc, self.log_callback)


_native_lock = _new_lock()
_native_instance: _Native | None = None


def _native() -> _Native:
    global _native_instance
    with _native_lock:
        if _native_instance is None:
            _native_instance = _Native()
        return _native_instance


def _on_engine_log(log_cb_data: Any, message: Any) -> None:
    # Runs on the engine thread with the GIL held (engine.md): only copy the line; parsing
    # happens after the engine call returns.
    if log_cb_data == _ffi.NULL or message == _ffi.NULL:
        return
    transaction = _ffi.from_handle(log_cb_data)
    transaction._pending_lines.append(_ffi.string(_ffi.cast(_CHAR_PTR, message)))


def _c_string(pointer: Any) -> str:
    value = _ffi.string(pointer)
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def engine_version() -> str:
    """The engine's own name and version, e.g. "ModSecurity v3.0.9 (Linux)"."""
    native = _native()
    return _c_string(native.lib.msc_who_am_i(native.msc))


def load_engine(app: AppConfig, rule_paths: RulePaths) -> ModSecEngine:
    """Resolve ``app.directives`` (``rules.resolve``) and load them into a fresh rule set.

    Raises ``RulesError`` listing every problem as "file:line: message".
    """
    resolved = rules.resolve(app, rule_paths)
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
        self._directive_lines = resolved.text.splitlines()
        self._drop_cache: dict[tuple[str, int], bool] = {}
        self._drop_lock = _new_lock()
        count = self._add(resolved.text, resolved)
        self._add(waf_text.SCORE_RULE, None)
        self.rule_count: int = count

    def _add(self, text: str, resolved: rules.ResolvedRules | None) -> int:
        lib = self._native.lib
        error = _ffi.new(_CHAR_PTR_PTR)
        count = int(lib.msc_rules_add(self._rules, text.encode(), error))
        message = ""
        if error[0] != _ffi.NULL:
            message = _c_string(error[0]).strip()
            lib.free(error[0])
        if count < 0 or message:
            self._finalizer()
            raise RulesError(waf_text.rules_problems(message, resolved))
        return count

    def new_transaction(self, transaction_id: str) -> ModSecTransaction:
        return ModSecTransaction(self, transaction_id)

    def is_drop_rule(self, file: str, line: int) -> bool:
        """Whether the rule that starts at ``file``:``line`` has the ``drop`` action.

        libmodsecurity reports ``drop`` and ``deny`` alike (status 403, "Access denied"), so
        we read the disruptive rule's own text once (engine.md "Gotchas").
        """
        key = (file, line)
        with self._drop_lock:
            cached = self._drop_cache.get(key)
        if cached is None:
            cached = waf_text.has_drop_action(self._rule_source(file, line))
            with self._drop_lock:
                self._drop_cache[key] = cached
        return cached

    def _rule_source(self, file: str, line: int) -> list[str]:
        if file.startswith("/"):
            try:
                with open(file, encoding="utf-8", errors="replace") as source:
                    lines = source.read().splitlines()
            except OSError:
                return []
        else:  # rules added as text (the app's directives) name no file
            lines = self._directive_lines
        return waf_text.directive_at(lines, line)

    def close(self) -> None:
        """Free the rule set now; only once no transaction uses it any more."""
        self._finalizer()


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


# (phase, engine step): what ModSecTransaction._run executes in order
_Step = tuple[int, Callable[[Any], object]]


class ModSecTransaction:
    """One native transaction (``models.WafTransaction``). One call at a time, any thread."""

    def __init__(self, engine: ModSecEngine, transaction_id: str) -> None:
        self._engine = engine  # keeps the RulesSet alive while we run
        self._lib = engine._native.lib
        self._id = transaction_id
        self._lock = _new_lock()
        self._closed = False
        self._pending_lines: list[bytes] = []
        self._matches: list[RuleMatch] = []
        self._anomaly_score = 0
        self._client = ""
        self._handle = _ffi.new_handle(self)
        # reused by every msc_intervention call of this transaction (reset before each)
        self._intervention: Any = _ffi.new(_INTERVENTION_PTR)
        self._id_buffer = _ffi.new(_CHAR_ARRAY, transaction_id.encode())
        self._tx = self._lib.msc_new_transaction_with_id(
            engine._native.msc, engine._rules, self._id_buffer, self._handle
        )
        if self._tx == _ffi.NULL:
            self._closed = True  # nothing to free (and __del__ must not try)
            raise EngineError("msc_new_transaction_with_id failed")

    @property
    def transaction_id(self) -> str:
        return self._id

    # -- request: phases 1 and 2 ------------------------------------------------------------
    def process_request(self, request: RequestInfo) -> Verdict:
        lib = self._lib
        self._client = _ip_text(request.src_ip).decode()

        def connection(tx: Any) -> None:
            lib.msc_process_connection(
                tx,
                self._client.encode(),
                _port(request.src_port),
                _ip_text(request.dst_ip),
                _port(request.dst_port),
            )

        def uri(tx: Any) -> None:
            # the library prefixes the version with "HTTP/" itself (REQUEST_PROTOCOL)
            method, version = _c_text(request.method), _c_text(request.version)
            lib.msc_process_uri(tx, _c_text(request.uri), method, version)

        def headers(tx: Any) -> None:
            for name, value in request.headers:
                lib.msc_add_n_request_header(tx, name, len(name), value, len(value))
            lib.msc_process_request_headers(tx)

        def body(tx: Any) -> None:
            lib.msc_append_request_body(tx, request.body, len(request.body))

        steps: list[_Step] = [(1, connection), (1, uri), (1, headers)]
        if request.body:
            # the body limit (SecRequestBodyLimitAction Reject) intervenes right after the
            # append, and msc_process_request_body would forget it
            steps.append((2, body))
        # phase 2 runs even without a body: CRS scores and blocks there (949110)
        steps.append((2, lib.msc_process_request_body))
        return self._run(steps)

    # -- response: phases 3 and 4 -----------------------------------------------------------
    def process_response(self, response: ResponseInfo) -> Verdict:
        lib = self._lib

        def headers(tx: Any) -> None:
            for name, value in response.headers:
                lib.msc_add_n_response_header(tx, name, len(name), value, len(value))
            # here the library takes the protocol as given (RESPONSE_PROTOCOL)
            protocol = b"HTTP/" + _c_text(response.version)
            lib.msc_process_response_headers(tx, _status(response.status), protocol)

        def body(tx: Any) -> None:
            lib.msc_append_response_body(tx, response.body, len(response.body))

        steps: list[_Step] = [(3, headers)]
        if response.body:
            steps.append((4, body))
        steps.append((4, lib.msc_process_response_body))
        return self._run(steps)

    def _run(self, steps: list[_Step]) -> Verdict:
        # One engine step at a time, asking for an intervention after each (engine.md); the
        # first interruption ends the phase group.
        with self._lock:
            self._check_open()
            start = len(self._matches)
            intervention = None
            for phase, step in steps:
                step(self._tx)
                intervention = self._step(phase)
                if intervention is not None:
                    break
            return self._verdict(intervention, start)

    def close(self) -> None:
        """Run the logging phase (audit log) and free the native transaction. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._lib.msc_process_logging(self._tx)
            finally:
                self._lib.msc_transaction_cleanup(self._tx)
                self._tx = _ffi.NULL
                self._pending_lines.clear()
                # the engine can no longer call back: drop the handle, and with it the
                # reference cycle (self -> handle -> self) that only the cyclic GC would free
                self._handle = _ffi.NULL

    def __del__(self) -> None:
        # A transaction the caller forgot: free the native side rather than leak it.
        if not getattr(self, "_closed", True):
            self.close()

    # -- internals ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise EngineError(f"transaction {self._id} is closed")

    def _step(self, phase: int) -> _Intervention | None:
        # After each engine step: collect what the rules logged, then ask for an intervention
        # (engine.md: reset status to 200 before, free url/log after).
        self._collect(phase)
        it = self._intervention
        it.status = 200
        it.pause = 0
        it.url = _ffi.NULL
        it.log = _ffi.NULL
        it.disruptive = 0
        self._lib.msc_intervention(self._tx, it)
        url = log = ""
        if it.url != _ffi.NULL:
            url = _c_string(it.url)
            self._lib.free(it.url)
        if it.log != _ffi.NULL:
            log = _c_string(it.log)
            self._lib.free(it.log)
        if not it.disruptive:
            return None
        # The disruptive rule's line never reaches the log callback (libmodsecurity 3.0.9
        # hands it over only here), so it joins the matches from the intervention.
        match = None
        if log:
            match = self._record(log.encode(), phase, disruptive=True)
        status = int(it.status)
        if waf_text.is_body_limit(log):
            # no rule: the body limit itself. Report it as coraza-spoa does (compat.md
            # Part 2 §3.1): 413 for a request body, 500 for a response body.
            status = 413 if phase <= 2 else 500
        return _Intervention(status=status, url=url, match=match)

    def _collect(self, phase: int) -> None:
        lines, self._pending_lines = self._pending_lines, []
        for raw in lines:
            self._record(raw, phase)

    def _record(self, raw: bytes, phase: int, disruptive: bool = False) -> RuleMatch | None:
        match = waf_text.parse_match(raw, phase, self._client, disruptive)
        if match.rule_id == waf_text.SCORE_RULE_ID:
            self._anomaly_score = waf_text.reported_score(match.data, self._anomaly_score)
            return None
        total = waf_text.total_score(match.msg)
        if total is not None:
            self._anomaly_score = total
        self._matches.append(match)
        return match

    def _verdict(self, intervention: _Intervention | None, start: int) -> Verdict:
        new_matches = tuple(self._matches[start:])
        # id 0: an intervention that no rule made (the body limits)
        matched_ids = tuple(m.rule_id for m in self._matches if m.rule_id)
        rules_hit = sum(
            1 for m in self._matches if m.msg and waf_text.in_rules_hit_ranges(m.rule_id)
        )
        common: dict[str, Any] = {
            "matched_rule_ids": matched_ids,
            "rules_hit": rules_hit,
            "anomaly_score": self._anomaly_score,
            "log_lines": tuple(m.raw for m in new_matches),
            "matches": new_matches,
        }
        if intervention is None:
            return Verdict(**common)
        return Verdict(
            interrupted=True,
            status=intervention.status,
            action=_action_of(intervention.match, intervention.url, self._engine),
            redirect_url=intervention.url,
            rule_id=intervention.match.rule_id if intervention.match else 0,
            **common,
        )


class _Intervention:
    __slots__ = ("status", "url", "match")

    def __init__(self, status: int, url: str, match: RuleMatch | None) -> None:
        self.status = status
        self.url = url
        self.match = match


def _action_of(disruptive: RuleMatch | None, url: str, engine: ModSecEngine) -> str:
    if url:
        return "redirect"
    if disruptive is not None and engine.is_drop_rule(disruptive.file, disruptive.line):
        return "drop"
    return "deny"
