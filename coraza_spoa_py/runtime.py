"""The running agent: its parts built (``wiring``), then started; signals and graceful shutdown.

``Runtime.start`` builds every part in ``__init__`` (no listening, no serving: a worker only maps
its owner table and wraps its inherited socket there) and then starts them in one
order: the metrics listener before the rules compile (/healthz answers, /readyz says 503), the
SPOP listener once they did, then the signal handlers, the master's readiness byte, the sweeper
(``sweeper``) and the file watcher (``runtime_reload``).

Signals (docs/compatibility.md "Signals and reload", docs/operations.md "Signals"): handlers
only spawn a greenlet or set an event. SIGHUP reopens the log files (logrotate) and reloads;
SIGTERM/SIGINT stop accepting, finish the messages in flight within ``graceful_timeout_s``, run the
logging phase of every open transaction, log "transactions opened=N closed=N" and exit 0; a second
SIGTERM/SIGINT exits at once with status 1.

Must not parse flags or YAML, nor speak SPOP: it only composes the modules that do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
from gevent.pywsgi import WSGIServer
from gevent.threadpool import ThreadPool
from loguru import logger

from coraza_spoa_py import config, logs, metrics, wiring
from coraza_spoa_py.agent import Agent
from coraza_spoa_py.engine.engine_pool import EnginePool
from coraza_spoa_py.master import WorkerContext
from coraza_spoa_py.reload import LoadedEngine, build_applications
from coraza_spoa_py.runtime_reload import Reloader
from coraza_spoa_py.settings import Config
from coraza_spoa_py.sweeper import Sweeper
from coraza_spoa_py.wiring import StartupError

EXIT_OK = 0
EXIT_FORCED = 1
# how often shutdown looks whether the engine threads took the last close
CLOSE_POLL_INTERVAL_S = 0.05


class Runtime:
    """One running agent. ``start()`` builds and binds it, ``run()`` serves until a signal."""

    # one worker of several (master.py); None: the only process
    worker: WorkerContext | None = None

    @classmethod
    def start(
        cls,
        config_path: str,
        loaded: config.LoadedConfig,
        *,
        load: Callable[[], config.LoadedConfig] | None = None,
        autoreload: bool = False,
        metrics_addr: str = "",
        worker: WorkerContext | None = None,
    ) -> Runtime:
        """Compile, build, bind, serve. Raises ``StartupError``.

        ``loaded``: the config, read once by the caller. ``load``: builds the config instead of
        reading ``config_path`` as YAML on reload (the C ModSecurity agent's ``-f`` flags,
        ``modsec_config``); ``config_path`` is then only how logs name it.

        ``worker``: this process is one of a master's workers (docs/architecture.md "Process
        model"): it serves the master's listening socket, hands responses to the worker that
        holds their transaction (``handoff``), serves its metrics on a unix socket for the
        master to sum, and every log line says ``worker=N`` (``cli`` labels it before the config
        is read). The master logged the config's
        notices: a worker does not repeat them."""
        cfg = loaded.config
        threads = cfg.engine_threads_for(worker.count if worker is not None else 1)
        wiring.start_logging(loaded, config_path, threads, log_notices=worker is None)
        # only when exported: Metrics loads prometheus_client (docs/performance.md change 26)
        stats = metrics.Metrics() if metrics_addr else None
        with contextlib.ExitStack() as undo:
            pool = ThreadPool(threads)
            undo.callback(pool.kill)
            scheduler = EnginePool(threads)
            undo.callback(scheduler.close)
            # the metrics listener comes first: /healthz answers while the rules compile,
            # /readyz says 503 until the SPOP listener is bound (docs/operations.md "Health")
            metrics_server = None
            if stats is not None:
                stats.readiness.set_not_ready("loading rules")
                metrics_server = wiring.start_metrics(metrics_addr, worker, stats)
            undo.callback(wiring.stop_metrics, metrics_server)
            engines = wiring.compile_engines(cfg, pool, scheduler)
            runtime = cls(
                config_path, load, cfg, engines, pool, scheduler, stats, metrics_server, worker
            )
            runtime._listen()
            undo.pop_all()
        runtime._serve(autoreload)
        return runtime

    def __init__(
        self,
        config_path: str,
        load: Callable[[], config.LoadedConfig] | None,
        cfg: Config,
        engines: list[LoadedEngine],
        pool: ThreadPool,
        scheduler: EnginePool,
        stats: metrics.Metrics | None,
        metrics_server: WSGIServer | None,
        worker: WorkerContext | None,
    ) -> None:
        """Every part, built and not started (``start`` compiled the rules)."""
        self.worker = worker
        self.pool = pool
        self.scheduler = scheduler
        self._metrics_server = metrics_server
        # the counters only where they are exported
        self._metrics = stats if metrics_server is not None else None
        applications = build_applications(cfg, engines, scheduler)
        if self._metrics is not None:
            wiring.observe(applications, self._metrics)
        self.agent = Agent(
            applications,
            cfg.default_application,
            check_request_app=wiring.check_request_apps(lambda: self.config, pool, scheduler),
        )
        self.reloader = Reloader(
            config_path,
            load,
            cfg,
            applications,
            agent=self.agent,
            pool=pool,
            scheduler=scheduler,
            stats=self._metrics,
            processes=worker.count if worker is not None else 1,
            log_notices=worker is None or worker.index == 1,
        )
        handler: Callable[..., Any] = self.agent.handle
        self.router = wiring.router(worker, self.agent) if worker is not None else None
        self._handoff_server = None
        if worker is not None and self.router is not None:
            handler = self.router.handle
            self._handoff_server = wiring.handoff_server(cfg, worker, self.router)
        # the NOTIFY histogram only where it is exported: it costs the hub a lock and two clock
        # reads per message (docs/performance.md change 24)
        if self._metrics is not None:
            handler = self._metrics.timed(handler)
        self.server = wiring.spop_server(cfg, handler, worker)
        if stats is not None:
            stats.sources = self._metric_sources()
        self.sweeper = Sweeper(
            self.agent,
            pool,
            master_pid=worker.master_pid if worker is not None else None,
            on_master_gone=self.request_stop,
        )
        self._stop = gevent.event.Event()
        self._stop_reason = ""
        self._stop_requested_at: float | None = None
        self._greenlets: list[gevent.Greenlet[Any, Any]] = []

    def _metric_sources(self) -> metrics.Sources:
        router = self.router
        return metrics.Sources(
            transactions=self.agent.stats,
            connections=lambda: self.server.connection_count,
            reloads=self.reloader.counts,
            engine=wiring.engine_version(),
            unknown_messages=lambda: self.agent.unknown_messages,
            unknown_applications=lambda: self.agent.unknown_applications,
            routes=(lambda: router.counts) if router is not None else dict,
        )

    @property
    def config(self) -> Config:
        """The config in effect (the last one that reloaded)."""
        return self.reloader.config

    def _listen(self) -> None:
        try:
            self.server.start()
            if self._handoff_server is not None:
                self._handoff_server.start()
        except OSError as exc:
            bind = self.config.bind
            raise StartupError(f"cannot listen on {bind}: {exc.strerror or exc}") from exc

    def _serve(self, autoreload: bool) -> None:
        if self._metrics is not None:
            self._metrics.readiness.set_ready()
        # bound and ready: the signals first (the master forwards SIGHUP to a worker once it
        # said ready), then tell the master, then the sweeper and the watcher
        self._install_signal_handlers()
        if self.worker is not None:
            # the master counts this worker as started (master._watch_ready)
            os.write(self.worker.ready_fd, b"r")
            os.close(self.worker.ready_fd)
        self._greenlets.append(gevent.spawn(self.sweeper.run))
        if autoreload:
            self._greenlets.append(self.reloader.start_watcher())

    # ---- serving ----------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or ``request_stop``), then shut down; the exit code."""
        self._stop.wait()
        return self.shutdown()

    def reload(self, reason: str, *, reopen_logs: bool = False) -> bool:
        """Re-read the config and swap the applications; False keeps the old ones."""
        return self.reloader.reload(reason, reopen_logs=reopen_logs)

    def request_stop(self, reason: str) -> None:
        if self._stop.is_set() and self.worker is not None:
            # a worker gets the signal from its master and often from whoever signalled the
            # whole group (a terminal's Ctrl-C, systemd's control-group kill): the operator's
            # second signal reaches the master, which kills the workers (master.py)
            return
        if self._stop.is_set():
            # second SIGTERM/SIGINT: the operator does not want to wait (uvicorn force_exit)
            logger.warning("{} again: exiting at once", reason)
            logs.shutdown_logging()
            os._exit(EXIT_FORCED)
        self._stop_reason = reason
        self._stop_requested_at = time.monotonic()
        logger.info("received {}, shutting down", reason)
        self._stop.set()

    def _install_signal_handlers(self) -> None:
        # gevent runs these in the hub's loop: only set flags or spawn (docs/development.md
        # "Monkey-patch first")
        gevent.signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        gevent.signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        gevent.signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self) -> None:
        if self._stop.is_set():
            return  # shutting down: nothing to reload into
        gevent.spawn(self.reload, "SIGHUP", reopen_logs=True)

    # ---- shutdown ---------------------------------------------------------------------------

    def _wait_for_closes(self, deadline: float) -> int:
        """Wait until the engine threads took every queued job (the closes) or ``deadline``;
        returns how many are still queued."""
        while self.scheduler.waiting and time.monotonic() < deadline:
            gevent.sleep(CLOSE_POLL_INTERVAL_S)
        return self.scheduler.waiting

    def shutdown(self) -> int:
        """Stop accepting, drain, log every open transaction, report the counters."""
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        self.sweeper.stop()
        if self._metrics is not None:
            self._metrics.readiness.set_not_ready("stopping")
        # one budget for the whole shutdown, from the signal: the drain, then the closes; the
        # health listener stays up while the messages drain (/healthz alive, /readyz 503)
        deadline = (self._stop_requested_at or time.monotonic()) + self.config.graceful_timeout_s
        self.server.stop(max(0.0, deadline - time.monotonic()))
        if self._handoff_server is not None:
            # after the drain: the other workers hand this one responses until they drained
            self._handoff_server.stop(max(0.0, deadline - time.monotonic()))
        wiring.stop_metrics(self._metrics_server)
        # logging phase of every transaction still open, current and retired applications;
        # the agent logs the final "transactions opened=N closed=N ..." line
        try:
            closed = self.agent.close_all()
        except Exception:
            logger.exception("closing open transactions failed")
        else:
            logger.info("closed {} open transaction(s) at shutdown", closed)
        unfinished = self._wait_for_closes(deadline)
        if unfinished:
            # 100 k open transactions take the engine threads ~10 s to close (their logging
            # phase, then freeing them: docs/performance.md); past the budget the process
            # leaves without them, the kernel frees their memory (issue 15)
            logger.warning(
                "graceful_timeout_s ({}s) reached: {} transaction close(s) not run (no logging "
                "phase for them); exiting",
                self.config.graceful_timeout_s,
                unfinished,
            )
            logger.info("coraza-spoa-py stopped ({})", self._stop_reason or "stop requested")
            logs.shutdown_logging()
            # not a return: the engine threads are still inside the library, and the
            # interpreter's and C++'s exit handlers must not free it under them
            os._exit(EXIT_OK)
        self.pool.kill()
        self.scheduler.close()
        logger.info("coraza-spoa-py stopped ({})", self._stop_reason or "stop requested")
        return EXIT_OK


__all__ = ["EXIT_FORCED", "EXIT_OK", "Runtime", "StartupError"]
