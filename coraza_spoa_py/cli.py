"""The entry point: gevent monkey-patching first, then flags → ``-version``, ``-validate`` or
running the agent (``runtime``), and the process exit code.

gevent must patch socket, threading, ssl … before anything imports them, so the patching is the
first statement of this module (docs/development.md "Monkey-patch first";
``coraza_spoa_py/__init__.py`` imports nothing to make that possible, and a subprocess test checks
the order).

Exit codes (docs/operations.md): 0 normal stop, ``-validate`` success, ``-version``, ``-h``;
1 invalid config, rules that do not compile, unopenable log file, unbindable address, or a
forced exit on a second signal; 2 usage errors (Go's ``flag`` package does the same).

Must not parse flags (``options``), read YAML (``config``), wire modules or handle signals
(``runtime``).
"""

from __future__ import annotations

# cffi captures ``_thread.allocate_lock`` when it is imported and takes that lock while it
# parses a C type or resolves a library function. Imported after patching, the lock would be
# gevent's, taken on native engine threads, where a contended gevent lock never wakes its
# waiter (docs/performance.md item 1: an engine thread stuck for good). So cffi comes first.
import cffi  # noqa: F401, I001
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402

from loguru import logger  # noqa: E402

from coraza_spoa_py import __version__, allocator, config, logs, modsec_config  # noqa: E402
from coraza_spoa_py.options import Options, parse_args  # noqa: E402

EXIT_OK = 0
EXIT_FAILURE = 1


def _warn_go_only_flags(options: Options) -> None:
    if options.cpuprofile or options.memprofile:
        logger.warning(
            "-cpuprofile and -memprofile are Go profiler flags; ignored by coraza-spoa-py"
        )
    if options.legacy_config_flag:
        logger.warning("-config-file is deprecated; use -config")


def version_text() -> str:
    """What ``-version`` prints: ours, the engine binding's view, and the library's."""
    lines = [f"coraza-spoa-py\t{__version__}"]
    try:
        from coraza_spoa_py import engine as waf

        lines.append(f"engine\t{waf.engine_version()}")
        library = _loaded_library("libmodsecurity")
        if library:
            lines.append(f"libmodsecurity\t{library}")
    except Exception as exc:  # the binding cannot load: say so, -version must still work
        lines.append(f"engine\tunavailable ({exc})")
    import gevent

    lines.append(f"python\t{sys.version.split()[0]}")
    lines.append(f"gevent\t{gevent.__version__}")
    return "\n".join(lines) + "\n"


def _loaded_library(name_part: str) -> str | None:
    # The file the dynamic loader really mapped; its real name carries the library's version
    # (libmodsecurity.so.3 -> libmodsecurity.so.3.0.9 on Debian 12).
    path = allocator.mapped_library(name_part)
    return os.path.realpath(path) if path is not None else None


def _log_config_error(error: config.ConfigError) -> None:
    for problem in error.problems:
        logger.error("config: {}", problem.render(error.source))


def validate(options: Options) -> int:
    """-validate: load the config and compile every application's rules; never bind."""
    from coraza_spoa_py import reload

    name = _config_name(options)
    try:
        loaded = _loader(options)()
    except config.ConfigError as exc:
        _log_config_error(exc)
        logger.error("configuration file {} is invalid", name)
        return EXIT_FAILURE
    for notice in loaded.notices:
        logger.warning(notice)
    try:
        engines = reload.load_engines(loaded.config, lambda fn: fn())
    except reload.RuleLoadError as exc:
        for problem in exc.problems:
            logger.error("rules: {}", problem)
        logger.error("configuration file {} is invalid", name)
        return EXIT_FAILURE
    out = sys.stdout
    cfg = loaded.config
    out.write(f"config {name}: generation {loaded.generation}, bind {cfg.bind}\n")
    for item in engines:
        out.write(f"application {item.name}: {item.rule_count} rules")
        out.write(f", {len(item.warnings)} directive(s) dropped\n" if item.warnings else "\n")
        for warning in item.warnings:
            out.write(f"  dropped: {warning}\n")
    out.write(f"default application: {cfg.default_application or '(none)'}\n")
    out.write("Configuration file is valid\n")
    out.flush()
    return EXIT_OK


def _config_name(options: Options) -> str:
    if options.modsec is not None:
        return modsec_config.describe(options.modsec)
    assert options.config is not None
    return options.config


def _loader(options: Options) -> Callable[[], config.LoadedConfig]:
    # the YAML file of -config, or the C ModSecurity agent's -f files (modsec_config)
    modsec = options.modsec
    if modsec is not None:
        return lambda: modsec_config.load(modsec)
    path = _config_name(options)
    return lambda: config.load_with_notices(path)


def _run_master(
    loaded: config.LoadedConfig, count: int, options: Options, argv: Sequence[str] | None
) -> int:
    """``workers`` > 1: this process binds and supervises, the workers serve (``master``).
    The master logs the config's notices; the workers, which read the same config, do not."""
    from coraza_spoa_py import master

    logger.configure(extra={"worker": "master"})
    try:
        logs.configure_logging(loaded.config)
    except logs.LoggingSetupError as exc:
        logger.error("failed starting: cannot set up logging: {}", exc)
        return EXIT_FAILURE
    for notice in loaded.notices:
        logger.warning(notice)
    flags = list(sys.argv[1:] if argv is None else argv)
    code = master.Master(loaded.config, flags, count, options.metrics_addr).run()
    logs.shutdown_logging()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """``coraza-spoa-py``: returns the process exit code (2 for usage errors via argparse)."""
    _, options = parse_args(argv)
    if argv is None and not (options.version or options.validate):
        # the program's own entry only: main([...]) in a test must not exec; the start line
        # says which allocator runs (wiring.start_logging)
        allocator.reexec_with_allocator()
    logs.configure_bootstrap()
    if options.version:
        sys.stdout.write(version_text())
        return EXIT_OK
    if options.validate:
        _warn_go_only_flags(options)
        return validate(options)
    from coraza_spoa_py import master
    from coraza_spoa_py.runtime import Runtime, StartupError

    config.validate_in_child()  # no jsonschema in a serving process (docs/performance.md)

    # SIGHUP's default action ends the process; until the runtime handles it (after the
    # rules compiled), a reload or logrotate signal must not kill a starting agent
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    name = _config_name(options)
    worker = master.WorkerContext.from_environment()
    if worker is not None:
        # before the config is read: its errors, on every restart, say which worker failed
        logger.configure(extra={"worker": worker.index})
    else:
        _warn_go_only_flags(options)  # the master's or the only process's: workers get its argv
    try:
        # read once: the master's or the only process's, and each worker's own
        loaded = _loader(options)()
        if worker is None:
            count = master.worker_count(loaded.config, options.workers)
            if count > 1:
                return _run_master(loaded, count, options, argv)
        runtime = Runtime.start(
            name,
            loaded,
            autoreload=options.autoreload,
            metrics_addr=options.metrics_addr,
            load=_loader(options) if options.modsec is not None else None,
            worker=worker,
        )
    except config.ConfigError as exc:
        _log_config_error(exc)
        logger.error("failed loading config {}", name)
        return EXIT_FAILURE
    except StartupError as exc:
        lines = [*exc.problems, f"failed starting: {exc.reason}"]
        for line in lines:
            logger.error(line)
        if not logs.writes_to_console():
            # the configured log is a file: whoever started the agent must see why it stopped
            logs.configure_bootstrap()
            for line in lines:
                logger.error(line)
        return EXIT_FAILURE
    code = runtime.run()
    logs.shutdown_logging()
    return code
