"""go-ftw's platform overrides file (``go-ftw run --overrides FILE``), read and applied.

The file is how a WAF platform states, per test, what differs for it (ftw-tests-schema v2,
"waf-platform-overrides")::

    version: "v0.1.0"
    meta: {engine: libmodsecurity3, platform: haproxy-spoa, annotations: [...]}
    test_overrides:
      - rule_id: 920100          # the rule whose tests are overridden (required)
        test_ids: [4, 6]         # those tests only; absent or empty: every test of the rule
        reason: "why"            # required with expect_failure
        expect_failure: true     # the stage must fail (it is an expected failure, any mode)
        retry_once: true         # sets the stages' output.retry_once
        output: {status: 400, log: {expect_ids: [920100]}}   # replaces the stages' output

An ``output`` replaces the stage's whole output, read with the go-ftw output reader, as go-ftw
does. A stage is named ``RULE-TEST`` in both test formats (``920100-4``; ``/N`` for a stage of a
multi-stage test), which is how an override finds its stages. Only reads and rewrites
``Stage`` values: never sends or judges.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.crs import loader
from tests.crs.loader import Stage
from tests.crs.results import MODES, ExpectedFailure


class OverridesError(Exception):
    """An overrides file that cannot be applied; ``str()`` names the file and the entry."""


@dataclass(frozen=True)
class TestOverride:
    rule_id: int
    test_ids: tuple[int, ...] = ()  # empty: every test of the rule
    reason: str = ""
    expect_failure: bool = False
    retry_once: bool = False
    output: loader.StageOutput | None = None

    def matches(self, stage_id: str) -> bool:
        found = _STAGE_ID.match(stage_id)
        if found is None or int(found["rule"]) != self.rule_id:
            return False
        return not self.test_ids or int(found["test"]) in self.test_ids


@dataclass(frozen=True)
class Overrides:
    version: str
    meta: Mapping[str, Any]
    test_overrides: tuple[TestOverride, ...]
    source: str = ""


# "920100-4", "920100-4/2" (stage 2 of a multi-stage test), "941160-10~2" (a repeated title)
_STAGE_ID = re.compile(r"^(?P<rule>\d+)-(?P<test>\d+)(?:/\d+)?(?:~\d+)?$")
_TOP_KEYS = frozenset({"version", "meta", "test_overrides"})
_ENTRY_KEYS = frozenset(
    {"rule_id", "test_ids", "reason", "expect_failure", "retry_once", "output", "stage_ids"}
)


def load_overrides(path: Path) -> Overrides:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise OverridesError(f"{path}: {exc}") from exc
    return parse_overrides(document, source=str(path))


def parse_overrides(document: Any, *, source: str = "overrides") -> Overrides:
    if not isinstance(document, dict):
        raise OverridesError(f"{source}: top level is not a mapping")
    unknown = sorted(set(document) - _TOP_KEYS)
    if unknown:
        raise OverridesError(f"{source}: unknown keys {unknown} (known: {sorted(_TOP_KEYS)})")
    entries = document.get("test_overrides")
    if not isinstance(entries, list):
        raise OverridesError(f"{source}: test_overrides must be a list")
    meta = document.get("meta") or {}
    if not isinstance(meta, dict):
        raise OverridesError(f"{source}: meta must be a mapping")
    parsed = tuple(
        _entry(entry, f"{source}: test_overrides[{i}]") for i, entry in enumerate(entries)
    )
    return Overrides(str(document.get("version") or ""), meta, parsed, source)


def _entry(raw: Any, where: str) -> TestOverride:
    if not isinstance(raw, dict):
        raise OverridesError(f"{where}: not a mapping")
    unknown = sorted(set(raw) - _ENTRY_KEYS)
    if unknown:
        raise OverridesError(f"{where}: unknown keys {unknown}")
    if raw.get("stage_ids"):
        # stages are named per test here; overriding one stage of a test is not supported
        raise OverridesError(f"{where}: stage_ids is not supported, use test_ids")
    try:
        rule_id = int(raw["rule_id"])
        test_ids = tuple(int(i) for i in raw.get("test_ids") or ())
        output = raw.get("output")
        if output is not None and not isinstance(output, dict):
            raise TypeError("output must be a mapping")
        stage_output = loader.goftw_output(output) if output is not None else None
    except (KeyError, TypeError, ValueError) as exc:
        raise OverridesError(f"{where}: {type(exc).__name__}: {exc}") from exc
    reason = str(raw.get("reason") or "").strip()
    expect_failure = bool(raw.get("expect_failure", False))
    if expect_failure and not reason:
        raise OverridesError(f"{where}: expect_failure needs a reason")
    return TestOverride(
        rule_id=rule_id,
        test_ids=test_ids,
        reason=reason,
        expect_failure=expect_failure,
        retry_once=bool(raw.get("retry_once", False)),
        output=stage_output,
    )


def apply_overrides(
    stages: Sequence[Stage], overrides: Overrides
) -> tuple[list[Stage], dict[str, ExpectedFailure]]:
    """The stages with their outputs overridden, and the expected failures the file declares
    (every mode: go-ftw has one platform per run). The last override naming a stage wins."""
    result: list[Stage] = []
    expected: dict[str, ExpectedFailure] = {}
    for stage in stages:
        for override in overrides.test_overrides:
            if not override.matches(stage.stage_id):
                continue
            output = override.output or stage.output
            if override.retry_once:
                output = dataclasses.replace(output, retry_once=True)
            stage = dataclasses.replace(stage, output=output)
            if override.expect_failure:
                reason = f"{overrides.source}: {override.reason}"
                expected[stage.stage_id] = ExpectedFailure(stage.stage_id, MODES, reason)
        result.append(stage)
    return result, expected
