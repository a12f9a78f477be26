"""go-ftw's platform overrides file: read, validated, applied to stages of both formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.crs.loader import Stage, StageInput, StageOutput
from tests.crs.overrides import OverridesError, apply_overrides, load_overrides, parse_overrides

OVERRIDES_YAML = """\
---
version: "v0.1.0"
meta:
  engine: libmodsecurity3
  platform: haproxy-spoa
  annotations:
    - purpose: a test
test_overrides:
  - rule_id: 920100
    test_ids: [4]
    reason: HAProxy answers 400 to this CONNECT before any filter
    expect_failure: true
  - rule_id: 920270
    reason: the backend never answers 400 here
    retry_once: true
    output:
      status: 200
      log:
        expect_ids: [920270]
        no_expect_ids: [949110]
"""


def _stage(stage_id: str, output: StageOutput | None = None) -> Stage:
    return Stage(
        stage_id, "f.yaml", "", "goftw", StageInput(), output or StageOutput(status=(403,))
    )


def test_file_is_read_with_its_meta_and_entries(tmp_path: Path) -> None:
    path = tmp_path / "overrides.yaml"
    path.write_text(OVERRIDES_YAML)
    overrides = load_overrides(path)
    assert overrides.version == "v0.1.0"
    assert overrides.meta["platform"] == "haproxy-spoa"
    first, second = overrides.test_overrides
    assert (first.rule_id, first.test_ids, first.expect_failure) == (920100, (4,), True)
    assert second.test_ids == () and second.retry_once
    assert second.output == StageOutput(
        status=(200,), expect_ids=(920270,), no_expect_ids=(949110,)
    )


def test_overrides_apply_to_the_named_tests_only(tmp_path: Path) -> None:
    path = tmp_path / "overrides.yaml"
    path.write_text(OVERRIDES_YAML)
    stages = [_stage("920100-4"), _stage("920100-5"), _stage("920270-1/2"), _stage("920270-3")]
    applied, expected = apply_overrides(stages, load_overrides(path))
    by_id = {s.stage_id: s for s in applied}
    # expect_failure: listed for every mode, with the file and the reason
    assert list(expected) == ["920100-4"]
    assert expected["920100-4"].modes == ("direct", "haproxy")
    assert "HAProxy answers 400" in expected["920100-4"].reason
    assert by_id["920100-4"].output == StageOutput(status=(403,))  # no output: unchanged
    assert by_id["920100-5"].output == StageOutput(status=(403,))  # test 5 is not named
    # no test_ids: every test (and every stage) of the rule; output replaced whole
    for stage_id in ("920270-1/2", "920270-3"):
        output = by_id[stage_id].output
        assert output.status == (200,) and output.expect_ids == (920270,)
        assert output.retry_once


def test_retry_once_alone_keeps_the_stage_output() -> None:
    overrides = parse_overrides(
        {"version": "1", "meta": {}, "test_overrides": [{"rule_id": 1, "retry_once": True}]}
    )
    applied, expected = apply_overrides([_stage("1-1")], overrides)
    assert applied[0].output == StageOutput(status=(403,), retry_once=True)
    assert expected == {}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "not a mapping"),
        ({"version": "1", "meta": {}, "tests": []}, "unknown keys ['tests']"),
        ({"version": "1", "meta": {}, "test_overrides": {}}, "must be a list"),
        ({"test_overrides": [{"test_ids": [1]}]}, "KeyError"),
        ({"test_overrides": [{"rule_id": "x"}]}, "ValueError"),
        ({"test_overrides": [{"rule_id": 1, "expect_failure": True}]}, "needs a reason"),
        ({"test_overrides": [{"rule_id": 1, "stage_ids": [2]}]}, "stage_ids"),
        ({"test_overrides": [{"rule_id": 1, "expect": True}]}, "unknown keys ['expect']"),
    ],
)
def test_bad_files_are_refused_naming_the_entry(document: object, message: str) -> None:
    with pytest.raises(OverridesError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_overrides(document, source="o.yaml")
