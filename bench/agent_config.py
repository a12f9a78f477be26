"""The agent configuration every bench run uses, written to a temp dir as a Gen3 config file.

One source for the rules text: the agent (through its config file) and the ceiling (through
``engine.load_engine``) load the same directives, so the ratio compares like with like. Writes
files only; never starts anything.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

# CRS 3.3.4 at paranoia 1, blocking (the shipped config.example.yml), audit log off as the
# brief asks: the audit log is disk I/O, not the cost we compare.
BENCH_DIRECTIVES = """\
Include @coraza.conf-recommended
Include @crs-setup.conf.example
Include @owasp_crs/*.conf
SecRuleEngine On
SecAuditEngine Off
"""

# The soak's cheap rule set: one request rule and one response rule. A million transactions
# through CRS take ~25 min of both cores here (docs/engine.md "Engine facts" costs); what leaks is
# the agent's per-transaction bookkeeping, which these rules exercise the same way (open, cache,
# respond, expire, close). `--soak-rules crs` runs the real set.
SMALL_DIRECTIVES = """\
SecRuleEngine On
SecRequestBodyAccess On
SecResponseBodyAccess On
SecResponseBodyMimeType text/plain text/html
SecAuditEngine Off
SecRule ARGS "@contains /etc/passwd" "id:10001,phase:2,deny,status:403,log,msg:'bench attack'"
SecRule RESPONSE_BODY "@contains bench-leak" "id:10002,phase:4,deny,status:403,log"
"""

RULE_SETS = {"crs": BENCH_DIRECTIVES, "small": SMALL_DIRECTIVES}
APP_NAME = "sample_app"


def write_agent_config(
    folder: Path,
    *,
    port: int,
    directives: str = BENCH_DIRECTIVES,
    response_check: bool = True,
    transaction_ttl_ms: int = 60_000,
    log_level: str = "info",
    app_log_level: str | None = None,
    extra: dict[str, object] | None = None,
) -> Path:
    """Write ``agent.yml`` (Gen3 form, config.example.yml's keys) into ``folder``; return its path.

    The agent's own log and its rule-match log go to ``folder/agent.log``: a real deployment
    logs matches too, so that cost stays in the measurement.
    """
    log_file = str(folder / "agent.log")
    config: dict[str, object] = {
        "bind": f"127.0.0.1:{port}",
        "log_level": log_level,
        "log_file": log_file,
        "log_format": "console",
        "default_application": APP_NAME,
        "applications": [
            {
                "name": APP_NAME,
                "directives": directives,
                "response_check": response_check,
                "transaction_ttl_ms": transaction_ttl_ms,
                # the rule-match log; None: the same level as the agent's own log
                "log_level": app_log_level or log_level,
                "log_file": log_file,
                "log_format": "console",
            }
        ],
    }
    # The load-shedding budget as the agent's default derives it: 80 % of HAProxy's
    # `timeout processing` (400 ms of the 500 ms every coraza-spoa sample ships). The bench
    # runs HAProxy with 2 s (haproxy_config.BENCH_PROCESSING_TIMEOUT), so 1600 ms; with the
    # default 400 ms, 128 connections of 5 ms POSTs (~500 ms of queue by Little's law) would be
    # shed although HAProxy would still wait for their answer.
    config["processing_budget_ms"] = 1600
    # one process: /proc CPU and thread figures are read from the agent's pid; the multi-worker
    # rows (bench/workers.py) set workers themselves and sum the process tree
    config["workers"] = 1
    config.update(extra or {})
    path = folder / "agent.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# The agent's shutdown line (agent.Agent.close_all): its own transaction counters.
AGENT_TOTALS_RE = re.compile(
    r"transactions opened=(?P<opened>\d+) closed=(?P<closed>\d+) expired=(?P<expired>\d+) "
    r"evicted=(?P<evicted>\d+) shed=(?P<shed>\d+) open=(?P<open>\d+)"
)


def read_agent_totals(folder: Path) -> dict[str, int] | None:
    """The counters of the agent's last shutdown line in ``folder``'s logs, if any."""
    text = ""
    for name in ("agent.log", "agent.out"):
        path = folder / name
        if path.exists():
            text += path.read_text(errors="replace")
    matches = list(AGENT_TOTALS_RE.finditer(text))
    return {k: int(v) for k, v in matches[-1].groupdict().items()} if matches else None
