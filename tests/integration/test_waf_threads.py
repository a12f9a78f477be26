"""The binding under threads: engine calls release the GIL, one rule set serves many threads
with the right verdicts, concurrent close is safe, and memory stays flat."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from coraza_spoa_py import engine as waf
from coraza_spoa_py.models import RequestInfo, Verdict
from coraza_spoa_py.settings import AppConfig, RulePaths
from tests.support.fifo_gate import release_fifo_gate

pytestmark = pytest.mark.integration

RULES_DIR = Path(__file__).resolve().parent.parent / "data" / "rules"
CRS_DIRECTIVES = (
    "Include @coraza.conf-recommended\n"
    "Include @crs-setup.conf.example\n"
    "Include @owasp_crs/*.conf\n"
    "SecRuleEngine On\n"
)
HEADERS = (
    (b"host", b"example.com"),
    (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"),
    (b"accept", b"text/html"),
)


@pytest.fixture(scope="module")
def crs_engine() -> waf.ModSecEngine:
    return waf.load_engine(AppConfig(name="crs", directives=CRS_DIRECTIVES), RulePaths())


def run(engine: waf.ModSecEngine, request: RequestInfo) -> Verdict:
    tx = engine.new_transaction(request.transaction_id)
    try:
        return tx.process_request(request)
    finally:
        tx.close()


def test_engine_call_releases_the_gil(tmp_path: Path) -> None:
    """1. A worker thread enters the engine; a rule's @inspectFile script blocks inside that
    call until "go" arrives through a FIFO. 2. The main thread (Python code, needs the GIL)
    opens the FIFO while the script waits, and writes "go". If the engine call held the GIL,
    the main thread could not run until the script gave up, and the open would never find
    a reader. 3. The worker's verdict shows the script was released."""
    fifo = tmp_path / "release.fifo"
    os.mkfifo(fifo)
    directives = (
        f'SecRuleEngine On\nSecRule ARGS:fifo "@inspectFile {RULES_DIR / "wait_for_fifo.sh"}" '
        "\"id:30001,phase:1,t:none,pass,log,msg:'released by the main thread'\"\n"
    )
    engine = waf.load_engine(AppConfig(name="gil", directives=directives), RulePaths())
    result: list[Verdict] = []
    worker = threading.Thread(
        target=lambda: result.append(run(engine, RequestInfo("gil", query=b"fifo=" + bytes(fifo))))
    )
    worker.start()
    try:
        release_fifo_gate(fifo)
    finally:
        worker.join(timeout=30)
    assert result[0].matched_rule_ids == (30001,)


def test_many_threads_share_one_rule_set(crs_engine: waf.ModSecEngine) -> None:
    """8 threads x 40 transactions, clean and attack interleaved: every verdict is right."""
    clean = Verdict()

    def one(index: int) -> tuple[int, Verdict]:
        attack = index % 2 == 1
        request = RequestInfo(
            f"t-{index}",
            path=b"/item",
            query=b"p=/etc/passwd" if attack else b"id=%d" % index,
            headers=HEADERS,
        )
        return index, run(crs_engine, request)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(320)))
    for index, verdict in results:
        if index % 2:
            assert (verdict.interrupted, verdict.rule_id, verdict.anomaly_score) == (
                True,
                949110,
                10,
            )
            assert verdict.matches[-1].unique_id == f"t-{index}"  # no cross-talk
        else:
            assert verdict == clean


def test_concurrent_close_frees_once(crs_engine: waf.ModSecEngine) -> None:
    for round_number in range(20):
        tx = crs_engine.new_transaction(f"close-{round_number}")
        tx.process_request(RequestInfo(f"close-{round_number}", headers=HEADERS))
        barrier = threading.Barrier(4)

        def close(tx: waf.ModSecTransaction = tx, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            tx.close()

        threads = [threading.Thread(target=close) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with pytest.raises(waf.EngineError):
            tx.process_request(RequestInfo("again"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_is_flat_over_many_transactions(crs_engine: waf.ModSecEngine) -> None:
    """1. Warm up (allocator pools, PCRE JIT stacks). 2. Run 2,000 more transactions, half of
    them blocked with matches. 3. RSS grows by less than 8 MB (a leak of even 3 KB per
    transaction would show)."""
    requests = [
        RequestInfo("m", path=b"/", query=b"p=/etc/passwd", headers=HEADERS),
        RequestInfo("m", path=b"/", query=b"q=hello", headers=HEADERS, body=b"a=1"),
    ]
    for index in range(400):
        run(crs_engine, requests[index % 2])
    before = rss_bytes()
    for index in range(2000):
        run(crs_engine, requests[index % 2])
    growth = rss_bytes() - before
    assert growth < 8 * 1024 * 1024, f"RSS grew by {growth} bytes"


TRIM_PROBE = """
import ctypes, os, sys
from coraza_spoa_py import engine as waf

def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: free() alone never shrinks the heap's top
before = rss()
blocks = [libc.malloc(1024) for _ in range(48 * 1024)]
for block in blocks:
    ctypes.memset(block, 1, 1024)
for block in blocks:
    libc.free(block)
after_free = rss()
trimmed = waf.trim_heap()
print(trimmed, after_free - before, after_free - rss())
"""


def test_trim_heap_gives_freed_pages_back_to_the_kernel() -> None:
    """In a fresh process, with free()'s own trimming of the heap's top turned off: 1. malloc
    48 MiB in 1 KiB blocks and touch them. 2. Free them: RSS stays up (glibc keeps the pages).
    3. trim_heap: RSS drops by most of it."""
    done = subprocess.run(
        [sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    trimmed, kept_after_free, released = done.stdout.split()
    assert int(kept_after_free) > 40 * 1024 * 1024  # the premise: free() gave nothing back
    assert trimmed == "True"
    assert int(released) > 32 * 1024 * 1024, f"trim released {released} bytes"
