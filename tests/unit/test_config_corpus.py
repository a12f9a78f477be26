"""The config corpus: every file of tests/data/configs/{valid,invalid} against its sidecar.

Each ``NAME.yml`` has a ``NAME.json`` beside it: for a valid file the values it must produce,
for an invalid one every error it must produce (path, line, a part of the message), no more
and no fewer (gunicorn's tests/requests idea, docs/development.md "Corpus tests").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coraza_spoa_py import config
from coraza_spoa_py.settings import AppConfig, Config, LogConfig

CORPUS = Path(__file__).parent.parent / "data" / "configs"
VALID = sorted((CORPUS / "valid").glob("*.yml"))
INVALID = sorted((CORPUS / "invalid").glob("*.yml"))


def _sidecar(path: Path) -> dict[str, Any]:
    sidecar: dict[str, Any] = json.loads(path.with_suffix(".json").read_text())
    return sidecar


def _log_dict(log: LogConfig | None) -> dict[str, Any] | None:
    if log is None:
        return None
    return {"level": log.level, "file": log.file, "format": log.format, "dir": log.dir}


def _check_app(app: AppConfig, expected: dict[str, Any]) -> None:
    for key, value in expected.items():
        actual = _log_dict(app.log) if key == "log" else getattr(app, key)
        assert actual == value, f"{app.name}.{key}"


def _check_config(cfg: Config, expected: dict[str, Any]) -> None:
    assert str(cfg.bind) == expected["bind"]
    if "default_application" in expected:
        assert cfg.default_application == expected["default_application"]
    if "log" in expected:
        assert _log_dict(cfg.log) == expected["log"]
    for key in ("engine_threads", "max_frame_size", "max_connections", "idle_timeout_s"):
        if key in expected:
            assert getattr(cfg, key) == expected[key], key
    for key in ("processing_budget_ms", "graceful_timeout_s"):
        if key in expected:
            assert getattr(cfg, key) == expected[key], key
    apps = {app.name: app for app in cfg.applications}
    assert sorted(apps) == sorted(expected["applications"])
    for name, app_expected in expected["applications"].items():
        _check_app(apps[name], app_expected)


def test_the_corpus_is_big_enough() -> None:
    # the issue asks for >= 20 invalid files and the three generations among the valid ones
    assert len(INVALID) >= 20
    generations = {_sidecar(path)["generation"] for path in VALID}
    assert generations == {1, 2, 3}
    for path in VALID + INVALID:
        assert path.with_suffix(".json").exists(), f"{path.name} has no sidecar"


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_config(path: Path) -> None:
    """1. Load the file. 2. Compare with its sidecar. Result: the generation, every listed
    value and the notices (one deprecation line for Gen1/Gen2, none for Gen3) match."""
    expected = _sidecar(path)
    loaded = config.load_with_notices(str(path))
    assert loaded.generation == expected["generation"]
    _check_config(loaded.config, expected)
    for app in loaded.config.applications:
        assert app.base_dir == str(path.parent.resolve())
    if "notices" in expected:
        if expected["notices"]:
            assert loaded.notices, "a deprecated generation must log a notice"
            assert expected["notices"][0] in loaded.notices[0]
            assert "deprecated" in loaded.notices[0]
        else:
            assert loaded.notices == ()


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_config(path: Path) -> None:
    """1. Load the file. Result: ConfigError whose problems are exactly the sidecar's
    (path, line) pairs, each message containing the expected words."""
    expected = _sidecar(path)["errors"]
    with pytest.raises(config.ConfigError) as caught:
        config.load(str(path))
    problems = caught.value.problems
    got = sorted((p.path, p.line) for p in problems)
    want = sorted((e["path"], e["line"]) for e in expected)
    assert got == want, [p.render(path.name) for p in problems]
    by_place = {(p.path, p.line): p.message for p in problems}
    for item in expected:
        assert item["contains"] in by_place[(item["path"], item["line"])]
    # the exception text lists every problem with file and line
    for problem in problems:
        assert f"{path}:{problem.line}" in str(caught.value)


def test_config_example_validates() -> None:
    """The shipped config.example.yml is Gen3 and loads without notices."""
    example = Path(__file__).parent.parent.parent / "config.example.yml"
    loaded = config.load_with_notices(str(example))
    assert loaded.generation == 3
    assert loaded.notices == ()
    assert loaded.config.default_application in {a.name for a in loaded.config.applications}
