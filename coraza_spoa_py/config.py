"""YAML config file → ``settings.Config``: the one pipeline (docs/development.md "One config
pipeline").

Steps: YAML ``safe_load`` keeping each key's line (``config_yaml``) → detect the generation by
shape (Gen1 ``log:``/``spoa:``, Gen2 ``applications:`` map, Gen3 ``applications:`` list;
docs/compatibility.md "Config generations") → JSON Schema (``config.schema.json``, every error at
once; in a short-lived child for the agent's processes, ``validate_in_child``) → Gen1/Gen2
mapped to the Gen3 shape (``config_shapes``) → cross-field checks (``config_checks``) → frozen
dataclasses (``settings``). Every problem found is reported together
in one ``ConfigError`` (``config_problems``), each with its YAML path and line.

Must not load rules, open sockets or configure logging: it only reads and checks the file.
The notices are logged once logging is configured: by the only process or the master at start
(``wiring.start_logging``, ``cli``), and on a reload by the only process or worker 1
(``runtime_reload``).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jsonschema

from coraza_spoa_py.config_checks import cross_problems, parse_bind
from coraza_spoa_py.config_problems import ConfigError, ConfigProblem, Locator
from coraza_spoa_py.config_shapes import (
    GEN1,
    GEN2,
    GEN3,
    GENERATION_NAMES,
    Path,
    PathMap,
    detect_generation,
    gen1_to_gen3,
    gen2_to_gen3,
)
from coraza_spoa_py.config_yaml import read_yaml
from coraza_spoa_py.settings import (
    AppConfig,
    Config,
    LogConfig,
    RulePaths,
)

SCHEMA_RESOURCE = "config.schema.json"
# zerolog's numeric level strings (docs/compatibility.md "Gen3 keys") → the names we store
_NUMERIC_LEVELS = {"-1": "trace", "0": "debug", "1": "info", "2": "warn", "3": "error"}
_NUMERIC_LEVELS |= {"4": "fatal", "5": "panic", "7": "disabled", "warning": "warn"}


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: Config
    generation: int
    # deprecation and other non-fatal notices, logged once logging is set up (module doc)
    notices: tuple[str, ...] = ()


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema shipped in the package (one ``$defs`` entry per generation)."""
    text = resources.files("coraza_spoa_py").joinpath(SCHEMA_RESOURCE).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _validator(generation: int) -> jsonschema.protocols.Validator:
    import jsonschema  # only where configs are checked in process (validate_in_child)

    root = dict(schema())
    root["$ref"] = f"#/$defs/gen{generation}"
    cls = jsonschema.validators.validator_for(root)
    validator: jsonschema.protocols.Validator = cls(root)
    return validator


def _schema_problems(data: Any, generation: int, lines: Mapping[Path, int]) -> list[ConfigProblem]:
    locate = Locator(lines, {})
    if _in_child:
        errors = _schema_errors_in_child(data, generation)
    else:
        errors = schema_errors(data, generation)
    return [locate.problem(path, message) for path, message in errors]


def schema_errors(data: Any, generation: int) -> list[tuple[Path, str]]:
    """Every schema error of ``data`` (a config of ``generation``): its path and message."""
    errors: list[tuple[Path, str]] = []
    for error in _validator(generation).iter_errors(data):
        path: Path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            subschema: Any = error.schema
            known = set(subschema.get("properties", {}))
            for key in sorted(set(error.instance) - known, key=str):
                errors.append(((*path, str(key)), _unknown_key(key, generation)))
            continue
        errors.append((path, _schema_message(error)))
    return errors


# Whether configs are checked against the schema in a child process (``validate_in_child``).
_in_child = False
# The child: this package (the parent's copy, first on its path), the data in, the errors out.
_CHILD_CODE = (
    "import pickle, sys; sys.path.insert(0, sys.argv[1]); "
    "from coraza_spoa_py.config import schema_errors; "
    "pickle.dump(schema_errors(*pickle.load(sys.stdin.buffer)), sys.stdout.buffer)"
)
CHILD_TIMEOUT_S = 60.0


def validate_in_child() -> None:
    """From now on, check configs against the schema in a short-lived child process, so that
    ``jsonschema`` and its dependencies (3.4 MiB, which dropping them from ``sys.modules`` does
    not give back) never enter this long-lived process (docs/performance.md change 35). The
    agent's processes call it at start (``cli``); tests and tools check in process."""
    global _in_child
    _in_child = True


def _schema_errors_in_child(data: Any, generation: int) -> list[tuple[Path, str]]:
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD_CODE, package_root],
            input=pickle.dumps((data, generation)),
            capture_output=True,
            timeout=CHILD_TIMEOUT_S,
            check=True,
        )
        errors: list[tuple[Path, str]] = pickle.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, pickle.UnpicklingError, EOFError):
        # no child (no interpreter to start, or it failed): check here; the memory is what
        # that costs, never the check
        return schema_errors(data, generation)
    return errors


# keys of the other generations that people carry over by mistake → what to write instead
_KEY_HINTS = {
    "no_response_check": "use `response_check` (its inverse)",
    "rules": "use `directives`",
    "include": "use `Include <file>` lines in `directives`",
    "transaction_ttl": "use `transaction_ttl_ms`",
    "log": "use the top-level `log_level`, `log_file` and `log_format` keys",
    "spoa": "the `spoa:` section belongs to the 2022 format, which has no `applications`",
}


def _unknown_key(key: object, generation: int) -> str:
    hint = _KEY_HINTS.get(str(key)) if generation == GEN3 else None
    return f"unknown key {key!r}" + (f" ({hint})" if hint else "")


def _schema_message(error: jsonschema.ValidationError) -> str:
    if error.validator == "enum":
        choices: Any = error.validator_value
        allowed = ", ".join(str(v) for v in choices)
        return f"{error.instance!r} is not one of: {allowed}"
    if error.validator == "type":
        wanted: Any = error.validator_value
        kinds = " or ".join(wanted) if isinstance(wanted, list) else str(wanted)
        return f"expected {kinds}, got {type(error.instance).__name__} {error.instance!r}"
    return error.message


def _level(value: str) -> str:
    lowered = value.strip().lower()
    return _NUMERIC_LEVELS.get(lowered, lowered)


def _log(section: Mapping[str, Any], fallback: LogConfig) -> LogConfig:
    return LogConfig(
        level=_level(section.get("log_level", fallback.level)),
        file=section.get("log_file", fallback.file),
        format=section.get("log_format", fallback.format),
        dir=section.get("log_dir", fallback.dir),
    )


_APP_LOG_KEYS = ("log_level", "log_file", "log_format", "log_dir")
# keys copied as they are into the dataclass field of the same name; a key the file leaves out
# is not passed, so the field's default applies (settings.py: the one source of defaults)
_APP_KEYS = (
    "directives",
    "response_check",
    "transaction_ttl_ms",
    "transaction_active_limit",
    "orphan_responses",
    "export_rule_ids",
)
_TOP_KEYS = (
    "engine_threads",
    "workers",
    "max_frame_size",
    "max_connections",
    "max_connections_per_source",
    "processing_budget_ms",
)
# seconds: the schema takes integers too, the fields are floats
_TOP_SECONDS_KEYS = ("idle_timeout_s", "hello_timeout_s", "frame_timeout_s", "graceful_timeout_s")
_RULE_PATH_KEYS = ("crs_rules_dir", "crs_setup_file")


def _given(section: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: section[key] for key in keys if key in section}


def _build(data: Mapping[str, Any], locate: Locator, base_dir: str, source: str) -> Config:
    """Gen3-shaped, schema-valid data → ``Config``; cross-field problems raise ConfigError."""
    problems = cross_problems(data, locate)
    if problems:
        raise ConfigError(source, problems)
    top_log = _log(data, LogConfig())
    apps = [
        AppConfig(
            name=item["name"],
            log=_log(item, top_log) if any(key in item for key in _APP_LOG_KEYS) else None,
            base_dir=base_dir,
            **_given(item, _APP_KEYS),
        )
        for item in data.get("applications") or []
    ]
    seconds: dict[str, Any] = {
        key: float(value) for key, value in _given(data, _TOP_SECONDS_KEYS).items()
    }
    return Config(
        bind=parse_bind(data["bind"]),
        applications=tuple(apps),
        default_application=data.get("default_application") or None,
        log=top_log,
        rule_paths=RulePaths(**_given(data, _RULE_PATH_KEYS)),
        source_file=source,
        **_given(data, _TOP_KEYS),
        **seconds,
    )


def parse(text: str, source: str = "<config>", base_dir: str = ".") -> LoadedConfig:
    """Config text → ``LoadedConfig``; raises ``ConfigError`` listing every problem."""
    data, lines = read_yaml(text, source)
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(source, [ConfigProblem("", 1, f"expected a mapping, got {kind}")])
    generation = detect_generation(data)
    problems = _schema_problems(data, generation, lines)
    if problems:
        if generation == GEN3:
            # report the cross-field problems of the same file in the same run
            problems += cross_problems(data, Locator(lines, {}))
        raise ConfigError(source, problems)
    notices: list[str] = []
    origins: PathMap = {}
    shaped: Mapping[str, Any] = data
    if generation == GEN1:
        shaped, origins, notices = gen1_to_gen3(data)
    elif generation == GEN2:
        shaped, origins, notices = gen2_to_gen3(data)
    config = _build(shaped, Locator(lines, origins), base_dir, source)
    if generation != GEN3:
        # one deprecation line: which format, and its mapping to the current one (the
        # converter's first notice); docs/operations.md "Migrating from coraza-spoa" has the
        # full tables
        mapping = notices.pop(0)
        notices.insert(
            0,
            f"{source} uses the {GENERATION_NAMES[generation]} config format, which is "
            f"deprecated: {mapping} (docs/operations.md, migrating)",
        )
    return LoadedConfig(config, generation, tuple(notices))


def load_with_notices(path: str) -> LoadedConfig:
    """Read and check the file at ``path``; relative rule paths resolve against its folder."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as exc:
        raise ConfigError(path, [ConfigProblem("", None, f"cannot read: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(path, [ConfigProblem("", None, f"not UTF-8 text: {exc}")]) from exc
    base_dir = os.path.dirname(os.path.abspath(path))
    return parse(text, source=path, base_dir=base_dir)


def load(path: str) -> Config:
    """The contract of docs/architecture.md: path → ``Config`` or ``ConfigError``."""
    return load_with_notices(path).config


__all__ = [
    "ConfigError",
    "ConfigProblem",
    "LoadedConfig",
    "cross_problems",
    "load",
    "load_with_notices",
    "parse",
    "parse_bind",
    "schema",
]
