"""How the running agent's parts are built (docs/architecture.md "cli wiring"): ``Config`` →
logging → one engine per application, compiled on the engine thread pool → ``Application`` →
``Agent`` → ``AgentServer``; in a worker of several, the hand-off ``Router`` and socket and the
metrics socket. Each function builds one part; ``runtime.Runtime`` puts them together and starts
them.

Must not parse flags or YAML, nor speak SPOP: it only composes the modules that do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gevent import socket
from gevent.pywsgi import WSGIServer
from gevent.threadpool import ThreadPool
from loguru import logger

from coraza_spoa_py import __version__, allocator, config, handoff, logs, metrics, reload
from coraza_spoa_py import engine as waf
from coraza_spoa_py.agent import Agent
from coraza_spoa_py.application import Application, rule_match_records_logged
from coraza_spoa_py.check_request_apps import CheckRequestApps
from coraza_spoa_py.engine.engine_pool import EnginePool
from coraza_spoa_py.master import WorkerContext
from coraza_spoa_py.models import WafEngine
from coraza_spoa_py.server import AgentServer, Handler
from coraza_spoa_py.settings import AppConfig, BindAddress, Config
from coraza_spoa_py.worker_metrics import serve_worker_metrics


class StartupError(Exception):
    """The agent cannot start: rules do not compile, a log file or the socket cannot open."""

    def __init__(self, reason: str, problems: list[str] | None = None) -> None:
        self.reason = reason
        self.problems = problems or []
        super().__init__(reason)


def start_logging(
    loaded: config.LoadedConfig, config_path: str, threads: int, *, log_notices: bool
) -> None:
    """Logging as the config says, then the config's notices (unless the master logged them
    already) and the start line."""
    cfg = loaded.config
    try:
        configure_logging(cfg)
    except logs.LoggingSetupError as exc:
        raise StartupError("cannot set up logging", [str(exc)]) from exc
    if log_notices:
        for notice in loaded.notices:
            logger.warning(notice)
    logger.info(
        "starting coraza-spoa-py {}: config {} ({} application(s), {} engine thread(s)); {}",
        __version__,
        config_path,
        len(cfg.applications),
        threads,
        allocator.describe(),
    )
    problem = allocator.misconfigured()
    if problem is not None:
        logger.warning("{}: running on the C library's allocator", problem)
    if not cfg.applications:
        logger.warning("no applications defined: every message will be answered with error")


def configure_logging(cfg: Config) -> None:
    """``logs.configure_logging`` for a process that runs engines (at start and on every
    reload): the engine then formats rule matches' text lines only while a sink may log them
    (docs/performance.md change 54). Raises ``logs.LoggingSetupError`` as it does."""
    logs.configure_logging(cfg)
    waf.set_match_text(rule_match_records_logged())


def compile_engines(
    cfg: Config, pool: ThreadPool, scheduler: EnginePool
) -> list[reload.LoadedEngine]:
    """Every application's rules, compiled on ``pool`` into engines whose jobs ``scheduler``
    runs; ``StartupError`` with the problems."""
    try:
        # compiling goes straight to the pool: seconds of it must not enter the scheduler's
        # average engine time per message
        engines = reload.load_engines(cfg, executor(pool), scheduler)
    except reload.RuleLoadError as exc:
        raise StartupError("rules did not load", exc.problems) from exc
    reload.log_loaded(engines)
    return engines


def start_metrics(
    metrics_addr: str, worker: WorkerContext | None, stats: metrics.Metrics
) -> WSGIServer | None:
    """``-metrics-addr``: one process serves it; a worker serves its metrics on a unix socket
    for its master to sum. None when not asked for or not started (logged)."""
    if not metrics_addr:
        return None
    if worker is not None:
        return serve_worker_metrics(worker.metrics_socket(), stats)
    return metrics.serve_http(metrics_addr, metrics.wsgi_app(stats))


def stop_metrics(server: WSGIServer | None) -> None:
    if server is not None:
        server.stop(timeout=1)


def spop_server(cfg: Config, handler: Handler, worker: WorkerContext | None) -> AgentServer:
    """The SPOP listener: ``bind``, or in a worker the master's inherited socket."""
    return AgentServer(
        cfg.bind,
        handler,
        max_frame_size=cfg.max_frame_size,
        max_connections=cfg.max_connections,
        idle_timeout_s=cfg.idle_timeout_s,
        max_connections_per_source=cfg.max_connections_per_source,
        hello_timeout_s=cfg.hello_timeout_s,
        frame_timeout_s=cfg.frame_timeout_s,
        listener=socket.socket(fileno=worker.listen_fd) if worker is not None else None,
    )


def router(worker: WorkerContext, agent: Agent) -> handoff.Router:
    table = handoff.OwnerTable(worker.owner_table)
    peers = {
        index: handoff.HandoffClient(worker.handoff_socket(index))
        for index in range(1, worker.count + 1)
        if index != worker.index
    }
    return handoff.Router(agent.handle, table, worker.index, peers.get)


def handoff_server(cfg: Config, worker: WorkerContext, router: handoff.Router) -> AgentServer:
    """A worker's unix socket where the other workers hand it the responses it holds the
    transaction of (docs/architecture.md "Process model")."""
    return AgentServer(
        BindAddress(kind="unix", path=worker.handoff_socket(worker.index)),
        router.handle_handed_off,
        max_frame_size=cfg.max_frame_size,
        idle_timeout_s=cfg.idle_timeout_s,
    )


def check_request_apps(
    current: Callable[[], Config], pool: ThreadPool, scheduler: EnginePool
) -> CheckRequestApps:
    # check-request copies of the applications (ignorerules): compiled on the pool like a
    # reload, run on the engine threads like every application
    def compile_rules(app: AppConfig) -> WafEngine:
        # reload's compile: a rules error comes back as RuleLoadError, never as a traceback
        # printed by the pool thread
        only = replace(current(), applications=(app,))
        (loaded,) = reload.load_engines(only, executor(pool), scheduler)
        return loaded.engine

    def build(app: AppConfig, engine: WafEngine) -> Application:
        budget_s = current().processing_budget_ms / 1000
        return Application(app, engine, scheduler, processing_budget_s=budget_s)

    return CheckRequestApps(compile_rules, build)


def executor(pool: ThreadPool) -> Callable[[Callable[[], Any]], Any]:
    def run(work: Callable[[], Any]) -> Any:
        return pool.apply(work)

    return run


def observe(applications: dict[str, Application], stats: metrics.Metrics) -> None:
    # per-application and per-rule counters (docs/operations.md "Metrics")
    for application in applications.values():
        application.observer = stats.observe


def engine_version() -> str:
    try:
        return waf.engine_version()
    except Exception:  # the version is a label; the engine already loaded the rules
        return ""


__all__ = ["StartupError"]
