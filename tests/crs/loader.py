"""Read CRS regression test files into ``Stage`` objects, in both formats that exist.

- **legacy** (ftw 1.x, CRS 3.x, e.g. ``../shared/crs-tests/v3.3.4``): ``meta{enabled}``,
  ``tests[]{test_title, stages[]{stage{input, output}}}``, ``output.log_contains`` /
  ``no_log_contains`` regexes (``id "920100"``), ``status`` (int or list), ``response_contains``,
  ``expect_error``; ``input.raw_request`` / ``encoded_request`` / ``stop_magic``.
- **go-ftw** (CRS 4.x, ftw-tests-schema v2, docs/crs.md "Test file formats"): ``tests[]{test_id,
stages[]{input,
  output}}``, ``output.log{expect_ids, no_expect_ids, match_regex, no_match_regex}``, ``status``,
  ``expect_error``, ``retry_once``, ``input.autocomplete_headers``, ``encoded_request``.

Both become the same ``Stage``; the format is kept because the request builder copies each
tool's own quirks. This module only reads: it never builds bytes and never judges.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Format = Literal["legacy", "goftw"]


class LoadError(Exception):
    """A test file that neither format can read; ``str()`` names the file and the reason."""


@dataclass(frozen=True)
class StageInput:
    method: str = "GET"
    uri: str = "/"
    version: str = "HTTP/1.1"
    # (name, value) in file order; values as YAML gave them (ftw 1.x str()s them on output)
    headers: tuple[tuple[str, Any], ...] = ()
    # legacy: str (a YAML list is joined with CRLF, as ftw 1.x does); go-ftw: str
    data: str = ""
    # legacy ``stop_magic: true`` and go-ftw ``autocomplete_headers: false`` both mean: send the
    # headers and data exactly as written, add nothing
    autocomplete: bool = True
    raw_request: str | None = None
    encoded_request: str | None = None


@dataclass(frozen=True)
class StageOutput:
    status: tuple[int, ...] = ()
    expect_ids: tuple[int, ...] = ()
    no_expect_ids: tuple[int, ...] = ()
    # legacy log_contains / no_log_contains and go-ftw match_regex / no_match_regex: searched in
    # the log lines of the stage (see judge.py for how those lines are made from rule ids)
    log_regexes: tuple[str, ...] = ()
    no_log_regexes: tuple[str, ...] = ()
    response_contains: str | None = None
    expect_error: bool = False
    # go-ftw ``output.retry_once``: a stage that fails is sent once more, and judged on that
    retry_once: bool = False


@dataclass(frozen=True)
class Stage:
    stage_id: str  # unique in one run: the test title (+ "/N" for multi-stage tests)
    file: str  # path relative to the tests root, e.g. REQUEST-920-.../920100.yaml
    rule_file: str  # the rule-set folder, e.g. REQUEST-920-PROTOCOL-ENFORCEMENT
    format: Format
    input: StageInput
    output: StageOutput
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


_ID_IN_REGEX = re.compile(r"\d{6}")
# libyaml's loader when PyYAML has it (4x faster on the 178 files), else the pure one
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def detect_format(document: Mapping[str, Any]) -> Format:
    """legacy files wrap each stage in ``stage:`` and name tests ``test_title``."""
    for test in document.get("tests") or ():
        for stage in test.get("stages") or ():
            return "legacy" if "stage" in stage else "goftw"
        return "legacy" if "test_title" in test else "goftw"
    return "legacy" if "meta" in document and "rule_id" not in document else "goftw"


def load_file(path: Path, root: Path | None = None) -> list[Stage]:
    """Every enabled stage of one YAML file, in file order."""
    relative = str(path.relative_to(root)) if root else path.name
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise LoadError(f"{relative}: {exc}") from exc
    if not document:  # a file that is all comments (CRS 4's 920539.yaml)
        return []
    if not isinstance(document, dict):
        raise LoadError(f"{relative}: top level is not a mapping")
    try:
        if detect_format(document) == "legacy":
            return list(_legacy_stages(document, relative))
        return list(_goftw_stages(document, relative))
    except (KeyError, TypeError, ValueError) as exc:
        raise LoadError(f"{relative}: {type(exc).__name__}: {exc}") from exc


def load_tree(root: Path) -> list[Stage]:
    """All stages under ``root`` (sorted by path), with stage ids made unique."""
    stages: list[Stage] = []
    for path in sorted(root.rglob("*.yaml")):
        stages.extend(load_file(path, root))
    return _unique_ids(stages)


def _unique_ids(stages: Sequence[Stage]) -> list[Stage]:
    # v3.3.4's 941160.yaml uses the title 941160-10 twice; keep both, the second as "-10~2"
    seen: dict[str, int] = {}
    result = []
    for stage in stages:
        count = seen.get(stage.stage_id, 0) + 1
        seen[stage.stage_id] = count
        if count > 1:
            stage = Stage(
                f"{stage.stage_id}~{count}",
                stage.file,
                stage.rule_file,
                stage.format,
                stage.input,
                stage.output,
                stage.description,
                stage.extra,
            )
        result.append(stage)
    return result


# ----------------------------------------------------------------------------- legacy (ftw 1.x)


def _legacy_stages(document: Mapping[str, Any], relative: str) -> Iterator[Stage]:
    meta = document.get("meta") or {}
    # ftw 1.x Ruleset: a file whose meta says enabled: false contributes no tests
    if not meta.get("enabled", True):
        return
    for test in document.get("tests") or ():
        if not test.get("enabled", True):
            continue
        title = str(test["test_title"])
        stages = test.get("stages") or ()
        for index, wrapper in enumerate(stages):
            body = wrapper["stage"]
            stage_id = title if len(stages) == 1 else f"{title}/{index + 1}"
            yield Stage(
                stage_id=stage_id,
                file=relative,
                rule_file=Path(relative).parts[0] if "/" in relative else "",
                format="legacy",
                input=_legacy_input(body.get("input") or {}),
                output=_legacy_output(body.get("output") or {}),
                description=str(test.get("desc") or ""),
            )


def _legacy_input(raw: Mapping[str, Any]) -> StageInput:
    data = raw.get("data", "")
    if isinstance(data, list):  # ftw 1.x Input: "Support data in list format and join on CRLF"
        data = "\r\n".join(str(line) for line in data)
    headers = raw.get("headers") or {}
    return StageInput(
        method=str(raw.get("method", "GET")),
        uri=str(raw.get("uri", "/")),
        version=str(raw.get("version", "HTTP/1.1")),
        headers=tuple((str(name), value) for name, value in headers.items()),
        data="" if data is None else str(data),
        autocomplete=not raw.get("stop_magic", False),
        raw_request=raw.get("raw_request"),
        encoded_request=raw.get("encoded_request"),
    )


def _legacy_output(raw: Mapping[str, Any]) -> StageOutput:
    return StageOutput(
        status=_statuses(raw.get("status")),
        log_regexes=_regex_list(raw.get("log_contains")),
        no_log_regexes=_regex_list(raw.get("no_log_contains")),
        response_contains=raw.get("response_contains"),
        expect_error=bool(raw.get("expect_error", False)),
    )


# ----------------------------------------------------------------------------- go-ftw (CRS 4)


def _goftw_stages(document: Mapping[str, Any], relative: str) -> Iterator[Stage]:
    rule_file = Path(relative).parts[0] if "/" in relative else ""
    for position, test in enumerate(document.get("tests") or ()):
        # schema v2 names tests by rule_id + test_id; older go-ftw files still use test_title
        if "test_title" in test:
            title = str(test["test_title"])
        else:
            rule_id = document.get("rule_id") or Path(relative).stem
            title = f"{rule_id}-{test.get('test_id', position + 1)}"
        stages = test.get("stages") or ()
        for index, body in enumerate(stages):
            body = body.get("stage", body)  # go-ftw 1.x still accepted the wrapper
            stage_id = title if len(stages) == 1 else f"{title}/{index + 1}"
            yield Stage(
                stage_id=stage_id,
                file=relative,
                rule_file=rule_file,
                format="goftw",
                input=_goftw_input(body.get("input") or {}),
                output=goftw_output(body.get("output") or {}),
                description=str(test.get("desc") or test.get("description") or ""),
            )


def _goftw_input(raw: Mapping[str, Any]) -> StageInput:
    headers = raw.get("headers") or {}
    if isinstance(headers, list):  # schema v2.1 ordered headers: [{name, value}]
        pairs = tuple((str(h["name"]), h["value"]) for h in headers)
    else:
        pairs = tuple((str(name), value) for name, value in headers.items())
    data = raw.get("data", "")
    return StageInput(
        method=str(raw.get("method", "GET")),
        uri=str(raw.get("uri", "/")),
        version=str(raw.get("version", "HTTP/1.1")),
        headers=pairs,
        data="" if data is None else str(data),
        autocomplete=bool(raw.get("autocomplete_headers", True)),
        raw_request=raw.get("raw_request"),
        encoded_request=raw.get("encoded_request"),
    )


def goftw_output(raw: Mapping[str, Any]) -> StageOutput:
    """A go-ftw ``output`` mapping (also what an overrides file's ``output`` holds)."""
    log = raw.get("log") or {}
    # go-ftw 1.x spelled these at the top level of output
    expect_ids = log.get("expect_ids", raw.get("expect_ids")) or ()
    no_expect_ids = log.get("no_expect_ids", raw.get("no_expect_ids")) or ()
    return StageOutput(
        status=_statuses(raw.get("status")),
        expect_ids=tuple(int(i) for i in expect_ids),
        no_expect_ids=tuple(int(i) for i in no_expect_ids),
        log_regexes=_regex_list(log.get("match_regex", raw.get("log_contains"))),
        no_log_regexes=_regex_list(log.get("no_match_regex", raw.get("no_log_contains"))),
        response_contains=raw.get("response_contains"),
        expect_error=bool(raw.get("expect_error", False)),
        retry_once=bool(raw.get("retry_once", False)),
    )


# ----------------------------------------------------------------------------- helpers


def _statuses(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(int(v) for v in value)
    return (int(value),)


def _regex_list(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, list):
        return tuple(str(v) for v in value)
    return (str(value),)


def rule_ids_named(regex: str) -> tuple[int, ...]:
    """The six-digit rule ids a log regex mentions (for reports, never for judging)."""
    return tuple(int(m) for m in _ID_IN_REGEX.findall(regex))
