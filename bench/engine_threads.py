"""Does the binding scale over threads? CRS 3.3.4, clean-GET-like transactions on ONE loaded
rule set, first on 1 thread, then on N threads; prints transactions/s and the ratio.

Run: ``.venv/bin/python -m bench.engine_threads [--seconds 5] [--threads 2]``. A report, not a
test: it asserts nothing. The ratio is close to N only if engine calls release the GIL
(docs/engine.md "Threads"); with the GIL held it would stay near 1.0.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from ipaddress import IPv4Address

from bench.agent_config import BENCH_DIRECTIVES
from bench.scenarios import BROWSER_HEADERS
from coraza_spoa_py import engine as waf
from coraza_spoa_py.models import RequestInfo
from coraza_spoa_py.settings import AppConfig, RulePaths

# the bench's own rule set and browser headers: one definition for every bench mode
CRS_DIRECTIVES = BENCH_DIRECTIVES
CLEAN_GET_HEADERS = BROWSER_HEADERS


def clean_get(transaction_id: str) -> RequestInfo:
    return RequestInfo(
        transaction_id,
        path=b"/catalog/items",
        query=b"page=2&sort=price",
        headers=CLEAN_GET_HEADERS,
        src_ip=IPv4Address("192.0.2.10"),
        src_port=51000,
        dst_ip=IPv4Address("192.0.2.1"),
        dst_port=80,
    )


def run(engine: waf.ModSecEngine, threads: int, seconds: float) -> tuple[int, int, float, float]:
    """Every thread runs transactions until the deadline: (done, wrong verdicts, wall s,
    process CPU s)."""
    counts = [0] * threads
    wrong = [0] * threads
    start_line = threading.Barrier(threads + 1)
    deadline = 0.0

    def worker(slot: int) -> None:
        start_line.wait()
        while time.perf_counter() < deadline:
            tx_id = f"{slot}-{counts[slot]}"
            tx = engine.new_transaction(tx_id)
            try:
                verdict = tx.process_request(clean_get(tx_id))
            finally:
                tx.close()
            counts[slot] += 1
            wrong[slot] += verdict.interrupted or verdict.rules_hit != 0

    pool = [threading.Thread(target=worker, args=(slot,)) for slot in range(threads)]
    for thread in pool:
        thread.start()
    began = time.perf_counter()
    cpu_began = time.process_time()
    deadline = began + seconds
    start_line.wait()
    for thread in pool:
        thread.join()
    return sum(counts), sum(wrong), time.perf_counter() - began, time.process_time() - cpu_began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--seconds", type=float, default=5.0, help="per run (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="threads of the second run")
    args = parser.parse_args()

    engine = waf.load_engine(AppConfig(name="bench", directives=CRS_DIRECTIVES), RulePaths())
    run(engine, 1, 0.5)  # warm-up: PCRE JIT, allocator
    per_wall: dict[int, float] = {}
    per_cpu: dict[int, float] = {}
    for threads in (1, args.threads):
        done, wrong, wall, cpu = run(engine, threads, args.seconds)
        per_wall[threads], per_cpu[threads] = done / wall, done / cpu
        print(  # noqa: T201 - a report for humans
            f"{threads} thread(s): {done} transactions in {wall:.2f} s = {done / wall:,.0f} tx/s; "
            f"{cpu / done * 1e3:.2f} ms CPU each; {cpu / wall:.2f} cores busy; "
            f"{wrong} wrong verdicts"
        )
    n = args.threads
    # On a machine shared with other work the wall ratio says more about the neighbours than
    # about us; the CPU ratio (1.0 = no time lost to the GIL or locks) is the stable one.
    print(  # noqa: T201
        f"ratio {n} threads / 1 thread: throughput {per_wall[n] / per_wall[1]:.2f}, "
        f"CPU efficiency {per_cpu[n] / per_cpu[1]:.2f} "
        f"({waf.engine_version()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})"
    )


if __name__ == "__main__":
    main()
