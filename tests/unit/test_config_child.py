"""``config.validate_in_child``: the agent's processes check their config against the schema in
a short-lived child, so ``jsonschema`` never enters a serving process (docs/performance.md
change 35), with the same problems reported as when checking in process, and a check in
process when no child can run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from coraza_spoa_py import config

ROOT = Path(__file__).resolve().parents[2]

BAD = """bind: 127.0.0.1:9000
log_level: loud
applications:
  - name: a
    directives: 5
    response_check: maybe
    colour: blue
"""
GOOD = """bind: 127.0.0.1:9000
applications:
  - name: a
    directives: |
      SecRuleEngine On
"""

CHECK_IN_CHILD = """
import json, sys
from coraza_spoa_py import config
config.validate_in_child()
result = {}
try:
    config.parse(sys.argv[1])
except config.ConfigError as exc:
    result["problems"] = [problem.render(exc.source) for problem in exc.problems]
result["good"] = config.parse(sys.argv[2]).config.applications[0].name
result["jsonschema"] = "jsonschema" in sys.modules
print(json.dumps(result))
"""


def problems_in_process(text: str) -> list[str]:
    with pytest.raises(config.ConfigError) as caught:
        config.parse(text)
    return [problem.render(caught.value.source) for problem in caught.value.problems]


def test_a_child_reports_the_same_problems_and_jsonschema_stays_out():
    done = subprocess.run(
        [sys.executable, "-c", CHECK_IN_CHILD, BAD, GOOD],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout)
    expected = problems_in_process(BAD)
    assert len(expected) >= 4  # the level, the directives, response_check, the unknown key
    assert result["problems"] == expected
    assert result["good"] == "a"
    assert result["jsonschema"] is False


def test_without_a_child_the_check_runs_in_process(monkeypatch):
    expected = problems_in_process(BAD)
    monkeypatch.setattr(config, "_in_child", True)
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    assert problems_in_process(BAD) == expected
