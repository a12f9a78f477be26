"""The compiled cffi binding (``native/build.py``, ``native/msc_glue.c``) over the system
``libmodsecurity.so.3``: the process-wide ``ModSecurity`` instance, the native engine threads
(``NativePool``), and ``RUN_HERE``, the scheduler that runs each engine job on the calling
thread.

Only the ``engine`` package imports this. It must not log, read configuration files, or touch
gevent.
"""

from __future__ import annotations

import _thread
import sys
from collections.abc import Callable
from typing import Any

from coraza_spoa_py import __version__

try:
    # our compiled binding (native/build.py, built by `make install`): API mode, with the glue
    # of native/msc_glue.c that runs a phase group in one call
    from coraza_spoa_py._msc import ffi as ffi
    from coraza_spoa_py._msc import lib as lib
except ImportError as exc:  # pragma: no cover - depends on the build
    ffi = lib = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None


CONNECTOR_INFO = f"coraza-spoa-py v{__version__}"

# Resolved once here: ``new`` with a type object skips parsing the type string per call.
if ffi is not None:
    LOG_PTR = ffi.typeof("cs_log *")
    CHAR_ARRAY = ffi.typeof("char[]")
    CHAR_PTR_PTR = ffi.typeof("char **")
    JOB_PTR = ffi.typeof("cs_job *")


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
new_lock = native_lock_factory()


class RunHere:
    """The scheduler of engines outside the agent (``-validate``, the CRS runner, tests): each
    job runs in the calling thread (one C call, GIL released), so nothing ever waits for a
    thread (``models.EngineScheduler``)."""

    def expected_wait_s(self) -> float:
        return 0.0

    def run(self, job: Any, *, urgent: bool, keep: object) -> None:
        lib.cs_job_run(job)

    def detach(self, job: Any, *, keep: object) -> None:
        lib.cs_job_run(job)


RUN_HERE = RunHere()


class NativePool:
    """The engine threads of msc_glue.c: they run jobs without ever taking the GIL. No gevent
    here: ``engine_pool`` watches ``fd`` and calls ``take_done`` on the hub."""

    def __init__(self) -> None:
        native_library()  # the library is usable before a thread starts
        self._pool = lib.cs_pool_new()
        if self._pool == ffi.NULL:
            raise EngineError("cannot create the engine thread pool (eventfd)")
        self.fd: int = int(lib.cs_pool_fd(self._pool))

    def resize(self, threads: int) -> int:
        return int(lib.cs_pool_resize(self._pool, max(1, threads)))

    def push(self, job: Any, *, urgent: bool) -> None:
        """Queue ``job`` without waking a thread: call ``wake`` once after a batch."""
        lib.cs_pool_push(self._pool, job, 1 if urgent else 0)

    def wake(self) -> None:
        """Wake as many idle threads as jobs wait (docs/performance.md change 16)."""
        lib.cs_pool_wake(self._pool)

    def set_batching(self, batch: int, delay_s: float) -> None:
        """When a thread tells the hub of finished jobs (msc_glue.c cs_finished)."""
        lib.cs_pool_set_batching(self._pool, batch, delay_s)

    def waiting(self) -> int:
        """Jobs queued for a thread, every lane."""
        return int(lib.cs_pool_waiting(self._pool))

    def take_done(self) -> list[Any]:
        """The jobs finished since the last call (pointers; the caller still owns them)."""
        jobs = []
        job = lib.cs_pool_take_done(self._pool)
        while job != ffi.NULL:
            jobs.append(job)
            job = job.next
        return jobs

    def stop(self) -> None:
        """Finish the queued jobs, then end every thread (blocks until they are gone)."""
        lib.cs_pool_stop(self._pool)

    def handed_back(self) -> tuple[int, int]:
        """Blocks that callers handed back to the threads to free (msc_glue.c
        cs_job_release): (not freed yet, ever). For tests."""
        return int(lib.cs_pool_handed_back(self._pool)), int(
            lib.cs_pool_handed_back_total(self._pool)
        )


class EngineError(Exception):
    """The native library could not be loaded or refused an operation."""


class Native:
    """The compiled binding and the process-wide ``ModSecurity`` instance (created once)."""

    def __init__(self) -> None:
        if _IMPORT_ERROR is not None or lib is None:
            raise EngineError(
                f"the compiled engine binding is missing ({_IMPORT_ERROR}): "
                "run `make install` (python -m coraza_spoa_py.native.build)"
            )
        self.lib: Any = lib
        self.msc: Any = lib.msc_init()
        lib.msc_set_connector_info(self.msc, CONNECTOR_INFO.encode())
        # Without a log callback the library prints every match to stderr (docs/engine.md "Engine
        # facts"). Ours (msc_glue_rm.cc) does nothing: the glue copies the transaction's rule
        # messages after each engine step, without the GIL.
        lib.cs_install_log_callback(self.msc)


_native_lock = new_lock()
_native_instance: Native | None = None


def native_library() -> Native:
    global _native_instance
    with _native_lock:
        if _native_instance is None:
            _native_instance = Native()
        return _native_instance


def c_string(pointer: Any) -> str:
    value = ffi.string(pointer)
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def trim_heap() -> bool:
    """Give the heap's free pages back to the kernel (glibc's malloc_trim); True if any were.
    It releases the GIL but blocks its caller: call it from a thread, not the hub."""
    if lib is None:
        return False
    return bool(lib.cs_trim_heap())


def set_match_text(on: bool) -> None:
    """Whether rule-match records carry the engine's text line (``RuleMatch.raw``): off when
    no log sink takes a rule-match record, so the engine threads format no text to drop."""
    if lib is not None:
        lib.cs_set_match_text(1 if on else 0)


def engine_version() -> str:
    """The engine's own name and version, e.g. "ModSecurity v3.0.9 (Linux)"."""
    native = native_library()
    return c_string(native.lib.msc_who_am_i(native.msc))
