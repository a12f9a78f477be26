"""Engine threads never take a gevent lock (docs/performance.md item 1, the latent hang).

A gevent lock contended across native threads never wakes its waiter; the binding's own locks
are taken on any thread (and ABI-mode cffi's type lock was, before the compiled binding). Each
check runs the CLI's import order (monkey-patching first) in a fresh interpreter, because
patching must not happen to this one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent(
    """
    import json
    import coraza_spoa_py.cli  # patches, as the real entry point does
    import gevent.monkey, gevent.thread
    from gevent.threadpool import ThreadPool
    from coraza_spoa_py import engine as waf
    from coraza_spoa_py.engine import binding
    from coraza_spoa_py.models import RequestInfo, ResponseInfo
    from coraza_spoa_py.settings import AppConfig, RulePaths

    native_lock_type = type(gevent.monkey.get_original("_thread", "allocate_lock")())
    gevent_lock_type = type(gevent.thread.allocate_lock())
    app = AppConfig(name="t", directives="SecRuleEngine On\\n"
        'SecRule ARGS "@contains evil" "id:1,phase:2,deny,status:403,log,msg:\\'evil\\'"\\n')
    pool = ThreadPool(2)
    engine = pool.apply(lambda: waf.load_engine(app, RulePaths()))

    def transaction(query):
        tx = engine.new_transaction("tx" + query)
        request = RequestInfo(transaction_id="tx" + query, method=b"GET",
                              path=b"/", query=b"q=" + query.encode(),
                              headers=((b"host", b"x"),))
        verdict = tx.process_request(request)
        lock_type = type(tx._lock)
        tx.close()
        return verdict.interrupted, lock_type is native_lock_type
    results = [pool.apply(transaction, (q,)) for q in ("evil", "fine")]
    print(json.dumps({
        "gevent_is_patched": gevent.monkey.is_module_patched("threading"),
        # the compiled (API-mode) FFI: C-level type handling, no Python lock to patch
        "ffi_is_compiled": type(binding.ffi).__module__ == "_cffi_backend",
        "ffi_has_python_lock": hasattr(binding.ffi, "_lock"),
        "module_lock_native": type(binding._native_lock) is native_lock_type,
        "results": results,
    }))
    pool.kill()
    """
)


def test_engine_locks_are_native_under_the_cli_import_order() -> None:
    """1. Import the CLI (patches), then the binding; run two transactions on a gevent thread
    pool. Result: every lock the binding takes on engine threads is the original ``_thread``
    lock (not gevent's), the FFI is the compiled one (no Python-level cffi lock exists), and the
    rules still judge (the evil query is interrupted, the clean one is not)."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["gevent_is_patched"] is True
    assert seen["ffi_is_compiled"] is True
    assert seen["ffi_has_python_lock"] is False
    assert seen["module_lock_native"] is True
    assert seen["results"] == [[True, True], [False, True]]


def test_lock_factory_without_gevent_is_the_thread_module_lock() -> None:
    """1. In an interpreter that never imported gevent, ask the binding for its lock factory.
    Result: it is ``_thread.allocate_lock`` itself."""
    probe = (
        "import _thread, sys\n"
        "from coraza_spoa_py import engine as waf\n"
        "assert 'gevent' not in sys.modules\n"
        "print(waf.native_lock_factory() is _thread.allocate_lock)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
