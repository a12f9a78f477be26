"""The WAF setup the CRS regression tests expect, as one ``directives`` text both modes load.

From the CRS 3.3 test environment (docs/crs.md "The setup the tests expect"): DetectionOnly so every
stage runs to the end, request and response bodies inspected (text/plain, text/html, text/xml,
application/json). Paranoia level, the removed 910000 and every tx value come from a setup
file (``setup-v3.3.4.conf`` beside this module by default, ``--setup FILE`` for another, e.g.
``setup-crs4.conf``): a ``SecAction`` in phase 1 placed *before* the CRS rules (CRS's
REQUEST-901 only fills in tx values that are still unset).

Also the paths of the test data and of the agent config this suite writes. I/O: the setup
file is read, ``write_agent_config`` writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from coraza_spoa_py.settings import RulePaths

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# the test files are data read at run time, never copied in: CI and every developer have them
# in ../shared beside the project (docs/crs.md "The setup the tests expect")
DEFAULT_TESTS_DIR = PROJECT_ROOT.parent / "shared" / "crs-tests" / "v3.3.4"
# a checkout elsewhere (a git worktree) names the test tree here, or passes ``--tests``
TESTS_DIR_ENV = "CRS_TESTS_DIR"
EXPECTED_FAILURES_FILE = Path(__file__).with_name("expected-failures.yaml")
# the shipped haproxy.cfg sets txn.coraza.app to sample_app: the suite's app has that name
APP_NAME = "sample_app"

# The setup rules a run adds between crs-setup and the CRS rules (``--setup FILE`` replaces the
# whole file): v3.3.4's test environment by default. Only the WAF's own switches below are
# fixed for every run; every tx value comes from this file, none is forced.
DEFAULT_SETUP_FILE = Path(__file__).with_name("setup-v3.3.4.conf")
# CRS 4's names for the same environment (blocking/detection paranoia 4): ``--setup`` this
# file with a CRS 4 rules tree (``--crs-rules-dir``) and its go-ftw tests (``--tests``)
CRS4_SETUP_FILE = Path(__file__).with_name("setup-crs4.conf")


def crs_tests_dir(default: Path = DEFAULT_TESTS_DIR) -> Path:
    """``CRS_TESTS_DIR`` when set (a worktree beside no ``shared/``), else ``default``."""
    value = os.environ.get(TESTS_DIR_ENV, "").strip()
    return Path(value) if value else default


def crs_test_directives(setup_file: Path | None = None) -> str:
    """The ``directives`` text both modes load: the base config, the switches the suite needs
    whatever the base config says, crs-setup, the setup file, then the CRS rules."""
    setup = (setup_file or DEFAULT_SETUP_FILE).read_text(encoding="utf-8").strip()
    return "\n".join(
        (
            "Include @coraza.conf-recommended",
            # the base config decides these for production; the suite needs them whatever it says
            "SecRuleEngine DetectionOnly",
            "SecRequestBodyAccess On",
            "SecResponseBodyAccess On",
            "SecResponseBodyMimeType text/plain text/html text/xml application/json",
            "Include @crs-setup.conf.example",
            setup,
            "Include @owasp_crs/*.conf",
        )
    )


CRS_TEST_DIRECTIVES = crs_test_directives()


def write_agent_config(
    path: Path,
    *,
    bind: str,
    log_file: Path,
    rule_paths: RulePaths | None = None,
    directives: str = CRS_TEST_DIRECTIVES,
    match_log_file: Path | None = None,
) -> Path:
    """A config.yml (the current ``applications:`` form) for the agent under test."""
    paths = rule_paths or RulePaths()
    config: dict[str, Any] = {
        "bind": bind,
        # where Include @owasp_crs/… and @crs-setup.conf.example resolve (CRS 4 lives elsewhere)
        "crs_rules_dir": paths.crs_rules_dir,
        "crs_setup_file": paths.crs_setup_file,
        "log_level": "info",
        "log_file": str(log_file),
        "log_format": "console",
        "default_application": APP_NAME,
        # a PL4 stage with a 64 KB body takes a while on a busy 2-core box; the suite
        # measures rule fidelity, not load shedding (HAProxy's own 500 ms still applies)
        "processing_budget_ms": 5000,
        "applications": [
            {
                "name": APP_NAME,
                "directives": directives + "\n",
                "response_check": True,
                "transaction_ttl_ms": 60000,
                # txn.coraza.rule_ids on every ACK: how the runner learns the matched ids
                "export_rule_ids": True,
                # one record per matching stage would be ~2,400 lines at info: keep the file small
                "log_level": "warn",
                "log_file": str(log_file),
                "log_format": "console",
            }
        ],
    }
    if match_log_file is not None:
        # the rule messages of every transaction (stages whose log regex is a message text):
        # JSON rule-match records, one line per matched rule with its ``tx`` (HAProxy's unique-id)
        config["applications"][0].update(
            log_level="info", log_file=str(match_log_file), log_format="json"
        )
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
