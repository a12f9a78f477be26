"""The ceiling's pure parts (docs/performance.md changes 38 and 39): the transaction it feeds the
engine is what HAProxy forwards for each scenario, its ``EngineClock`` counts only the CPU
inside engine jobs, and the report and merge read both CPU figures (and older results). The
check against the real HAProxy is tests/e2e/test_bench_forwarded.py."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from bench import ceiling, report, throughput
from bench.scenarios import SCENARIOS

UA = b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
ACCEPT = b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
# What HAProxy 2.6 handed the agent for wrk's clean GET (recorded through the real stack,
# docs/performance.md change 38): lower-case names, the client's order, no Connection.
FORWARDED_GET = (
    (b"host", b"bench.example"),
    (b"user-agent", UA),
    (b"accept", ACCEPT),
    (b"accept-language", b"en-US,en;q=0.5"),
    (b"accept-encoding", b"gzip, deflate"),
)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_ceiling_request_is_what_haproxy_forwards(name: str):
    """1. Build the ceiling's request and response for each scenario.
    2. Headers equal the scenario's forwarded lists, in order; no Connection header; method,
       URI, version and bodies are the scenario's; the response is a 200 whose
       Content-Length, first as HAProxy's `http-request return` writes it, is the body's."""
    scenario = SCENARIOS[name]
    request = ceiling.build_request(scenario, "t1")
    assert request.headers == scenario.forwarded_request_headers
    assert b"connection" not in [n for n, _ in request.headers]
    assert request.method == scenario.method.encode()
    assert request.uri == scenario.uri.encode()
    assert (request.version, request.body) == (b"1.1", scenario.body)
    response = ceiling.build_response(scenario, "t1")
    assert response.headers == scenario.forwarded_response_headers
    assert response.headers[0] == (b"content-length", str(len(scenario.response_body)).encode())
    assert (response.status, response.body) == (200, scenario.response_body)


def test_forwarded_headers_pinned_for_get_and_post():
    """The lists recorded through HAProxy 2.6: the GETs carry the five browser headers, the
    POST adds Content-Type and Content-Length after them; responses carry Content-Length,
    then Content-Type."""
    assert SCENARIOS["clean_get"].forwarded_request_headers == FORWARDED_GET
    assert SCENARIOS["attack_get"].forwarded_request_headers == FORWARDED_GET
    assert SCENARIOS["post_1k"].forwarded_request_headers == FORWARDED_GET + (
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"content-length", b"1024"),
    )
    assert SCENARIOS["clean_get"].forwarded_response_headers == (
        (b"content-length", b"74"),
        (b"content-type", b"text/html"),
    )


def _burn(cpu_s: float) -> None:
    # spin until this thread has used ``cpu_s`` of CPU
    until = time.thread_time() + cpu_s
    while time.thread_time() < until:
        pass


class BurningScheduler:
    """A fake inner scheduler: each job costs 20 ms of the calling thread's CPU."""

    JOB_CPU_S = 0.02

    def __init__(self) -> None:
        self.jobs = 0

    def expected_wait_s(self) -> float:
        return 0.25

    def run(self, job: Any, *, urgent: bool, keep: object) -> None:
        self.jobs += 1
        _burn(self.JOB_CPU_S)

    def detach(self, job: Any, *, keep: object) -> None:
        self.jobs += 1
        _burn(self.JOB_CPU_S)


def test_engine_clock_counts_the_cpu_inside_jobs_only_on_every_thread():
    """1. Two threads each run two jobs and a detached one through an EngineClock (each job
       20 ms of CPU) and burn 100 ms of CPU outside the jobs.
    2. The clock holds the 6 jobs' CPU (>= 120 ms) and not the 200 ms burned outside; the
       inner scheduler saw every job and answers its expected wait."""
    inner = BurningScheduler()
    clock = ceiling.EngineClock(inner)

    def driver() -> None:
        clock.run(None, urgent=False, keep=None)
        _burn(0.1)
        clock.run(None, urgent=True, keep=None)
        clock.detach(None, keep=None)

    threads = [threading.Thread(target=driver) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert inner.jobs == 6
    assert 6 * BurningScheduler.JOB_CPU_S <= clock.total_s() < 6 * BurningScheduler.JOB_CPU_S + 0.1
    assert clock.expected_wait_s() == 0.25


def _ceiling_run(engine_ms: float, process_ms: float, rps: float) -> dict[str, Any]:
    return {
        "scenario": "clean_get",
        "rps": rps,
        "engine_cpu_ms_per_request": engine_ms,
        "process_cpu_ms_per_request": process_ms,
        "wrong_verdicts": 0,
        "latency_ms": {"p99": 3.0},
    }


def test_merged_ceilings_keep_both_cpu_figures_and_the_ratio_uses_the_engine_one():
    """1. Merge two ceiling runs (engine 1.8 and 2.0 ms, process 2.0 and 2.2 ms per request)
       and join an agent run of 2.3 ms per request with them.
    2. The merge averages both figures; the CPU ratio is 2.3 / 1.9 (engine only), the row
       keeps the process figure (2.1); the report names both columns."""
    merged = throughput.merge_ceilings(
        [_ceiling_run(1.8, 2.0, 1000.0), _ceiling_run(2.0, 2.2, 1100.0)]
    )
    assert merged["engine_cpu_ms_per_request"] == pytest.approx(1.9)
    assert merged["process_cpu_ms_per_request"] == pytest.approx(2.1)
    run = {
        "scenario": "clean_get",
        "connections": 8,
        "rps": 900.0,
        "latency_ms": {"p50": 5.0, "p99": 9.0},
        "haproxy": {
            "spoe_errors": 0,
            "agent_errors": 0,
            "shed": 0,
            "uninspected": 0,
            "unexpected_status": 0,
        },
        "agent_cpu_ms_per_request": 2.3,
        "agent_rss_bytes": 2**26,
    }
    results = {
        "throughput": {
            "duration_s": 6,
            "ceiling_duration_s": 5,
            "engine_threads": 2,
            "ceiling": {"clean_get": merged},
            "agent": [run],
        }
    }
    (row,) = report.throughput_rows(results["throughput"])
    assert row["engine_cpu_ms"] == pytest.approx(1.9)
    assert row["ceiling_process_cpu_ms"] == pytest.approx(2.1)
    assert row["cpu_ratio"] == pytest.approx(2.3 / 1.9)
    text = report.markdown(results)
    assert "| engine CPU ms/req | process CPU ms/req |" in text
    assert "| 1.90 | 2.10 |" in text
    assert "CPU inside engine calls only" in text


def test_older_results_with_one_cpu_figure_still_read():
    """Results written before change 39 hold only ``cpu_ms_per_request`` (the process
    figure): both readers fall back to it, and a ceiling with neither reads as 0."""
    old = {"cpu_ms_per_request": 2.5}
    assert report.ceiling_engine_cpu_ms(old) == 2.5
    assert report.ceiling_process_cpu_ms(old) == 2.5
    assert report.ceiling_engine_cpu_ms({}) == 0.0
