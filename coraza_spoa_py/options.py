"""Command-line flags → ``Options``: parsing only, testable without starting anything.

Go's ``flag`` syntax is what coraza-spoa users have in their unit files and Dockerfiles
(compat.md Part 2 §1.6): ``-config PATH``, ``--config PATH``, ``-config=PATH``, booleans as
``-validate`` or ``-validate=true``. argparse handles all of those once every long option is
declared with both one and two dashes and abbreviations are off (style.md §6).

Must not import gevent, loguru or anything that does I/O: ``cli`` imports this after
monkey-patching, and unit tests import it directly.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass

PROG = "coraza-spoa-py"
# Go's flag package prints usage and exits 2 on an unknown flag (compat.md Part 2 §1.6).
EXIT_USAGE = 2
_TRUE_WORDS = frozenset({"1", "t", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "f", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class Options:
    config: str | None = None
    validate: bool = False
    version: bool = False
    autoreload: bool = False
    metrics_addr: str = ""
    cpuprofile: str = ""
    memprofile: str = ""
    # set when the Gen1 spelling ``-config-file`` was used (a deprecation line is logged)
    legacy_config_flag: bool = False


def _go_bool(text: str) -> bool:
    # Go's strconv.ParseBool, which `-flag=value` uses for boolean flags
    lowered = text.lower()
    if lowered in _TRUE_WORDS:
        return True
    if lowered in _FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}")


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
        cpuprofile=namespace.cpuprofile,
        memprofile=namespace.memprofile,
        legacy_config_flag=legacy,
    )
    if not options.version and not options.config:
        # coraza-spoa: fatal "Configuration file is not set"; a usage error is clearer
        parser.error("the -config flag is required (path to the configuration file)")
    return parser, options
