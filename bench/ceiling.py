"""The ceiling: the bare engine, in-process, on native threads over one loaded rule set.

Run as its own process (``python -m bench.ceiling``) so its CPU time and memory are its own. It
does per transaction exactly what the agent does for one request of a scenario (docs/engine.md
"Engine facts": new transaction, request phases, response phases unless the request was blocked,
close) with what HAProxy hands the agent for that scenario (``Scenario.forwarded_request_headers``,
docs/performance.md change 38), and prints one JSON object: transactions, wall seconds, the CPU
spent inside engine calls (``EngineClock``, what the agent's CPU is compared with) and the whole
process's, latency percentiles, wrong verdicts.

It must not start HAProxy, the agent or any socket: it is the number the agent is compared with.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any

from bench.scenarios import SCENARIOS, Scenario
from bench.stats import percentiles
from coraza_spoa_py.models import RequestInfo, ResponseInfo, WafEngine
from coraza_spoa_py.settings import AppConfig, RulePaths

if TYPE_CHECKING:
    from coraza_spoa_py.models import EngineScheduler

LOOPBACK = IPv4Address("127.0.0.1")


class EngineClock:
    """A scheduler (``models.EngineScheduler``) that runs each engine job on the calling thread,
    as ``inner`` (``engine.RUN_HERE``) does, and adds up that thread's CPU time inside the job.

    The ceiling is the bare engine's cost: its process CPU also holds the Python driver around
    the calls (building requests, threads, the GIL), which is not the engine's and would flatter
    the agent/ceiling CPU ratio (docs/performance.md change 39). Each thread adds to its own
    total (no lock on the hot path); ``total_s`` sums them."""

    def __init__(self, inner: EngineScheduler) -> None:
        self._inner = inner
        self._local = threading.local()
        self._totals: list[list[float]] = []
        self._register = threading.Lock()

    def _own_total(self) -> list[float]:
        total: list[float] | None = getattr(self._local, "total", None)
        if total is None:
            total = self._local.total = [0.0]
            with self._register:
                self._totals.append(total)
        return total

    def total_s(self) -> float:
        """CPU seconds spent inside engine jobs so far, by every thread."""
        with self._register:
            return sum(total[0] for total in self._totals)

    def expected_wait_s(self) -> float:
        return self._inner.expected_wait_s()

    def run(self, job: Any, *, urgent: bool, keep: object) -> None:
        total = self._own_total()
        started = time.thread_time()  # CLOCK_THREAD_CPUTIME_ID: this thread's CPU only
        self._inner.run(job, urgent=urgent, keep=keep)
        total[0] += time.thread_time() - started

    def detach(self, job: Any, *, keep: object) -> None:
        # RUN_HERE runs a detached job (a close: logging phase and free) at once, here
        total = self._own_total()
        started = time.thread_time()
        self._inner.detach(job, keep=keep)
        total[0] += time.thread_time() - started


def build_request(scenario: Scenario, transaction_id: str) -> RequestInfo:
    return RequestInfo(
        transaction_id=transaction_id,
        method=scenario.method.encode(),
        path=scenario.path.encode(),
        query=None if scenario.query is None else scenario.query.encode(),
        version=b"1.1",
        headers=scenario.forwarded_request_headers,
        body=scenario.body,
        src_ip=LOOPBACK,
        src_port=40000,
        dst_ip=LOOPBACK,
        dst_port=8080,
    )


def build_response(scenario: Scenario, transaction_id: str) -> ResponseInfo:
    return ResponseInfo(
        transaction_id=transaction_id,
        status=200,
        version=b"1.1",
        headers=scenario.forwarded_response_headers,
        body=scenario.response_body,
    )


def one_transaction(engine: WafEngine, scenario: Scenario, tx_id: str, response: bool) -> bool:
    """Run one transaction the way the agent does; True when the verdict was the expected one."""
    tx = engine.new_transaction(tx_id)
    try:
        verdict = tx.process_request(build_request(scenario, tx_id))
        if not verdict.interrupted and response:
            verdict = tx.process_response(build_response(scenario, tx_id))
    finally:
        tx.close()
    return verdict.interrupted == scenario.blocked


def run_ceiling(
    engine: WafEngine,
    scenario: Scenario,
    *,
    threads: int,
    duration_s: float,
    warmup_s: float = 1.0,
    response_check: bool = True,
    clock: EngineClock | None = None,
) -> dict[str, Any]:
    """Drive ``threads`` native threads for ``duration_s`` after a warm-up; report the numbers.

    The engine releases the GIL in every call (docs/engine.md "Engine facts"), so N threads use N
    cores. ``clock``: the scheduler ``engine`` was built with, read for the CPU spent inside
    engine calls (without it, the engine figure is 0). The process figure adds the Python loop
    around the calls."""
    stop = threading.Event()
    measuring = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(threads)]
    wrong = [0] * threads

    def worker(index: int) -> None:
        n = 0
        lat = latencies[index]
        while not stop.is_set():
            n += 1
            started = time.perf_counter()
            ok = one_transaction(engine, scenario, f"ceil-{index}-{n}", response_check)
            if measuring.is_set():
                lat.append(time.perf_counter() - started)
                wrong[index] += not ok

    def engine_s() -> float:
        return clock.total_s() if clock is not None else 0.0

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in workers:
        t.start()
    time.sleep(warmup_s)
    cpu0, engine0, wall0 = time.process_time(), engine_s(), time.monotonic()
    measuring.set()
    time.sleep(duration_s)
    measuring.clear()
    cpu1, engine1, wall1 = time.process_time(), engine_s(), time.monotonic()
    stop.set()
    for t in workers:
        t.join()
    flat = [x for lat in latencies for x in lat]
    wall = wall1 - wall0
    return {
        "scenario": scenario.name,
        "threads": threads,
        "transactions": len(flat),
        "wall_s": wall,
        "cpu_s": cpu1 - cpu0,
        "engine_cpu_s": engine1 - engine0,
        "rps": len(flat) / wall if wall else 0.0,
        # the ratio's denominator (report.py): CPU inside engine calls only
        "engine_cpu_ms_per_request": 1000 * (engine1 - engine0) / len(flat) if flat else 0.0,
        # the whole process, Python driver included (the figure before change 39)
        "process_cpu_ms_per_request": 1000 * (cpu1 - cpu0) / len(flat) if flat else 0.0,
        "latency_ms": {k: v * 1000 for k, v in percentiles(flat).items()},
        "wrong_verdicts": sum(wrong),
    }


def load_bench_engine(
    directives: str, response_check: bool, scheduler: EngineScheduler | None = None
) -> WafEngine:
    """The bench's rule set in a fresh engine whose jobs ``scheduler`` runs (default: on the
    calling thread, ``engine.RUN_HERE``)."""
    from coraza_spoa_py import engine as waf  # imported late: only this process needs the binding

    app = AppConfig(name="bench", directives=directives, response_check=response_check)
    return waf.load_engine(app, RulePaths(), scheduler or waf.RUN_HERE)


def clocked_engine(directives: str, response_check: bool) -> tuple[WafEngine, EngineClock]:
    """The bench engine with an ``EngineClock`` on its jobs (run on the calling thread)."""
    from coraza_spoa_py import engine as waf

    clock = EngineClock(waf.RUN_HERE)
    return load_bench_engine(directives, response_check, clock), clock


def main(argv: list[str] | None = None) -> int:
    from bench.agent_config import BENCH_DIRECTIVES

    parser = argparse.ArgumentParser(prog="python -m bench.ceiling")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--no-response-check", action="store_true")
    # the engine as an agent with logging disabled runs it: rule matches without their text
    # lines (docs/performance.md change 54)
    parser.add_argument("--no-match-text", action="store_true")
    args = parser.parse_args(argv)
    engine, clock = clocked_engine(BENCH_DIRECTIVES, not args.no_response_check)
    if args.no_match_text:
        from coraza_spoa_py import engine as waf

        waf.set_match_text(False)
    result = run_ceiling(
        engine,
        SCENARIOS[args.scenario],
        threads=args.threads,
        duration_s=args.duration,
        warmup_s=args.warmup,
        response_check=not args.no_response_check,
        clock=clock,
    )
    with open(f"/proc/{os.getpid()}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    result["rss_bytes"] = rss * 1024
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
