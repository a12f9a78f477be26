"""The runner's options end to end, both modes, on go-ftw test files written here: ``--setup``
(no tx value forced), ``--overrides``, message-text log patterns, response rules in direct mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.crs import run

pytestmark = pytest.mark.crs

HEADERS = {"Host": "localhost", "User-Agent": "OWASP CRS test agent", "Accept": "*/*"}
# a backend error page with no Content-Type in the spec: albedo (and now the direct mode)
# sends text/plain, so the response body is inspected in both modes
LEAK = {"status": 200, "body": "You have an error in your SQL syntax; check the manual"}


def _stage(input_: dict, output: dict) -> dict:
    return {
        "input": {"dest_addr": "127.0.0.1", "port": 80, "headers": HEADERS, **input_},
        "output": output,
    }


TESTS = {
    911100: [
        # message patterns: judged on the rules' messages, not skipped
        _stage(
            {"method": "FOO", "uri": "/"},
            {"log": {"match_regex": "Method is not allowed by policy"}},
        ),
        _stage({"method": "GET", "uri": "/"}, {"log": {"no_match_regex": "Method is not allowed"}}),
    ],
    # passes only if the setup file's tx.arg_name_length=10 is in force (v3.3.4's is 100)
    920360: [_stage({"uri": "/?abcdefghijklmnopqrst=1"}, {"log": {"expect_ids": [920360]}})],
    951230: [
        _stage(
            {
                "method": "POST",
                "uri": "/reflect",
                "data": json.dumps(LEAK),
                "headers": {**HEADERS, "Content-Type": "application/json"},
            },
            {
                "status": 200,
                "log": {"expect_ids": [951230], "match_regex": "mysql SQL Information Leakage"},
            },
        )
    ],
    # test 1 fails (expect_failure in the overrides), test 2 passes with the overridden output
    920100: [_stage({"uri": "/"}, {"status": 403}), _stage({"uri": "/"}, {"status": 418})],
}
SETUP = (
    'SecAction "id:900005,phase:1,nolog,pass,t:none,ctl:ruleRemoveById=910000,'
    'setvar:tx.paranoia_level=1,setvar:tx.arg_name_length=10"\n'
)
OVERRIDES = {
    "version": "v0.1.0",
    "meta": {"engine": "libmodsecurity3", "platform": "test", "annotations": []},
    "test_overrides": [
        {
            "rule_id": 920100,
            "test_ids": [1],
            "expect_failure": True,
            "reason": "DetectionOnly: nothing answers 403 here",
        },
        {
            "rule_id": 920100,
            "test_ids": [2],
            "reason": "the backend answers 200",
            "output": {"status": 200},
        },
    ],
}


def _write_tree(root: Path) -> Path:
    tests = root / "tests"
    for rule_id, stages in TESTS.items():
        folder = tests / f"RULES-{str(rule_id)[:3]}"
        folder.mkdir(parents=True, exist_ok=True)
        document = {
            "meta": {"author": "test", "enabled": True, "name": f"{rule_id}.yaml"},
            "rule_id": rule_id,
            "tests": [{"test_id": i + 1, "stages": [s]} for i, s in enumerate(stages)],
        }
        (folder / f"{rule_id}.yaml").write_text(yaml.safe_dump(document))
    return tests


def test_setup_overrides_and_message_patterns_in_both_modes(tmp_path: Path, capsys) -> None:
    """1. Five go-ftw stages, a setup file (paranoia 1, arg_name_length 10), an overrides file.
    2. Run both modes (HAProxy 2.6, the shipped config, the agent) with an empty expected list.
    3. Each mode: 5 pass (message patterns judged, not skipped; 920360 fires at length 20;
       951230 fires in direct mode too), 920100-1 fails as the overrides file expects; exit 0."""
    tests = _write_tree(tmp_path)
    setup = tmp_path / "setup.conf"
    setup.write_text(SETUP)
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(yaml.safe_dump(OVERRIDES))
    empty = tmp_path / "expected.yaml"
    empty.write_text("{}\n")
    status = run.main(
        [
            "--tests",
            str(tests),
            "--setup",
            str(setup),
            "--overrides",
            str(overrides),
            "--expected",
            str(empty),
            "--jobs",
            "2",
            "-v",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    assert out.strip().splitlines()[-1] == "10 passed, 2 failed, 0 skipped", out
    assert "[expected] 920100-1" in out and "nothing answers 403" in out
