"""The running agent: wiring, the sweeper, signals, reload, metrics and graceful shutdown.

Wiring (docs/architecture.md "cli wiring"): ``Config`` → logging → one engine per application,
compiled on the engine thread pool → ``Application`` → ``Agent`` → ``AgentServer``.

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
from dataclasses import replace
from typing import Any

import gevent
import gevent.event
import gevent.monkey
from gevent import socket
from gevent.pywsgi import WSGIServer
from gevent.threadpool import ThreadPool
from loguru import logger

from coraza_spoa_py import __version__, config, handoff, logs, metrics, reload, waf
from coraza_spoa_py.agent import Agent
from coraza_spoa_py.application import Application
from coraza_spoa_py.check_request_apps import CheckRequestApps
from coraza_spoa_py.engine_pool import EnginePool
from coraza_spoa_py.master import WorkerContext
from coraza_spoa_py.models import WafEngine
from coraza_spoa_py.server import AgentServer
from coraza_spoa_py.settings import AppConfig, BindAddress, Config

EXIT_OK = 0
EXIT_FORCED = 1
SWEEP_INTERVAL_S = 1.0
# How often the engine's freed heap goes back to the kernel (waf.trim_heap). Measured under the
# soak's load: a trim takes 2.6 ms median, 9 ms p90 (on a pool thread); RSS without trims
# creeps by 3-9 % over a million transactions and springs back within seconds of a trim, so
# the interval sets how far RSS rises above the live heap between two trims.
HEAP_TRIM_EVERY_SWEEPS = 2
SLOW_HEAP_TRIM_S = 0.05
WATCH_INTERVAL_S = 1.0


class StartupError(Exception):
    """The agent cannot start: rules do not compile, a log file or the socket cannot open."""

    def __init__(self, reason: str, problems: list[str] | None = None) -> None:
        self.reason = reason
        self.problems = problems or []
        super().__init__(reason)


class Runtime:
    """One running agent. ``start()`` builds and binds it, ``run()`` serves until a signal."""

    # one worker of several (master.py); None: the only process
    worker: WorkerContext | None = None
    _handoff_server: AgentServer | None = None

    def __init__(
        self,
        config_path: str,
        cfg: Config,
        pool: ThreadPool,
        agent: Agent,
        applications: dict[str, Application],
        server: AgentServer,
    ) -> None:
        self.config_path = config_path
        self.config = cfg
        self.pool = pool
        self.scheduler: EnginePool | None = None
        self.agent = agent
        self.applications = applications
        self.server = server
        self.reloads_done = 0
        self.reloads_failed = 0
        self._stop = gevent.event.Event()
        self._stop_reason = ""
        self._stop_requested_at: float | None = None
        self._reloading = False
        self._reload_again = False
        self._greenlets: list[gevent.Greenlet[Any, Any]] = []
        self._heap_trim: gevent.Greenlet[Any, Any] | None = None
        self._watcher: reload.FileWatcher | None = None
        self._metrics_server: WSGIServer | None = None
        self._metrics: metrics.Metrics | None = None
        self._load: Callable[[], config.LoadedConfig] | None = None
        self._handoff_server: AgentServer | None = None

    # ---- startup ----------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        config_path: str,
        *,
        autoreload: bool = False,
        metrics_addr: str = "",
        load: Callable[[], config.LoadedConfig] | None = None,
        worker: WorkerContext | None = None,
    ) -> Runtime:
        """Load, compile, bind. Raises ``config.ConfigError`` or ``StartupError``.

        ``load``: builds the config instead of reading ``config_path`` as YAML (the C
        ModSecurity agent's ``-f`` flags, ``modsec_config``); ``config_path`` is then only how
        logs name it, and reloads call ``load`` again.

        ``worker``: this process is one of a master's workers (docs/architecture.md "Process
        model"): it serves the master's listening socket, hands responses to the worker that
        holds their transaction (``handoff``), serves its metrics on a unix socket for the
        master to sum, and every log line says ``worker=N``."""
        if worker is not None:
            logger.configure(extra={"worker": worker.index})
        loaded = load() if load is not None else config.load_with_notices(config_path)
        cfg = loaded.config
        threads = cfg.engine_threads_for(worker.count if worker is not None else 1)
        _start_logging(loaded, config_path, threads)
        pool = ThreadPool(threads)
        scheduler = EnginePool(threads)
        # the metrics listener comes first: /healthz answers while the rules compile, /readyz
        # says 503 until the SPOP listener is bound (docs/operations.md "Health")
        stats, metrics_server = _start_metrics(metrics_addr, worker)
        try:
            # compiling goes straight to the pool: seconds of it must not enter the
            # scheduler's average engine time per message
            engines = reload.load_engines(cfg, _executor(pool))
        except reload.RuleLoadError as exc:
            pool.kill()
            scheduler.close()
            _stop_metrics(metrics_server)
            raise StartupError("rules did not load", exc.problems) from exc
        reload.log_loaded(engines)
        applications = reload.build_applications(cfg, engines, scheduler)
        if stats is not None and metrics_server is not None:
            _observe(applications, stats)
        agent = Agent(
            applications,
            cfg.default_application,
            check_request_app=_check_request_apps(lambda: runtime.config, pool, scheduler),
        )
        handler: Callable[..., Any] = agent.handle
        router: handoff.Router | None = None
        if worker is not None:
            router = _router(worker, agent)
            handler = router.handle
        if stats is not None:
            stats.sources = metrics.Sources(
                transactions=agent.stats,
                connections=lambda: server.connection_count,
                reloads=lambda: (runtime.reloads_done, runtime.reloads_failed),
                engine=_engine_version(),
                unknown_messages=lambda: agent.unknown_messages,
                unknown_applications=lambda: agent.unknown_applications,
                routes=(lambda: router.counts) if router is not None else dict,
            )
        server = AgentServer(
            cfg.bind,
            # the NOTIFY histogram only where it is exported: it costs the hub a lock and two
            # clock reads per message (docs/performance.md change 24)
            stats.timed(handler) if stats is not None and metrics_server is not None else handler,
            max_frame_size=cfg.max_frame_size,
            max_connections=cfg.max_connections,
            idle_timeout_s=cfg.idle_timeout_s,
            max_connections_per_source=cfg.max_connections_per_source,
            hello_timeout_s=cfg.hello_timeout_s,
            frame_timeout_s=cfg.frame_timeout_s,
            listener=socket.socket(fileno=worker.listen_fd) if worker is not None else None,
        )
        handoff_server = _handoff_server(cfg, worker, router)
        try:
            _listen(server, handoff_server)
        except OSError as exc:
            pool.kill()
            scheduler.close()
            _stop_metrics(metrics_server)
            raise StartupError(f"cannot listen on {cfg.bind}: {exc.strerror or exc}") from exc
        runtime = cls(config_path, cfg, pool, agent, applications, server)
        runtime._load = load
        runtime.scheduler = scheduler
        runtime._metrics_server = metrics_server
        runtime._metrics = stats if metrics_server is not None else None
        runtime.worker = worker
        runtime._handoff_server = handoff_server
        if stats is not None:
            stats.readiness.set_ready()
        runtime._serving(autoreload)
        return runtime

    def _serving(self, autoreload: bool) -> None:
        # bound and ready: the signals first (the master forwards SIGHUP to a worker once it
        # said ready), then tell the master, then the sweeper and the watcher
        self._install_signal_handlers()
        if self.worker is not None:
            # the master counts this worker as started (master._watch_ready)
            os.write(self.worker.ready_fd, b"r")
            os.close(self.worker.ready_fd)
        self._greenlets.append(gevent.spawn(self._sweep_forever))
        if autoreload:
            self._start_watcher()

    # ---- serving ----------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or ``request_stop``), then shut down; the exit code."""
        self._stop.wait()
        return self.shutdown()

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

    def _sweep_forever(self) -> None:
        sweeps = 0
        while True:
            gevent.sleep(SWEEP_INTERVAL_S)
            if self.worker is not None and os.getppid() != self.worker.master_pid:
                # the master is gone (killed): nobody restarts or stops this worker any more
                self.request_stop("the master process exited")
                return
            self.sweep_once()
            # log files are block buffered (logs.py): a line reaches the file within a second
            logs.flush_log_files()
            sweeps += 1
            # its own greenlet: behind a rule compile on the pool, a trim can wait for seconds,
            # and the sweeps must not
            trim_running = self._heap_trim is not None and not self._heap_trim.dead
            if sweeps % HEAP_TRIM_EVERY_SWEEPS == 0 and not trim_running:
                self._heap_trim = gevent.spawn(self.trim_heap)

    def trim_heap(self) -> None:
        """Return the engine's freed heap to the kernel. malloc_trim takes the malloc arenas'
        locks in turn: a pool thread waits for them, the hub does not."""
        took: float = self.pool.apply(_timed_heap_trim)
        if took >= SLOW_HEAP_TRIM_S:
            logger.debug("returning the freed heap to the kernel took {:.1f} ms", took * 1000)

    def sweep_once(self) -> None:
        # the agent sweeps the current applications and the retired ones still holding
        # pre-reload transactions, and drops those once they are empty
        try:
            self.agent.sweep()
        except Exception:
            logger.exception("sweeping expired transactions failed")

    # ---- reload -----------------------------------------------------------------------------

    def reload(self, reason: str, *, reopen_logs: bool = False) -> bool:
        """Re-read the config, compile off the hub, swap atomically; False keeps the old one."""
        if reopen_logs:
            logs.reopen_log_files()
        if self._reloading:
            self._reload_again = True
            return False
        self._reloading = True
        try:
            ok = self._reload_once(reason)
            while self._reload_again:
                self._reload_again = False
                ok = self._reload_once(reason)
            return ok
        finally:
            self._reloading = False

    def _reload_once(self, reason: str) -> bool:
        logger.info("reloading configuration {} ({})", self.config_path, reason)
        problems = self._try_reload()
        if problems:
            self.reloads_failed += 1
            for problem in problems:
                logger.error("reload: {}", problem)
            logger.error("failed to reload configuration, using old configuration")
            return False
        self.reloads_done += 1
        logger.info("configuration successfully reloaded")
        return True

    def _try_reload(self) -> list[str]:
        try:
            loaded = self._load() if self._load else config.load_with_notices(self.config_path)
        except config.ConfigError as exc:
            return [p.render(exc.source) for p in exc.problems]
        cfg = loaded.config
        if cfg.bind != self.config.bind:
            return [
                f"bind changed from {self.config.bind} to {cfg.bind}: the listening address "
                "cannot change on reload, restart the agent to change it"
            ]
        try:
            engines = reload.load_engines(cfg, _executor(self.pool))
        except reload.RuleLoadError as exc:
            return exc.problems
        try:
            logs.configure_logging(cfg)
        except logs.LoggingSetupError as exc:
            return [str(exc)]
        for notice in loaded.notices:
            logger.warning(notice)
        reload.log_loaded(engines)
        _warn_restart_only(self.config, cfg)
        processes = self.worker.count if self.worker is not None else 1
        threads = cfg.engine_threads_for(processes)
        if threads != self.config.engine_threads_for(processes):
            self.pool.maxsize = threads
            if self.scheduler is not None:
                self.scheduler.resize(threads)
        executor: Callable[[Callable[[], Any]], Any] = self.scheduler or _executor(self.pool)
        applications = reload.build_applications(cfg, engines, executor)
        if self._metrics is not None:
            _observe(applications, self._metrics)
        # the agent keeps the old applications for the responses of requests they saw and
        # sweeps them until they are empty (docs/compatibility.md "Signals and reload")
        self.agent.replace(applications, cfg.default_application)
        logger.info(reload.swap_report(self.applications, applications))
        self.applications = applications
        self.config = cfg
        if self._watcher is not None:
            self._watcher.watch(self._watched_files())
        return []

    def _watched_files(self) -> list[str]:
        # with -f there is no YAML file: the -f files are the config's Include lines
        own = [] if self._load is not None else [self.config_path]
        return [*own, *reload.rule_files(self.config)]

    def _start_watcher(self) -> None:
        self._watcher = reload.FileWatcher(self._watched_files())
        logger.info("autoreload: watching {} file(s)", len(self._watcher.paths))
        watcher = self._watcher

        def on_change(paths: list[str]) -> None:
            logger.info("autoreload: changed {}", ", ".join(paths))
            self.reload("autoreload")

        self._greenlets.append(
            gevent.spawn(reload.watch_forever, watcher, on_change, gevent.sleep, WATCH_INTERVAL_S)
        )

    # ---- shutdown ---------------------------------------------------------------------------

    def _wait_for_closes(self, deadline: float) -> int:
        """Wait until the engine threads took every queued job (the closes) or ``deadline``;
        returns how many are still queued."""
        scheduler = self.scheduler
        if scheduler is None:
            return 0
        while scheduler.waiting and time.monotonic() < deadline:
            gevent.sleep(CLOSE_POLL_INTERVAL_S)
        return scheduler.waiting

    def shutdown(self) -> int:
        """Stop accepting, drain, log every open transaction, report the counters."""
        for greenlet in self._greenlets:
            greenlet.kill(block=False)
        if self._heap_trim is not None:
            self._heap_trim.kill(block=False)
        if self._metrics is not None:
            self._metrics.readiness.set_not_ready("stopping")
        # one budget for the whole shutdown, from the signal: the drain, then the closes; the
        # health listener stays up while the messages drain (/healthz alive, /readyz 503)
        deadline = (self._stop_requested_at or time.monotonic()) + self.config.graceful_timeout_s
        self.server.stop(max(0.0, deadline - time.monotonic()))
        if self._handoff_server is not None:
            # after the drain: the other workers hand this one responses until they drained
            self._handoff_server.stop(max(0.0, deadline - time.monotonic()))
        _stop_metrics(self._metrics_server)
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
        if self.scheduler is not None:
            self.scheduler.close()
        logger.info("coraza-spoa-py stopped ({})", self._stop_reason or "stop requested")
        return EXIT_OK


def _start_metrics(
    metrics_addr: str, worker: WorkerContext | None
) -> tuple[metrics.Metrics | None, WSGIServer | None]:
    # only when exported: Metrics loads prometheus_client (docs/performance.md change 26)
    if not metrics_addr:
        return None, None
    stats = metrics.Metrics()
    server = (
        metrics.serve_http(metrics_addr, metrics.wsgi_app(stats))
        if worker is None
        else _start_worker_metrics(worker.metrics_socket(), stats)
    )
    stats.readiness.set_not_ready("loading rules")
    return stats, server


def _start_worker_metrics(path: str, stats: metrics.Metrics) -> WSGIServer | None:
    # a worker's metrics, for its master to sum (master.Master.render_metrics)
    try:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        listener.bind(path)
        listener.listen(16)
        server = WSGIServer(listener, metrics.wsgi_app(stats), log=None)
        server.start()
    except OSError as exc:
        logger.error("cannot serve this worker's metrics on {}: {}", path, exc)
        return None
    return server


def _router(worker: WorkerContext, agent: Agent) -> handoff.Router:
    table = handoff.OwnerTable(worker.owner_table)
    peers = {
        index: handoff.HandoffClient(worker.handoff_socket(index))
        for index in range(1, worker.count + 1)
        if index != worker.index
    }
    return handoff.Router(agent.handle, table, worker.index, peers.get)


def _stop_metrics(server: WSGIServer | None) -> None:
    if server is not None:
        server.stop(timeout=1)


def _observe(applications: dict[str, Application], stats: metrics.Metrics) -> None:
    # per-application and per-rule counters (docs/operations.md "Metrics")
    for application in applications.values():
        application.observer = stats.observe


def _start_logging(loaded: config.LoadedConfig, config_path: str, threads: int) -> None:
    """Logging as the config says, then the config's notices and the start line."""
    cfg = loaded.config
    try:
        logs.configure_logging(cfg)
    except logs.LoggingSetupError as exc:
        raise StartupError("cannot set up logging", [str(exc)]) from exc
    for notice in loaded.notices:
        logger.warning(notice)
    logger.info(
        "starting coraza-spoa-py {}: config {} ({} application(s), {} engine thread(s))",
        __version__,
        config_path,
        len(cfg.applications),
        threads,
    )
    if not cfg.applications:
        logger.warning("no applications defined: every message will be answered with error")


def _listen(server: AgentServer, handoff_server: AgentServer | None) -> None:
    server.start()
    if handoff_server is not None:
        handoff_server.start()


def _handoff_server(
    cfg: Config, worker: WorkerContext | None, router: handoff.Router | None
) -> AgentServer | None:
    """A worker's unix socket where the other workers hand it the responses it holds the
    transaction of (docs/architecture.md "Process model"); none for one process."""
    if worker is None or router is None:
        return None
    return AgentServer(
        BindAddress(kind="unix", path=worker.handoff_socket(worker.index)),
        router.handle_handed_off,
        max_frame_size=cfg.max_frame_size,
        idle_timeout_s=cfg.idle_timeout_s,
    )


def _check_request_apps(
    current: Callable[[], Config], pool: ThreadPool, scheduler: EnginePool
) -> CheckRequestApps:
    # check-request copies of the applications (ignorerules): compiled on the pool like a
    # reload, run on the engine threads like every application
    def compile_rules(app: AppConfig) -> WafEngine:
        # reload's compile: a rules error comes back as RuleLoadError, never as a traceback
        # printed by the pool thread
        (loaded,) = reload.load_engines(replace(current(), applications=(app,)), _executor(pool))
        engine: Any = loaded.engine
        engine.runner = scheduler
        return engine  # type: ignore[no-any-return]

    def build(app: AppConfig, engine: WafEngine) -> Application:
        budget_s = current().processing_budget_ms / 1000
        return Application(app, engine, scheduler, processing_budget_s=budget_s)

    return CheckRequestApps(compile_rules, build)


# how often shutdown looks whether the engine threads took the last close
CLOSE_POLL_INTERVAL_S = 0.05


def _executor(pool: ThreadPool) -> Callable[[Callable[[], Any]], Any]:
    def run(work: Callable[[], Any]) -> Any:
        return pool.apply(work)

    return run


def _timed_heap_trim() -> float:
    # on a pool thread: no logging here (loguru's lock may be gevent's)
    started = time.monotonic()
    waf.trim_heap()
    return time.monotonic() - started


def _engine_version() -> str:
    try:
        return waf.engine_version()
    except Exception:  # the version is a label; the engine already loaded the rules
        return ""


def _warn_restart_only(old: Config, new: Config) -> None:
    for name in (
        "max_frame_size",
        "max_connections",
        "max_connections_per_source",
        "idle_timeout_s",
        "hello_timeout_s",
        "frame_timeout_s",
        "workers",
    ):
        if getattr(old, name) != getattr(new, name):
            logger.warning("{} changed: it takes effect when the agent restarts", name)
