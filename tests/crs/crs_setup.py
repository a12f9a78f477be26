"""The WAF setup the CRS regression tests expect, as one ``directives`` text both modes load.

From ``../shared/crs-tests/README.md`` (the CRS 3.3 test environment): DetectionOnly so every
stage runs to the end, paranoia level 4, the IP-reputation block 910000 removed, the tx
settings below, response bodies inspected for text/plain, text/html, text/xml and
application/json. They are set by a ``SecAction`` in phase 1 placed *before* the CRS rules
(CRS's REQUEST-901 only fills in tx values that are still unset). CRS 4 reads
``tx.blocking_paranoia_level`` instead of ``tx.paranoia_level``: both are set, so the same text
serves either CRS.

Also the paths of the test data and of the agent config this suite writes. No I/O except
``write_agent_config``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from coraza_spoa_py.settings import RulePaths

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# CI and every developer have ../shared beside the project (harness.md; crs-tests/README.md)
DEFAULT_TESTS_DIR = PROJECT_ROOT.parent / "shared" / "crs-tests" / "v3.3.4"
EXPECTED_FAILURES_FILE = Path(__file__).with_name("expected-failures.yaml")
# the shipped haproxy.cfg sets txn.coraza.app to sample_app: the suite's app has that name
APP_NAME = "sample_app"

CRS_TEST_SETTINGS = (
    'SecAction "id:900005,phase:1,nolog,pass,t:none,'
    "ctl:ruleEngine=DetectionOnly,"
    "ctl:ruleRemoveById=910000,"
    "setvar:tx.paranoia_level=4,"
    "setvar:tx.blocking_paranoia_level=4,"
    "setvar:tx.crs_validate_utf8_encoding=1,"
    "setvar:tx.arg_name_length=100,"
    "setvar:tx.arg_length=400,"
    'setvar:tx.combined_file_sizes=65535"'
)

CRS_TEST_DIRECTIVES = "\n".join(
    (
        "Include @coraza.conf-recommended",
        # the base config decides these for production; the suite needs them whatever it says
        "SecRuleEngine DetectionOnly",
        "SecRequestBodyAccess On",
        "SecResponseBodyAccess On",
        "SecResponseBodyMimeType text/plain text/html text/xml application/json",
        "Include @crs-setup.conf.example",
        CRS_TEST_SETTINGS,
        "Include @owasp_crs/*.conf",
    )
)


def write_agent_config(
    path: Path, *, bind: str, log_file: Path, rule_paths: RulePaths | None = None
) -> Path:
    """A config.yml (the current ``applications:`` form) for the agent under test."""
    paths = rule_paths or RulePaths()
    config = {
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
                "directives": CRS_TEST_DIRECTIVES + "\n",
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
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
