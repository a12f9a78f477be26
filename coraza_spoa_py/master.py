"""The master process of a multi-worker agent (``workers`` > 1): binds, starts, supervises.

docs/architecture.md "Process model". The master binds the listening address once (TCP or a
unix socket) and starts ``workers`` copies of the agent (``python -m coraza_spoa_py`` with the
same flags) that inherit the listening socket: the kernel spreads HAProxy's connections over the
workers' accept calls. Each worker is a whole agent (its own gevent hub, engine threads and rule
engines); ``WORKER_ENV`` tells it its number, the inherited descriptors and the run directory
(the ``handoff.OwnerTable`` file, each worker's hand-off and metrics sockets).

Supervision: a worker that exits is started again after a backoff (0.5 s doubling to 30 s,
reset once a worker stayed up ``STABLE_AFTER_S``); one that fails before its first start is
complete stops the agent with status 1 (rules that do not compile, as with one process).
SIGHUP is forwarded (every worker reloads) and reopens the master's own log files; SIGTERM /
SIGINT close the master's copy of the listener and are forwarded, the workers drain within
``graceful_timeout_s`` (a worker still running 2 s later is killed) and the master exits 0 when
every worker did; a second SIGTERM/SIGINT exits at once with status 1.

``-metrics-addr`` is the master's: ``/metrics`` sums the workers' series (each worker serves
its own on a unix socket in the run directory) and adds the master's, ``/healthz`` answers while
the master runs, ``/readyz`` is 200 while at least one worker is ready and lists each worker's
state.

Must not load rules or speak SPOP: the workers do.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import gevent
import gevent.event
import gevent.os
import gevent.pool
import gevent.subprocess
from gevent.pywsgi import WSGIServer
from loguru import logger

from coraza_spoa_py import handoff, listeners, logs, metrics
from coraza_spoa_py.settings import Config
from coraza_spoa_py.worker_metrics import render_summed, scrape

WORKER_ENV = "CORAZA_SPOA_PY_WORKER"
EXIT_OK = 0
EXIT_FAILURE = 1
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 10.0
# after graceful_timeout_s, how long a worker gets to finish exiting before SIGKILL
KILL_MARGIN_S = 2.0
OWNER_TABLE_FILE = "owners"
# what /metrics counts workers by (coraza_spoa_py_workers{state})
WORKER_STATES = ("ready", "starting", "restarting")


@dataclass(frozen=True, slots=True)
class WorkerContext:
    """What a worker is told by its master (through ``WORKER_ENV``)."""

    index: int  # 1 .. count
    count: int
    listen_fd: int
    ready_fd: int
    rundir: str
    master_pid: int

    @property
    def owner_table(self) -> str:
        return os.path.join(self.rundir, OWNER_TABLE_FILE)

    def handoff_socket(self, index: int) -> str:
        return os.path.join(self.rundir, f"handoff-{index}.sock")

    def metrics_socket(self, index: int | None = None) -> str:
        return os.path.join(self.rundir, f"metrics-{index or self.index}.sock")

    @staticmethod
    def from_environment() -> WorkerContext | None:
        text = os.environ.pop(WORKER_ENV, None)
        return None if not text else WorkerContext(**json.loads(text))


def worker_count(cfg: Config, flag: int | None) -> int:
    return flag if flag is not None else cfg.workers


@dataclass
class _Worker:
    index: int
    process: Any = None
    state: str = "starting"  # starting, ready, restarting, stopped
    started_at: float = 0.0
    ever_ready: bool = False
    failures: int = 0
    restarts: int = 0
    # a SIGHUP came while the worker was starting: sent once it is ready
    reload_pending: bool = False
    # the stop signal came before it was ready: it has no handler yet and dies of the signal
    stopped_while_starting: bool = False


class Master:
    def __init__(self, cfg: Config, argv: Sequence[str], count: int, metrics_addr: str) -> None:
        self.config = cfg
        self.argv = list(argv)
        self.count = count
        self.metrics_addr = metrics_addr
        self.workers = [_Worker(i) for i in range(1, count + 1)]
        self.rundir = ""
        self.listener: Any = None
        self.stopping = False
        self._stop = gevent.event.Event()
        self._failed_start = False
        self._metrics_server: WSGIServer | None = None

    # ---- startup ----------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.listener = listeners.bind_socket(self.config.bind)
        except OSError as exc:
            logger.error("failed starting: cannot listen on {}: {}", self.config.bind, exc)
            return EXIT_FAILURE
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.rundir = tempfile.mkdtemp(prefix="coraza-spoa-py-", dir=base)
        handoff.OwnerTable.create(os.path.join(self.rundir, OWNER_TABLE_FILE))
        # "bound", not "listening": connections are refused until a worker listens and logs
        # "listening on", as one process does once its rules compiled
        # (with port 0 the port the kernel picked, as one process logs it)
        bound = listeners.bound_address(self.config.bind, self.listener)
        logger.info("master: bound {}, starting {} worker process(es)", bound, self.count)
        if self.metrics_addr:
            self._metrics_server = metrics.serve_http(
                self.metrics_addr, self._wsgi_app(), " (every worker)"
            )
        gevent.signal_handler(signal.SIGTERM, self._request_stop, "SIGTERM")
        gevent.signal_handler(signal.SIGINT, self._request_stop, "SIGINT")
        gevent.signal_handler(signal.SIGHUP, self._on_sighup)
        for worker in self.workers:
            gevent.spawn(self._supervise, worker)
        self._stop.wait()
        return self._shutdown()

    def _spawn(self, worker: _Worker) -> int:
        """Start ``worker``'s process; returns the read end of its readiness pipe."""
        read_fd, write_fd = os.pipe()
        context = WorkerContext(
            index=worker.index,
            count=self.count,
            listen_fd=self.listener.fileno(),
            ready_fd=write_fd,
            rundir=self.rundir,
            master_pid=os.getpid(),
        )
        env = dict(os.environ, **{WORKER_ENV: json.dumps(asdict(context))})
        worker.process = gevent.subprocess.Popen(
            [sys.executable, "-m", "coraza_spoa_py", *self.argv],
            pass_fds=(context.listen_fd, write_fd),
            env=env,
        )
        os.close(write_fd)
        worker.started_at = time.monotonic()
        worker.state = "starting"
        worker.reload_pending = False  # a process starting now reads the config as it is now
        logger.info("master: worker {} started (pid {})", worker.index, worker.process.pid)
        return read_fd

    def _supervise(self, worker: _Worker) -> None:
        while not self.stopping:
            read_fd = self._spawn(worker)
            gevent.spawn(self._watch_ready, worker, read_fd)
            code = worker.process.wait()
            if self.stopping:
                break
            worker.state = "restarting"
            if not worker.ever_ready and not any(w.ever_ready for w in self.workers):
                # the first start failed (rules, log file): as one process would, stop
                logger.error("master: worker {} failed to start (exit {})", worker.index, code)
                self._failed_start = True
                self._request_stop("a worker failed to start")
                break
            if time.monotonic() - worker.started_at >= STABLE_AFTER_S:
                worker.failures = 0
            worker.failures += 1
            worker.restarts += 1
            delay = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (worker.failures - 1))
            logger.error(
                "master: worker {} (pid {}) exited with {}; restarting in {:.1f}s",
                worker.index,
                worker.process.pid,
                _exit_text(code),
                delay,
            )
            self._stop.wait(delay)
        worker.state = "stopped"

    def _watch_ready(self, worker: _Worker, read_fd: int) -> None:
        try:
            gevent.os.make_nonblocking(read_fd)
            if gevent.os.nb_read(read_fd, 1) == b"r":
                worker.state = "ready"
                worker.ever_ready = True
                logger.debug("master: worker {} is ready", worker.index)
                if worker.reload_pending and not self.stopping:
                    worker.reload_pending = False
                    logger.info("master: worker {} ready: reloading it as well", worker.index)
                    worker.process.send_signal(signal.SIGHUP)
        except OSError:
            pass
        finally:
            os.close(read_fd)

    # ---- signals ----------------------------------------------------------------------------

    def _on_sighup(self) -> None:
        if self.stopping:
            return
        logs.reopen_log_files()
        logger.info("master: SIGHUP: reloading every worker")
        for worker in self.workers:
            if worker.state == "ready":
                self._signal_worker(worker, signal.SIGHUP)
            else:
                # a starting worker has no SIGHUP handler yet (it ignores SIGHUP, or dies of
                # it before its Python runs): it reloads once it reports ready (_watch_ready)
                worker.reload_pending = True

    def _request_stop(self, reason: str) -> None:
        if self.stopping:
            logger.warning("{} again: exiting at once", reason)
            self._signal_workers(signal.SIGKILL)
            logs.shutdown_logging()
            os._exit(EXIT_FAILURE)
        logger.info("master: received {}, stopping the workers", reason)
        self.stopping = True
        for worker in self.workers:
            worker.stopped_while_starting = worker.state == "starting"
        self._stop_requested_at = time.monotonic()
        # no new connection may wait in a backlog nobody accepts from any more
        with contextlib.suppress(OSError):
            self.listener.close()
        # the same signal: each worker logs what the operator sent
        self._signal_workers(signal.SIGINT if reason == "SIGINT" else signal.SIGTERM)
        self._stop.set()

    def _signal_workers(self, signum: int) -> None:
        for worker in self.workers:
            self._signal_worker(worker, signum)

    @staticmethod
    def _signal_worker(worker: _Worker, signum: int) -> None:
        process = worker.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError):
                process.send_signal(signum)

    # ---- shutdown ---------------------------------------------------------------------------

    def _shutdown(self) -> int:
        deadline = self._stop_requested_at + self.config.graceful_timeout_s + KILL_MARGIN_S
        codes = []
        for worker in self.workers:
            process = worker.process
            if process is None:
                continue
            try:
                code = process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except gevent.subprocess.TimeoutExpired:
                logger.warning("master: worker {} still running: killed", worker.index)
                process.kill()
                code = process.wait()
            codes.append(0 if _stopped_before_ready(worker, code) else code)
            worker.state = "stopped"
        if self._metrics_server is not None:
            self._metrics_server.stop(timeout=1)
        if self.config.bind.kind == "unix":
            listeners.remove_unix_socket(self.config.bind.path)
        shutil.rmtree(self.rundir, ignore_errors=True)
        if self._failed_start:
            return EXIT_FAILURE
        clean = all(code == 0 for code in codes)
        logger.info("master: stopped ({} worker(s) {})", len(codes), "clean" if clean else codes)
        return EXIT_OK if clean else EXIT_FAILURE

    # ---- metrics and health -----------------------------------------------------------------

    def _wsgi_app(self) -> Callable[..., Any]:
        def exposition(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            body = self.render_metrics()
            start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4")])
            return [body]

        return metrics.health_and_metrics_app(exposition, self.not_ready_reason)

    def not_ready_reason(self) -> str | None:
        """None while a worker is ready; else the reason /readyz gives, in one process's words
        ("loading rules", "stopping") where they apply, each worker's state otherwise."""
        if self.stopping:
            return "stopping"
        if any(w.state == "ready" for w in self.workers):
            return None
        if not any(w.ever_ready for w in self.workers):
            return "loading rules"
        states = ", ".join(f"worker {w.index} {w.state}" for w in self.workers)
        return f"no worker ready: {states}"

    def render_metrics(self) -> bytes:
        ready = [w for w in self.workers if w.state == "ready"]
        paths = [os.path.join(self.rundir, f"metrics-{w.index}.sock") for w in ready]
        texts = [t for t in gevent.pool.Group().map(scrape, paths) if t is not None]
        return render_summed(
            texts,
            {state: sum(1 for w in self.workers if w.state == state) for state in WORKER_STATES},
            sum(w.restarts for w in self.workers),
        )


def _stopped_before_ready(worker: _Worker, code: int) -> bool:
    """A worker still compiling its rules when the stop came ends by the signal's default
    action (its handlers come once it serves): a clean stop, as the operator asked."""
    stop_signals = (-signal.SIGTERM, -signal.SIGINT)
    return worker.stopped_while_starting and code in stop_signals


def _exit_text(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


__all__ = ["WORKER_ENV", "Master", "WorkerContext", "worker_count"]
