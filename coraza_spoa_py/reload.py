"""Building applications from a config, reloading them, and watching files for -autoreload.

Engine loading is slow (the CRS takes about a second) and blocking C work, so it runs on the
engine thread pool, never on the gevent hub: HAProxy keeps being answered while a reload
compiles (docs/compatibility.md "Signals and reload"). A reload either swaps every application at
once through
``agent.replace`` or changes nothing.

The watcher polls once a second: the config file and every rule file it includes, by
(realpath, inode, size, mtime). A Kubernetes ConfigMap update swaps a ``..data`` symlink, which
changes the realpath; an in-place edit changes mtime and size (coraza-spoa's fsnotify watcher
only saw the former, docs/compatibility.md "Command line").

Must not touch sockets or signals: ``cli`` owns the process lifecycle.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from loguru import logger

from coraza_spoa_py.application import Application
from coraza_spoa_py.engine import RUN_HERE, ModSecEngine, RulesError, load_engine, rules
from coraza_spoa_py.models import EngineScheduler
from coraza_spoa_py.settings import Config

Fingerprint = tuple[str, int, int, int]  # realpath, inode, size, mtime_ns
_INCLUDE = re.compile(r"^\s*Include\s+(\"[^\"]+\"|'[^']+'|\S+)", re.IGNORECASE | re.MULTILINE)


class RuleLoadError(Exception):
    """One or more applications' rules did not compile; ``problems`` name file and line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True, slots=True)
class LoadedEngine:
    name: str
    engine: ModSecEngine

    @property
    def rule_count(self) -> int:
        return self.engine.rule_count

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.engine.warnings


def load_engines(
    config: Config, run: Callable[[Callable[[], Any]], Any], scheduler: EngineScheduler = RUN_HERE
) -> list[LoadedEngine]:
    """Compile every application's rules, each through ``run`` (the thread pool in production),
    into engines whose jobs ``scheduler`` runs (by default on the calling thread: ``-validate``
    runs none).

    Collects the problems of every application before raising, so one run shows them all.
    """
    loaded: list[LoadedEngine] = []
    problems: list[str] = []
    for app_config in config.applications:

        def compile_one(app_config: Any = app_config) -> Any:
            # handed back, not raised: an exception leaving a gevent pool thread is printed
            # with its traceback by the hub before the caller sees it; a rules error is the
            # user's, and gets our one line per problem only (issue 15)
            try:
                return load_engine(app_config, config.rule_paths, scheduler)
            except RulesError as exc:
                return exc

        engine = run(compile_one)
        if isinstance(engine, RulesError):
            problems.extend(f"application {app_config.name!r}: {p}" for p in engine.problems)
            continue
        loaded.append(LoadedEngine(app_config.name, engine))
    if problems:
        raise RuleLoadError(problems)
    return loaded


def build_applications(
    config: Config, engines: Iterable[LoadedEngine], scheduler: EngineScheduler
) -> dict[str, Application]:
    """One ``Application`` per configured application, on the engine ``load_engines`` gave it
    (loaded with the same ``scheduler``)."""
    by_name = {loaded.name: loaded.engine for loaded in engines}
    budget_s = config.processing_budget_ms / 1000
    return {
        app.name: Application(app, by_name[app.name], scheduler, processing_budget_s=budget_s)
        for app in config.applications
    }


# Include nesting followed for -autoreload; ModSecurity itself has no limit, but a cycle must
# not hang the watcher
MAX_INCLUDE_DEPTH = 8


def rule_files(config: Config) -> list[str]:
    """Files the config's ``Include`` lines name, nested Includes too (globs expanded,
    @-aliases resolved), in order, each once."""
    found: dict[str, None] = {}
    for app in config.applications:
        _collect(app.directives, app.base_dir, config, found, depth=0)
    return list(found)


def _collect(text: str, folder: str, config: Config, found: dict[str, None], *, depth: int) -> None:
    for match in _INCLUDE.finditer(text):
        target = match.group(1).strip("\"'")
        if target == "@owasp_crs/*.conf":
            # rules.py also loads Debian's exclusion files kept beside crs-setup.conf; they are
            # the files operators edit most
            setup_dir = os.path.dirname(config.rule_paths.crs_setup_file)
            for name in (rules.EXCLUSIONS_BEFORE, rules.EXCLUSIONS_AFTER):
                found.setdefault(os.path.join(setup_dir, name))
        if target.startswith("@owasp_crs/"):
            target = os.path.join(config.rule_paths.crs_rules_dir, target[len("@owasp_crs/") :])
        elif target == "@crs-setup.conf.example":
            target = config.rule_paths.crs_setup_file
        elif target.startswith("@"):
            continue  # shipped inside the package: changes only with an upgrade
        if not os.path.isabs(target):
            target = os.path.join(folder, target)
        for path in sorted(glob.glob(target)) or [target]:
            if path in found:
                continue
            found[path] = None
            if depth < MAX_INCLUDE_DEPTH:
                # a nested relative Include is relative to the file that contains it
                _collect(_read(path), os.path.dirname(path), config, found, depth=depth + 1)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            return stream.read()
    except OSError:
        return ""


def fingerprint(path: str) -> Fingerprint | None:
    try:
        real = os.path.realpath(path)
        stat = os.stat(real)
    except OSError:
        return None
    return real, stat.st_ino, stat.st_size, stat.st_mtime_ns


class _Sleeper(Protocol):
    def __call__(self, seconds: float) -> Any: ...


class FileWatcher:
    """Remembers the fingerprints of a set of files; ``changed()`` says which moved since."""

    def __init__(self, paths: Iterable[str]) -> None:
        self._state: dict[str, Fingerprint | None] = {}
        self.watch(paths)

    def watch(self, paths: Iterable[str]) -> None:
        self._state = {path: fingerprint(path) for path in paths}

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self._state)

    def changed(self) -> list[str]:
        moved = []
        for path, before in self._state.items():
            now = fingerprint(path)
            if now != before:
                moved.append(path)
                self._state[path] = now
        return moved


def watch_forever(
    watcher: FileWatcher,
    on_change: Callable[[list[str]], None],
    sleep: _Sleeper,
    interval_s: float = 1.0,
) -> None:
    """Poll ``watcher`` every ``interval_s`` and call ``on_change`` (run it in a greenlet)."""
    while True:
        sleep(interval_s)
        moved = watcher.changed()
        if moved:
            # an editor writing in several steps: let it finish before reading the file
            sleep(min(interval_s, 0.2))
            watcher.changed()
            on_change(moved)


def swap_report(old: Mapping[str, Application], new: Mapping[str, Application]) -> str:
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    kept = sorted(set(new) & set(old))
    return f"applications: reloaded={kept} added={added} removed={removed}"


def log_loaded(engines: Iterable[LoadedEngine]) -> None:
    for loaded in engines:
        for warning in loaded.warnings:
            logger.bind(app=loaded.name).warning("rule directive dropped: {}", warning)
        logger.info("application {} loaded: {} rules", loaded.name, loaded.rule_count)
