"""Prometheus metrics for ``-metrics-addr``: the text exposition format, written by hand.

What coraza-spoa exports (compat.md Part 2 §1.6): the histogram
``coraza_handle_spoe_duration_seconds`` with the Go client's default buckets, and the process
collector's ``process_*`` series. We add the transaction counters of every application, the
open HAProxy connections and the reload outcomes. No client library: a dozen series do not need
one, and the format is a few lines of text (prometheus.io "Exposition formats").

Must not touch the engine or SPOP; the runtime hands it callables that read the counters.
"""

from __future__ import annotations

import bisect
import os
import resource
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from coraza_spoa_py import __version__
from coraza_spoa_py.application import TransactionStats

# prometheus client_golang DefBuckets, which coraza-spoa's histogram uses
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Cumulative buckets, a sum and a count; observed on the hub only (no lock needed)."""

    def __init__(self, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self.bounds = tuple(buckets)
        self.counts = [0] * len(self.bounds)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        index = bisect.bisect_left(self.bounds, seconds)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += seconds
        self.count += 1

    def lines(self, name: str) -> Iterator[str]:
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            running += count
            yield f'{name}_bucket{{le="{_number(bound)}"}} {running}'
        yield f'{name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{name}_sum {_number(self.total)}"
        yield f"{name}_count {self.count}"


@dataclass
class Sources:
    """Callables the runtime provides; read at every scrape."""

    transactions: Callable[[], TransactionStats]
    connections: Callable[[], int]
    reloads: Callable[[], tuple[int, int]]  # (succeeded, failed)
    engine: str = ""
    # messages answered with an error because their name / their `app` is unknown, by name
    unknown_messages: Callable[[], Mapping[str, int]] = dict
    unknown_applications: Callable[[], Mapping[str, int]] = dict


class Metrics:
    def __init__(self, sources: Sources, clock: Callable[[], float] = time.perf_counter) -> None:
        self.sources = sources
        self.handle_duration = Histogram()
        self._clock = clock
        self._started = time.time()

    def timed(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap the server's handler: one observation per NOTIFY frame, as coraza-spoa."""

        def run(*args: Any) -> Any:
            start = self._clock()
            try:
                return handler(*args)
            finally:
                self.handle_duration.observe(self._clock() - start)

        return run

    def render(self) -> str:
        stats = self.sources.transactions()
        succeeded, failed = self.sources.reloads()
        out: list[str] = []

        def metric(name: str, kind: str, text: str, samples: Sequence[str]) -> None:
            out.extend((f"# HELP {name} {text}", f"# TYPE {name} {kind}", *samples))

        metric(
            "coraza_handle_spoe_duration_seconds",
            "histogram",
            "Time spent answering one SPOE NOTIFY frame.",
            list(self.handle_duration.lines("coraza_handle_spoe_duration_seconds")),
        )
        counters = (
            ("opened", stats.opened, "WAF transactions opened."),
            ("closed", stats.closed, "WAF transactions closed (logging phase run)."),
            ("expired", stats.expired, "Transactions closed because their TTL passed."),
            ("evicted", stats.evicted, "Transactions closed by transaction_active_limit."),
            ("shed", stats.shed, "Messages answered with error 1005 (processing budget)."),
        )
        for word, value, text in counters:
            name = f"coraza_spoa_py_transactions_{word}_total"
            metric(name, "counter", text, [f"{name} {value}"])
        name = "coraza_spoa_py_transactions_open"
        metric(name, "gauge", "Transactions waiting for their response.", [f"{name} {stats.open}"])
        name = "coraza_spoa_py_connections"
        text = "HAProxy connections open now."
        metric(name, "gauge", text, [f"{name} {self.sources.connections()}"])
        name = "coraza_spoa_py_reloads_total"
        samples = [
            f'{name}{{result="success"}} {succeeded}',
            f'{name}{{result="failure"}} {failed}',
        ]
        metric(name, "counter", "Configuration reloads by outcome.", samples)
        for name, label, counts, text in (
            (
                "coraza_spoa_py_unknown_messages_total",
                "message",
                self.sources.unknown_messages(),
                "SPOE messages answered with error 1006: the agent does not know their name.",
            ),
            (
                "coraza_spoa_py_unknown_applications_total",
                "app",
                self.sources.unknown_applications(),
                "Messages answered with error 1002: their app names no application.",
            ),
        ):
            samples = [f'{name}{{{label}="{_label(key)}"}} {n}' for key, n in counts.items()]
            metric(name, "counter", text, samples)
        name = "coraza_spoa_py_info"
        labels = f'version="{__version__}",engine="{_label(self.sources.engine)}"'
        metric(name, "gauge", "Agent and engine versions.", [f"{name}{{{labels}}} 1"])
        out.extend(self._process_lines())
        return "\n".join(out) + "\n"

    def _process_lines(self) -> list[str]:
        # the process collector's series that dashboards use (client_golang process_collector)
        times = os.times()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        try:
            open_fds = len(os.listdir("/proc/self/fd"))
        except OSError:
            open_fds = 0
        values = (
            ("process_cpu_seconds_total", "counter", times.user + times.system),
            ("process_open_fds", "gauge", open_fds),
            ("process_max_resident_memory_bytes", "gauge", usage.ru_maxrss * 1024),
            ("process_resident_memory_bytes", "gauge", _resident_bytes()),
            ("process_start_time_seconds", "gauge", self._started),
        )
        lines: list[str] = []
        for name, kind, value in values:
            lines += [f"# TYPE {name} {kind}", f"{name} {_number(value)}"]
        return lines


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def wsgi_app(metrics: Metrics) -> Callable[..., Any]:
    """GET /metrics → the exposition text; anything else → 404."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found; metrics are at /metrics\n"]
        body = metrics.render().encode()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE)])
        return [body]

    return app
