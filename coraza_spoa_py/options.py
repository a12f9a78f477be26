"""Command-line flags → ``Options``: parsing only, testable without starting anything.

Go's ``flag`` syntax is what coraza-spoa users have in their unit files and Dockerfiles
(docs/compatibility.md "Command line"): ``-config PATH``, ``--config PATH``, ``-config=PATH``,
booleans as ``-validate`` or ``-validate=true``. argparse handles all of those once every long
option is declared with both one and two dashes and abbreviations are off.

Must not import gevent, loguru or anything that does I/O: ``cli`` imports this after
monkey-patching, and unit tests import it directly.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from coraza_spoa_py.settings import DEFAULT_MAX_FRAME_SIZE

PROG = "coraza-spoa-py"
# Go's flag package prints usage and exits 2 on an unknown flag (docs/compatibility.md "Command
# line").
EXIT_USAGE = 2
_TRUE_WORDS = frozenset({"1", "t", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "f", "false", "no", "off"})
# the C agent's -p default (docs/compatibility.md "The C ModSecurity agents")
MODSEC_DEFAULT_PORT = 12345


@dataclass(frozen=True, slots=True)
class Options:
    config: str | None = None
    validate: bool = False
    version: bool = False
    autoreload: bool = False
    metrics_addr: str = ""
    # -workers N: worker processes (overrides the config's `workers`); None: the config's
    workers: int | None = None
    cpuprofile: str = ""
    memprofile: str = ""
    # set when the Gen1 spelling ``-config-file`` was used (a deprecation line is logged)
    legacy_config_flag: bool = False
    # the C spoa-modsecurity agent's flags (docs/compatibility.md "The C ModSecurity agents";
    # docs/migrating-from-modsecurity-spoa.md): ModSecurity config files instead of a YAML config
    modsec: ModSecOptions | None = None


@dataclass(frozen=True, slots=True)
class ModSecOptions:
    """``-f FILE`` (repeatable) ``-p PORT`` ``-n WORKERS`` ``-d`` ``-m SIZE`` ``-c CAP`` ``-t
    DELAY``: one application running the rules of the files, on every address."""

    files: tuple[str, ...]
    port: int = MODSEC_DEFAULT_PORT
    workers: int | None = None  # engine threads; None: our default (one per core)
    debug: bool = False
    max_frame_size: int | None = None
    capabilities: tuple[str, ...] = ()  # accepted; we negotiate pipelining ourselves
    delay: str = ""  # accepted and ignored (the C agent's artificial processing delay)


def _go_bool(text: str) -> bool:
    # Go's strconv.ParseBool, which `-flag=value` uses for boolean flags
    lowered = text.lower()
    if lowered in _TRUE_WORDS:
        return True
    if lowered in _FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _port(text: str) -> int:
    value = _positive(text)
    if value > 65_535:
        raise argparse.ArgumentTypeError(f"port {text!r} is above 65535")
    return value


# the C agent's getopt flags (docs/compatibility.md "The C ModSecurity agents"): flag, destination,
# argparse settings
_MODSEC_FLAGS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("-f", "modsec_files", {
        "action": "append", "metavar": "FILE",
        "help": "ModSecurity config file (Include lines allowed); repeatable",
    }),
    ("-p", "modsec_port", {
        "type": _port, "metavar": "PORT",
        "help": f"TCP port on every address (default {MODSEC_DEFAULT_PORT})",
    }),
    ("-n", "modsec_workers", {
        "type": _positive, "metavar": "N", "help": "engine threads (default: one per CPU core)",
    }),
    ("-d", "modsec_debug", {"action": "store_true", "help": "debug logging"}),
    ("-m", "modsec_max_frame_size", {
        "type": _positive, "metavar": "SIZE",
        "help": f"largest SPOP frame accepted (default: {DEFAULT_MAX_FRAME_SIZE >> 20} MiB)",
    }),
    ("-c", "modsec_capabilities", {
        "action": "append", "metavar": "CAP", "choices": ("fragmentation", "pipelining", "async"),
        "help": "accepted for compatibility; pipelining is negotiated with HAProxy",
    }),
    ("-t", "modsec_delay", {
        "metavar": "TIME", "help": "accepted for compatibility (the C agent's test delay); ignored",
    }),
)  # fmt: skip


def _modsec_flags_given(namespace: argparse.Namespace) -> list[str]:
    unset = (None, False)
    return [flag for flag, dest, _ in _MODSEC_FLAGS if getattr(namespace, dest) not in unset]


def _modsec_options(namespace: argparse.Namespace) -> ModSecOptions:
    return ModSecOptions(
        files=tuple(namespace.modsec_files),
        port=namespace.modsec_port if namespace.modsec_port is not None else MODSEC_DEFAULT_PORT,
        workers=namespace.modsec_workers,
        debug=namespace.modsec_debug,
        max_frame_size=namespace.modsec_max_frame_size,
        capabilities=tuple(namespace.modsec_capabilities or ()),
        delay=namespace.modsec_delay or "",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="WAF agent for HAProxy's SPOE running ModSecurity rules (libmodsecurity).",
        allow_abbrev=False,
        epilog="Flags take one or two dashes, and -flag=value works too (Go flag syntax).",
    )
    parser.add_argument(
        "-config", "--config", dest="config", metavar="PATH", help="configuration file (YAML)"
    )
    parser.add_argument(
        "-config-file",
        "--config-file",
        dest="config_file",
        metavar="PATH",
        help="deprecated spelling of -config (coraza-spoa 2022)",
    )
    bool_flags = {
        "validate": "load the config and compile every application's rules, then exit 0 or 1",
        "version": "print the versions of the agent, the engine and libmodsecurity, then exit",
        "autoreload": "reload when the config file or a rule file it includes changes",
    }
    for name, text in bool_flags.items():
        parser.add_argument(
            f"-{name}",
            f"--{name}",
            dest=name,
            nargs="?",
            const=True,
            default=False,
            type=_go_bool,
            metavar="BOOL",
            help=text,
        )
    parser.add_argument(
        "-metrics-addr",
        "--metrics-addr",
        dest="metrics_addr",
        default="",
        metavar="ADDR",
        help="serve Prometheus metrics on ADDR (host:port) at /metrics",
    )
    parser.add_argument(
        "-workers",
        "--workers",
        dest="workers",
        type=_positive,
        default=None,
        metavar="N",
        help="worker processes sharing the listening address (default: the config's "
        "`workers`, else the number of CPUs; 1 = a single process, no master)",
    )
    modsec = parser.add_argument_group(
        "spoa-modsecurity flags",
        "the C ModSecurity agent's command line: rules from ModSecurity config files, no YAML "
        "(not with -config)",
    )
    for flag, dest, settings in _MODSEC_FLAGS:
        modsec.add_argument(flag, dest=dest, **settings)
    for name in ("cpuprofile", "memprofile"):
        parser.add_argument(
            f"-{name}",
            f"--{name}",
            dest=name,
            default="",
            metavar="FILE",
            help="accepted for compatibility with the Go agent; ignored with a warning",
        )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.ArgumentParser, Options]:
    """Parse ``argv`` (``sys.argv[1:]`` when None). Exits 2 with usage on a bad flag, 0 on -h."""
    parser = build_parser()
    namespace = parser.parse_args(argv)
    config = namespace.config
    legacy = False
    if namespace.config_file is not None:
        if config is not None and config != namespace.config_file:
            parser.error("-config and -config-file name different files; use -config only")
        config = namespace.config_file
        legacy = True
    options = Options(
        config=config,
        validate=namespace.validate,
        version=namespace.version,
        autoreload=namespace.autoreload,
        metrics_addr=namespace.metrics_addr,
        workers=namespace.workers,
        cpuprofile=namespace.cpuprofile,
        memprofile=namespace.memprofile,
        legacy_config_flag=legacy,
    )
    modsec_flags = _modsec_flags_given(namespace)
    if modsec_flags:
        if config is not None:
            parser.error(
                f"{' '.join(modsec_flags)}: the ModSecurity SPOA's flags (rules from -f, no "
                "YAML) cannot be mixed with -config (rules from the YAML file); use either "
                "-config FILE.yml or -f modsecurity.conf [-p PORT ...]"
            )
        if not namespace.modsec_files:
            parser.error("-f is required with the ModSecurity SPOA's flags (a rules file)")
        options = replace(options, modsec=_modsec_options(namespace))
        return parser, options
    if not options.version and not options.config:
        # coraza-spoa: fatal "Configuration file is not set"; a usage error is clearer
        parser.error("the -config flag is required (path to the configuration file)")
    return parser, options
