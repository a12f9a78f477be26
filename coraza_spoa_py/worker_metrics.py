"""Metrics of several workers (docs/architecture.md "Process model"): each worker serves its own
on a unix socket in the run directory; the master scrapes every ready worker's and sums the
series by name and labels, adding its own (workers by state, restarts).

Summing: the process start time takes the minimum, ``process_max_fds`` and the info series the
maximum, every other sample the sum.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, cast

import gevent
from gevent import socket
from gevent.pywsgi import WSGIServer
from loguru import logger

from coraza_spoa_py import listeners, metrics
from coraza_spoa_py.settings import BindAddress

if TYPE_CHECKING:  # loaded with the metrics only (metrics.prometheus)
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector

SCRAPE_TIMEOUT_S = 5.0
# series that are not summed over the workers: the earliest start, the largest limit
_KEEP_MIN = ("process_start_time_seconds",)
_KEEP_MAX = ("process_max_fds", "coraza_spoa_py_info", "python_info")


def serve_worker_metrics(path: str, stats: metrics.Metrics) -> WSGIServer | None:
    """A worker's metrics on the unix socket ``path``, for its master to sum. Like
    ``-metrics-addr``, one that cannot start is logged, not fatal."""
    try:
        listener = listeners.listen(BindAddress(kind="unix", path=path), backlog=16)
        server = WSGIServer(listener, metrics.wsgi_app(stats), log=None)
        server.start()
    except OSError as exc:
        logger.error("cannot serve this worker's metrics on {}: {}", path, exc)
        return None
    return server


def scrape(path: str) -> str | None:
    """A worker's ``/metrics`` text; None when it does not answer (logged at debug)."""
    try:
        return _http_get_unix(path, "/metrics")
    except (OSError, gevent.Timeout, ValueError) as exc:
        logger.debug("master: worker metrics on {} unavailable: {}", path, exc)
        return None


def render_summed(texts: list[str], workers_by_state: Mapping[str, int], restarts: int) -> bytes:
    """The exposition of the workers' ``texts`` summed, plus the master's own series."""
    client = metrics.prometheus()  # imported when metrics are exported (change 26)
    registry = client.CollectorRegistry(auto_describe=False)
    registry.register(cast("Collector", _Summed(texts, workers_by_state, restarts)))
    return cast(bytes, client.generate_latest(registry))


class _Summed:
    """The workers' series summed by name and labels, plus the master's own (a collector by
    its collect(), as metrics._AgentCollector)."""

    def __init__(self, texts: list[str], workers_by_state: Mapping[str, int], restarts: int):
        self._texts = texts
        self._workers_by_state = workers_by_state
        self._restarts = restarts

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
        from prometheus_client.parser import text_string_to_metric_families

        families: dict[str, Metric] = {}
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for text in self._texts:
            for family in text_string_to_metric_families(text):
                if family.name not in families:
                    families[family.name] = Metric(family.name, family.documentation, family.type)
                    values[family.name] = {}
                samples = values[family.name]
                for sample in family.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    if key not in samples:
                        samples[key] = sample.value
                    elif family.name in _KEEP_MIN:
                        samples[key] = min(samples[key], sample.value)
                    elif family.name in _KEEP_MAX:
                        samples[key] = max(samples[key], sample.value)
                    else:
                        samples[key] += sample.value
        for name, family in families.items():
            for (sample_name, labels), value in values[name].items():
                family.add_sample(sample_name, dict(labels), value)
            yield family
        workers = GaugeMetricFamily(
            "coraza_spoa_py_workers", "Worker processes by state.", labels=("state",)
        )
        for state, count in self._workers_by_state.items():
            workers.add_metric((state,), count)
        yield workers
        yield CounterMetricFamily(
            "coraza_spoa_py_worker_restarts",
            "Worker processes started again after they exited.",
            value=self._restarts,
        )


def _http_get_unix(path: str, target: str) -> str:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(SCRAPE_TIMEOUT_S)
        sock.connect(path)
        sock.sendall(f"GET {target} HTTP/1.0\r\nHost: worker\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    finally:
        sock.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
        raise ValueError(f"unexpected answer {head[:40]!r}")
    return body.decode()


__all__ = ["render_summed", "scrape", "serve_worker_metrics"]
