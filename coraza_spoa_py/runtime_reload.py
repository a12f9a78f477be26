"""The running agent's reload (SIGHUP, ``-autoreload``): re-read the config, compile the rules
off the hub, swap the applications atomically; a config or rules error keeps the old ones
(docs/compatibility.md "Signals and reload"). ``reload`` has the pieces (compiling, the file
watcher); this module is their order and the agent's state across reloads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent
from gevent.threadpool import ThreadPool
from loguru import logger

from coraza_spoa_py import config, logs, metrics, reload
from coraza_spoa_py.agent import Agent
from coraza_spoa_py.application import Application
from coraza_spoa_py.engine.engine_pool import EnginePool
from coraza_spoa_py.settings import Config
from coraza_spoa_py.wiring import configure_logging, executor, observe

WATCH_INTERVAL_S = 1.0
# settings a running agent keeps until it restarts (the listener, the caps, the processes)
RESTART_ONLY = (
    "max_frame_size",
    "max_connections",
    "max_connections_per_source",
    "idle_timeout_s",
    "hello_timeout_s",
    "frame_timeout_s",
    "workers",
)


class Reloader:
    """The current config and applications, and how to replace them.

    ``load``: builds the config instead of reading ``config_path`` as YAML (``-f``); then the
    watched files are the config's rule files only. ``log_notices``: False in the workers but
    one, which would each repeat the same config notices."""

    def __init__(
        self,
        config_path: str,
        load: Callable[[], config.LoadedConfig] | None,
        cfg: Config,
        applications: dict[str, Application],
        *,
        agent: Agent,
        pool: ThreadPool,
        scheduler: EnginePool,
        stats: metrics.Metrics | None,
        processes: int,
        log_notices: bool,
    ) -> None:
        self.config_path = config_path
        self.load = load
        self.config = cfg
        self.applications = applications
        self.agent = agent
        self.pool = pool
        self.scheduler = scheduler
        self.stats = stats
        self.processes = processes
        self.log_notices = log_notices
        self.done = 0
        self.failed = 0
        self._reloading = False
        self._again = False
        self._watcher: reload.FileWatcher | None = None

    def counts(self) -> tuple[int, int]:
        """(reloads done, reloads failed), for the metrics."""
        return self.done, self.failed

    def reload(self, reason: str, *, reopen_logs: bool = False) -> bool:
        """Re-read the config, compile off the hub, swap atomically; False keeps the old one.
        A reload asked for during one runs once it is done."""
        if reopen_logs:
            logs.reopen_log_files()
        if self._reloading:
            self._again = True
            return False
        self._reloading = True
        try:
            ok = self._reload_once(reason)
            while self._again:
                self._again = False
                ok = self._reload_once(reason)
            return ok
        finally:
            self._reloading = False

    def _reload_once(self, reason: str) -> bool:
        logger.info("reloading configuration {} ({})", self.config_path, reason)
        problems = self._try_reload()
        if problems:
            self.failed += 1
            for problem in problems:
                logger.error("reload: {}", problem)
            logger.error("failed to reload configuration, using old configuration")
            return False
        self.done += 1
        logger.info("configuration successfully reloaded")
        return True

    def _try_reload(self) -> list[str]:
        try:
            loaded = self.load() if self.load else config.load_with_notices(self.config_path)
        except config.ConfigError as exc:
            return [p.render(exc.source) for p in exc.problems]
        cfg = loaded.config
        if cfg.bind != self.config.bind:
            return [
                f"bind changed from {self.config.bind} to {cfg.bind}: the listening address "
                "cannot change on reload, restart the agent to change it"
            ]
        try:
            engines = reload.load_engines(cfg, executor(self.pool), self.scheduler)
        except reload.RuleLoadError as exc:
            return exc.problems
        try:
            configure_logging(cfg)
        except logs.LoggingSetupError as exc:
            return [str(exc)]
        if self.log_notices:
            for notice in loaded.notices:
                logger.warning(notice)
        reload.log_loaded(engines)
        _warn_restart_only(self.config, cfg)
        threads = cfg.engine_threads_for(self.processes)
        if threads != self.config.engine_threads_for(self.processes):
            self.pool.maxsize = threads
            self.scheduler.resize(threads)
        applications = reload.build_applications(cfg, engines, self.scheduler)
        if self.stats is not None:
            observe(applications, self.stats)
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
        own = [] if self.load is not None else [self.config_path]
        return [*own, *reload.rule_files(self.config)]

    def start_watcher(self) -> gevent.Greenlet[Any, Any]:
        """``-autoreload``: a greenlet that reloads when a watched file changes."""
        self._watcher = reload.FileWatcher(self._watched_files())
        logger.info("autoreload: watching {} file(s)", len(self._watcher.paths))

        def on_change(paths: list[str]) -> None:
            logger.info("autoreload: changed {}", ", ".join(paths))
            self.reload("autoreload")

        return gevent.spawn(
            reload.watch_forever, self._watcher, on_change, gevent.sleep, WATCH_INTERVAL_S
        )


def _warn_restart_only(old: Config, new: Config) -> None:
    for name in RESTART_ONLY:
        if getattr(old, name) != getattr(new, name):
            logger.warning("{} changed: it takes effect when the agent restarts", name)


__all__ = ["Reloader"]
