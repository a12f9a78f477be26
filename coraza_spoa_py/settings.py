"""The validated configuration as frozen dataclasses: what every module downstream of
``config`` receives. Nothing downstream touches raw YAML dicts (docs/development.md "One config
pipeline").

The one source of the config defaults: a key the file leaves out gets its field's default here
(``config`` passes only the keys the file has), the schema's ``default`` values that
docs/configuration.md shows must equal them (tests/unit/test_defaults.py), and code that needs
a default outside a dataclass (flag help, the server's keyword defaults) reads the ``DEFAULT_*``
constants below.

Pure: standard library only, so ``server``, ``application`` and tests can import these types
without pulling in yaml or jsonschema.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

# Debian 12's modsecurity-crs package (docs/crs.md "The setup the tests expect"); configurable for
# CRS 4 or other distros.
DEFAULT_CRS_RULES_DIR = "/usr/share/modsecurity-crs/rules"
DEFAULT_CRS_SETUP_FILE = "/etc/modsecurity/crs/crs-setup.conf"
# max open transactions kept for the response phase, from a memory budget: 2 GiB per
# application at 64 KiB (62 KiB measured by bench/open_transactions.py, rounded up) per open
# transaction under CRS (docs/performance.md "Memory per open transaction")
DEFAULT_TRANSACTION_ACTIVE_LIMIT = 32_768
DEFAULT_TRANSACTION_TTL_MS = 60_000
DEFAULT_LOG_LEVEL = "info"
DEFAULT_LOG_FILE = "/dev/stdout"
# our cap on the negotiated max-frame-size; HAProxy's offer (tune.bufsize - 4) is usually
# lower. No 64 KiB cap (coraza-spoa#194).
DEFAULT_MAX_FRAME_SIZE = 4 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 1024
# HAProxy <= 3.0 closes idle connections after `timeout idle` (2m in coraza-spoa's sample),
# 3.1+ after the backend's `timeout server`; ours must be longer than either.
DEFAULT_IDLE_TIMEOUT_S = 600.0
# a new connection must say HELLO within this; HAProxy does at once (its `timeout hello`)
DEFAULT_HELLO_TIMEOUT_S = 5.0
# a frame's bytes must all arrive within this of its first one: a trickle cannot reset it
DEFAULT_FRAME_TIMEOUT_S = 10.0
# load shedding: a message that waited longer than this before an engine thread took it is
# answered with error 1005 (docs/compatibility.md "Errors"). 80 % of the 500 ms `timeout
# processing` that every coraza-spoa sample ships.
DEFAULT_PROCESSING_BUDGET_MS = 400
DEFAULT_GRACEFUL_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class BindAddress:
    """Where the agent listens: TCP (IPv4, IPv6, host name) or a unix socket."""

    kind: Literal["tcp", "unix"]
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = (
        DEFAULT_LOG_LEVEL  # trace debug info warn error fatal panic disabled (loguru names too)
    )
    file: str = DEFAULT_LOG_FILE  # "", /dev/stdout, /dev/stderr, /dev/null or a path
    format: Literal["console", "json"] = "console"
    # Gen1 only: log.dir -> server.log (below error) + error.log (error and up)
    dir: str | None = None


@dataclass(frozen=True, slots=True)
class RulePaths:
    """Where ``Include @...`` resolves (docs/compatibility.md "Config and CLI")."""

    crs_rules_dir: str = DEFAULT_CRS_RULES_DIR
    crs_setup_file: str = DEFAULT_CRS_SETUP_FILE


@dataclass(frozen=True, slots=True)
class AppConfig:
    name: str
    directives: str = ""
    response_check: bool = False
    transaction_ttl_ms: int = DEFAULT_TRANSACTION_TTL_MS
    # max open transactions kept for the response phase; oldest evicted first
    transaction_active_limit: int = DEFAULT_TRANSACTION_ACTIVE_LIMIT
    # a coraza-res whose transaction is not here (another agent saw the request, or it expired):
    # "inspect" runs phases 3-4 on a fresh transaction, "reject" answers error 1004
    orphan_responses: Literal["inspect", "reject"] = "inspect"
    # turn on txn.coraza.rule_ids for every message of this app (the exportRuleIDs arg does it
    # per message)
    export_rule_ids: bool = False
    log: LogConfig | None = None  # None: the top-level log settings
    # folder that relative Include paths in ``directives`` resolve against (the config file's)
    base_dir: str = "."


@dataclass(frozen=True, slots=True)
class Config:
    bind: BindAddress
    applications: tuple[AppConfig, ...] = ()
    default_application: str | None = None
    log: LogConfig = field(default_factory=LogConfig)
    rule_paths: RulePaths = field(default_factory=RulePaths)
    # engine threads per process; libmodsecurity releases the GIL, so the cores are shared
    # among the worker processes (docs/engine.md "Engine facts"); None: engine_threads_for()
    engine_threads: int | None = None
    # worker processes sharing the listener (master.py); 1 = one process, no master. One per
    # core: a process's hub runs its Python work one transaction at a time (docs/performance.md)
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    # 0: as many as max_connections
    max_connections_per_source: int = 0
    hello_timeout_s: float = DEFAULT_HELLO_TIMEOUT_S
    frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S
    processing_budget_ms: int = DEFAULT_PROCESSING_BUDGET_MS
    graceful_timeout_s: float = DEFAULT_GRACEFUL_TIMEOUT_S
    source_file: str = ""

    def engine_threads_for(self, processes: int) -> int:
        """Engine threads of each of ``processes`` serving processes: as configured, else the
        CPUs divided among them (one worker per core then runs one engine thread, not one
        per CPU each)."""
        if self.engine_threads is not None:
            return self.engine_threads
        return max(1, (os.cpu_count() or 1) // processes)
