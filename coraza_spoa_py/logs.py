"""Logging setup: the ONLY place loguru sinks are added or removed (docs/development.md
"Logging in one place").

Two kinds of log, as in coraza-spoa (docs/compatibility.md "Logging"): the agent log (top-level
``log_*`` keys: startup, signals, reload, connections, routing) and one log per application
(per-app ``log_*`` keys: rule matches and the app's own lines). A record belongs to an
application when it was bound with an ``app`` extra; an application without log settings of its
own writes to the agent log.

Every sink is one of our ``_Sink`` objects, rendering with ``log_render`` and writing to a file
handle we own, so SIGHUP can reopen files after logrotate moved them (docs/compatibility.md
"Signals and reload"). ``enqueue=True`` is never used: its queue thread hangs under gevent
(loguru #258, #284).

Must not decide what is logged or at which level: modules do that with ``logger.bind(...)``.
This module decides where records go; ``log_render`` how they look.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from loguru import logger

from coraza_spoa_py.log_render import render_console, render_json
from coraza_spoa_py.settings import DEFAULT_LOG_LEVEL, Config, LogConfig

# zerolog / Go level names (what coraza-spoa configs say) → loguru's numeric levels.
# zerolog also accepts its numeric levels as strings: -1 trace … 5 panic, 7 disabled.
LEVELS: Mapping[str, int | None] = {
    "trace": 5,
    "debug": 10,
    "info": 20,
    "success": 25,
    "warn": 30,
    "warning": 30,
    "error": 40,
    "fatal": 50,
    "critical": 50,
    "panic": 50,
    "disabled": None,
    "-1": 5,
    "0": 10,
    "1": 20,
    "2": 30,
    "3": 40,
    "4": 50,
    "5": 50,
    "7": None,
}
STDOUT_NAMES = frozenset({"", "/dev/stdout", "stdout"})
STDERR_NAMES = frozenset({"/dev/stderr", "stderr"})
DEVNULL_NAMES = frozenset({"/dev/null"})
# a log file's write buffer: flushed when full, every second (runtime sweeper) and on close
FILE_BUFFER_BYTES = 65536
# Gen1 ``log.dir`` (docs/compatibility.md "Gen1 keys"): below error → server.log, error and up →
# error.log
GEN1_SERVER_LOG = "server.log"
GEN1_ERROR_LOG = "error.log"
ERROR_LEVEL_NO = 40


class LoggingSetupError(Exception):
    """A log file could not be opened; startup is fatal, a reload keeps the old sinks."""


def level_number(name: str) -> int | None:
    """The loguru level number for a config level name; None means disabled."""
    try:
        return LEVELS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r}") from None


class _Handle:
    """One open destination. Files can be reopened (logrotate); stdout/stderr cannot."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._stream: IO[str] | None = None
        self._owned = False
        self.open()

    def open(self) -> None:
        if self.target in STDOUT_NAMES:
            self._stream, self._owned = sys.stdout, False
        elif self.target in STDERR_NAMES:
            self._stream, self._owned = sys.stderr, False
        else:
            folder = os.path.dirname(self.target)
            try:
                if folder:
                    os.makedirs(folder, exist_ok=True)
                # appended (several processes or logrotate copytruncate work) and block
                # buffered: one write() per record cost the hub a syscall per rule match
                # (docs/performance.md item 5); ``flush_log_files`` runs every second from the
                # sweeper, and close/reopen (shutdown, SIGHUP) flush too
                stream = open(  # noqa: SIM115 - closed by close()/reopen()
                    self.target,
                    "a",
                    buffering=FILE_BUFFER_BYTES,
                    encoding="utf-8",
                    errors="backslashreplace",
                )
            except OSError as exc:
                raise LoggingSetupError(f"cannot open log file {self.target}: {exc}") from exc
            self._stream, self._owned = stream, True

    def reopen(self) -> None:
        with self._lock:
            if not self._owned:
                return
            old = self._stream
            self.open()
            if old is not None:
                old.close()

    def write(self, text: str) -> None:
        with self._lock:
            stream = self._stream
            if stream is None:
                return
            try:
                stream.write(text)
                if not self._owned:
                    stream.flush()  # the console: whoever watches it sees each line at once
            except (OSError, ValueError):
                # a closed pipe or a full disk must not crash request handling
                pass

    def flush(self) -> None:
        with self._lock:
            if self._stream is None:
                return
            with contextlib.suppress(OSError, ValueError):  # as in write()
                self._stream.flush()

    def close(self) -> None:
        with self._lock:
            if self._owned and self._stream is not None:
                self._stream.close()
            self._stream = None


@dataclass
class _SinkSpec:
    handle: _Handle
    json_format: bool
    min_level: int
    below_level: int | None = None  # exclusive upper bound (Gen1 server.log)


class _Sink:
    """A loguru sink: renders the record itself (console or JSON) and writes one whole line."""

    def __init__(self, spec: _SinkSpec) -> None:
        self.spec = spec

    def __call__(self, message: Any) -> None:
        record = message.record
        if self.spec.below_level is not None and record["level"].no >= self.spec.below_level:
            return
        render = render_json if self.spec.json_format else render_console
        self.spec.handle.write(render(record))


class LogSetup:
    """The sinks of one configuration; kept so SIGHUP can reopen their files."""

    def __init__(self) -> None:
        self._handles: dict[str, _Handle] = {}
        self._sink_ids: list[int] = []

    def handle(self, target: str) -> _Handle:
        key = "/dev/stdout" if target in STDOUT_NAMES else target
        key = "/dev/stderr" if key in STDERR_NAMES else key
        if key not in self._handles:
            self._handles[key] = _Handle(key)
        return self._handles[key]

    def reopen(self) -> None:
        for handle in self._handles.values():
            handle.reopen()

    def flush(self) -> None:
        for handle in self._handles.values():
            handle.flush()

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


_current: LogSetup | None = None


def _specs(setup: LogSetup, log: LogConfig) -> list[_SinkSpec]:
    minimum = level_number(log.level)
    if minimum is None or log.file in DEVNULL_NAMES and log.dir is None:
        return []
    json_format = log.format == "json"
    if log.dir is not None:
        folder = log.dir
        return [
            _SinkSpec(
                setup.handle(os.path.join(folder, GEN1_SERVER_LOG)),
                json_format,
                minimum,
                below_level=ERROR_LEVEL_NO,
            ),
            _SinkSpec(
                setup.handle(os.path.join(folder, GEN1_ERROR_LOG)),
                json_format,
                max(minimum, ERROR_LEVEL_NO),
            ),
        ]
    return [_SinkSpec(setup.handle(log.file), json_format, minimum)]


def _app_logs(config: Config) -> dict[str, LogConfig]:
    return {app.name: app.log for app in config.applications if app.log is not None}


def configure_logging(config: Config) -> None:
    """Replace every sink with those ``config`` asks for.

    Opens every file first: if one cannot be opened, ``LoggingSetupError`` is raised and the
    sinks already in place stay (a reload must not lose its log).
    """
    global _current
    setup = LogSetup()
    try:
        agent_specs = _specs(setup, config.log)
        app_specs = {name: _specs(setup, log) for name, log in _app_logs(config).items()}
    except (LoggingSetupError, ValueError):
        setup.close()
        raise
    logger.remove()
    own_apps = frozenset(app_specs)

    def agent_filter(record: Any) -> bool:
        return record["extra"].get("app") not in own_apps

    for spec in agent_specs:
        setup._sink_ids.append(
            logger.add(_Sink(spec), level=spec.min_level, filter=agent_filter, format="{message}")
        )
    for name, specs in app_specs.items():
        for spec in specs:
            setup._sink_ids.append(
                logger.add(
                    _Sink(spec),
                    level=spec.min_level,
                    filter=_app_filter(name),
                    format="{message}",
                )
            )
    previous, _current = _current, setup
    if previous is not None:
        _close_unshared(previous, setup)


def _app_filter(name: str) -> Any:
    def accept(record: Any) -> bool:
        return bool(record["extra"].get("app") == name)

    return accept


def _close_unshared(previous: LogSetup, current: LogSetup) -> None:
    # stdout and stderr are never closed; files are, the new setup opened its own handles
    del current
    previous.close()


def configure_bootstrap(level: str = DEFAULT_LOG_LEVEL) -> None:
    """Before the config is read: console lines on stderr (coraza-spoa logs there too)."""
    global _current
    logger.remove()
    if _current is not None:
        _current.close()  # a file log of a failed start: write out what it buffered
    setup = LogSetup()
    spec = _SinkSpec(setup.handle("/dev/stderr"), False, level_number(level) or 20)
    logger.add(_Sink(spec), level=spec.min_level, format="{message}")
    _current = setup


def reopen_log_files() -> None:
    """SIGHUP: reopen every log file so logrotate's renamed files are let go."""
    if _current is not None:
        _current.reopen()


def flush_log_files() -> None:
    """Write out what the log files buffered (the runtime's sweeper calls this every second)."""
    if _current is not None:
        _current.flush()


def shutdown_logging() -> None:
    global _current
    logger.remove()
    if _current is not None:
        _current.close()
        _current = None


def writes_to_console() -> bool:
    """Whether the current setup has a sink on stdout or stderr."""
    return any(target in ("/dev/stdout", "/dev/stderr") for target in open_targets())


def open_targets() -> Iterable[str]:
    """The destinations of the current setup (for tests and the startup line)."""
    return tuple(_current._handles) if _current is not None else ()
