"""Prometheus metrics and health for ``-metrics-addr``, through ``prometheus_client``.

What coraza-spoa exports (docs/compatibility.md "Metrics"): the histogram
``coraza_handle_spoe_duration_seconds`` with the Go client's default buckets, and the process
collector's ``process_*`` series (prometheus_client's ``ProcessCollector`` gives the same names:
``process_cpu_seconds_total``, ``process_open_fds``, ``process_max_fds``,
``process_virtual_memory_bytes``, ``process_resident_memory_bytes``,
``process_start_time_seconds``; the Go runtime's ``go_*`` have ``python_*`` in their place). We
add the transaction counters, the open HAProxy connections, the reload outcomes, and per
application and per rule: messages by verdict, orphan responses, rule matches.

The same listener answers ``/healthz`` (the process serves HTTP) and ``/readyz`` (the rules are
loaded, the SPOP listener is bound and the agent is not stopping): docs/operations.md "Health".

Must not touch the engine or SPOP; the runtime hands it callables that read the counters, and
the applications call ``Metrics.observe`` with each verdict (on the hub).
"""

from __future__ import annotations

import functools
import resource
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from gevent.pywsgi import WSGIServer
from loguru import logger

from coraza_spoa_py import __version__, allocator, config
from coraza_spoa_py.application import TransactionStats
from coraza_spoa_py.models import Verdict

if TYPE_CHECKING:
    from prometheus_client import Counter
    from prometheus_client.core import GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector

# prometheus client_golang DefBuckets, which coraza-spoa's histogram uses (prometheus_client's
# own defaults have more buckets)
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HEALTH_CONTENT_TYPE = "text/plain; charset=utf-8"


@functools.cache
def prometheus() -> ModuleType:
    """``prometheus_client``, imported when something exports metrics: an agent without
    ``-metrics-addr`` never loads it (~2.5 MiB of RSS, docs/performance.md change 26)."""
    import prometheus_client

    # coraza-spoa exports no ``*_created`` series; neither do we
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    return prometheus_client


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
    # a worker of several (handoff.Router.counts): coraza-res answered here or by their owner
    routes: Callable[[], Mapping[str, int]] = dict


class Readiness:
    """Why the agent is not ready yet (or no longer); ``None`` = ready."""

    def __init__(self) -> None:
        self.reason: str | None = "starting"

    def set_ready(self) -> None:
        self.reason = None

    def set_not_ready(self, reason: str) -> None:
        self.reason = reason


class _AgentCollector:
    # the counters the agent keeps itself, read at scrape time; a collector by its collect()
    # (the registry does not describe it: auto_describe off), so prometheus_client loads late
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        sources = self._metrics.sources
        yield _info(sources.engine if sources is not None else "")
        yield GaugeMetricFamily(
            "process_max_resident_memory_bytes",
            "Peak resident memory size in bytes.",
            value=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        )
        if sources is None:
            return  # still starting: only what needs no application
        stats = sources.transactions()
        for word, value, text in (
            ("opened", stats.opened, "WAF transactions opened."),
            ("closed", stats.closed, "WAF transactions closed (logging phase run)."),
            ("expired", stats.expired, "Transactions closed because their TTL passed."),
            ("evicted", stats.evicted, "Transactions closed by transaction_active_limit."),
            ("shed", stats.shed, "Messages answered with error 1005 (processing budget)."),
        ):
            yield CounterMetricFamily(f"coraza_spoa_py_transactions_{word}", text, value=value)
        yield GaugeMetricFamily(
            "coraza_spoa_py_transactions_open",
            "Transactions waiting for their response.",
            value=stats.open,
        )
        yield GaugeMetricFamily(
            "coraza_spoa_py_connections",
            "HAProxy connections open now.",
            value=sources.connections(),
        )
        succeeded, failed = sources.reloads()
        reloads = CounterMetricFamily(
            "coraza_spoa_py_reloads", "Configuration reloads by outcome.", labels=("result",)
        )
        reloads.add_metric(("success",), succeeded)
        reloads.add_metric(("failure",), failed)
        yield reloads
        for name, label, counts, text in (
            (
                "coraza_spoa_py_unknown_messages",
                "message",
                sources.unknown_messages(),
                "SPOE messages answered with error 1006: the agent does not know their name.",
            ),
            (
                "coraza_spoa_py_unknown_applications",
                "app",
                sources.unknown_applications(),
                "Messages answered with error 1002: their app names no application.",
            ),
        ):
            family = CounterMetricFamily(name, text, labels=(label,))
            for key, count in counts.items():
                family.add_metric((key,), count)
            yield family
        routes = sources.routes()
        if routes:
            family = CounterMetricFamily(
                "coraza_spoa_py_responses_routed",
                "coraza-res messages of a worker by route: local (its transaction is here, or "
                "no worker claimed it), handed_off (answered by the worker that holds it), "
                "fallback (that worker did not answer: inspected here), received (answered "
                "here for another worker).",
                labels=("route",),
            )
            for key, count in routes.items():
                family.add_metric((key,), count)
            yield family


def _info(engine: str) -> GaugeMetricFamily:
    from prometheus_client.core import GaugeMetricFamily

    info = GaugeMetricFamily(
        "coraza_spoa_py_info",
        "Agent and engine versions, and the memory allocator the engine runs on.",
        labels=("version", "engine", "allocator"),
    )
    info.add_metric((__version__, engine, _allocator_name()), 1)
    return info


@functools.cache
def _allocator_name() -> str:
    # "jemalloc" or "system" (docs/operations.md "Memory allocator"); fixed for the process's
    # life, so /proc/self/maps is read once
    return "jemalloc" if allocator.mapped_allocator() is not None else "system"


class Metrics:
    """One registry: coraza-spoa's histogram, the process collector, our counters."""

    def __init__(
        self, sources: Sources | None = None, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        # None until the applications exist (the listener answers /healthz while rules load)
        self.sources = sources
        self.readiness = Readiness()
        client = prometheus()
        self.registry = client.CollectorRegistry(auto_describe=False)
        self._clock = clock
        self.handle_duration = client.Histogram(
            "coraza_handle_spoe_duration_seconds",
            "Time spent answering one SPOE NOTIFY frame.",
            buckets=DEFAULT_BUCKETS,
            registry=self.registry,
        )
        self._messages = client.Counter(
            "coraza_spoa_py_messages",
            "Messages answered with a verdict, per application, message and verdict.",
            ("app", "message", "verdict"),
            registry=self.registry,
        )
        self._orphans = client.Counter(
            "coraza_spoa_py_orphan_responses",
            "coraza-res messages inspected without their request's transaction (orphans).",
            ("app", "verdict"),
            registry=self.registry,
        )
        self._rule_matches = client.Counter(
            "coraza_spoa_py_rule_matches",
            "Rules that matched, per application and rule id.",
            ("app", "rule_id"),
            registry=self.registry,
        )
        # label children by key: .labels() parses its arguments on every call
        self._children: dict[tuple[Any, ...], Any] = {}
        client.ProcessCollector(registry=self.registry)
        client.PlatformCollector(registry=self.registry)
        self.registry.register(cast("Collector", _AgentCollector(self)))

    def timed(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap the server's handler: one observation per NOTIFY frame, as coraza-spoa."""
        observe = self.handle_duration.observe

        def run(*args: Any) -> Any:
            start = self._clock()
            try:
                return handler(*args)
            finally:
                observe(self._clock() - start)

        return run

    def observe(self, app: str, message: str, orphan: bool, verdict: Verdict) -> None:
        """One message's verdict (``application.Observer``), on the hub."""
        outcome = "interrupted" if verdict.interrupted else "passed"
        self._child(self._messages, app, message, outcome).inc()
        if orphan:
            self._child(self._orphans, app, outcome).inc()
        for match in verdict.matches:
            self._child(self._rule_matches, app, str(match.rule_id)).inc()

    def _child(self, family: Counter, *labels: str) -> Any:
        key = (id(family), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def render(self) -> str:
        return cast(bytes, prometheus().generate_latest(self.registry)).decode()


def wsgi_app(metrics: Metrics) -> Callable[..., Any]:
    """One process's listener: its registry, its readiness."""
    return health_and_metrics_app(
        prometheus().make_wsgi_app(metrics.registry), lambda: metrics.readiness.reason
    )


def health_and_metrics_app(
    exposition: Callable[..., Any], not_ready_reason: Callable[[], str | None]
) -> Callable[..., Any]:
    """GET /metrics → ``exposition`` (a WSGI app); /healthz → 200 while the process serves;
    /readyz → 200 once ready, 503 with ``not_ready_reason()`` before (and while stopping);
    else 404. One process's and a master's (master.py) listener alike."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO")
        if path == "/metrics":
            return exposition(environ, start_response)
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", HEALTH_CONTENT_TYPE)])
            return [b"ok\n"]
        if path == "/readyz":
            reason = not_ready_reason()
            if reason is None:
                start_response("200 OK", [("Content-Type", HEALTH_CONTENT_TYPE)])
                return [b"ready\n"]
            start_response("503 Service Unavailable", [("Content-Type", HEALTH_CONTENT_TYPE)])
            return [f"not ready: {reason}\n".encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found; metrics are at /metrics, health at /healthz and /readyz\n"]

    return app


def serve_http(address: str, app: Callable[..., Any], what: str = "") -> WSGIServer | None:
    """The ``-metrics-addr`` listener (one process's, or the master's for every worker). Like
    coraza-spoa, one that cannot start is logged, not fatal."""
    try:
        bind = config.parse_bind(address)
        if bind.kind != "tcp":
            raise ValueError("use host:port")
        server = WSGIServer((bind.host, bind.port), app, log=None)
        server.start()
    except (OSError, ValueError) as exc:
        logger.error("-metrics-addr {}: cannot serve metrics: {}", address, exc)
        return None
    host = server.server_host or "0.0.0.0"
    logger.info("metrics on http://{}:{}/metrics{}", host, server.server_port, what)
    return server
