"""YAML config file → ``settings.Config``: the one pipeline (docs/development.md "One config
pipeline").

Steps: YAML ``safe_load`` keeping each key's line → detect the generation by shape (Gen1
``log:``/``spoa:``, Gen2 ``applications:`` map, Gen3 ``applications:`` list; docs/compatibility.md
"Config generations") → JSON Schema (``config.schema.json``, every error at once) → Gen1/Gen2
mapped to the Gen3 shape (same section) → cross-field checks → frozen dataclasses. Every
problem found is reported together in one ``ConfigError``, each with its YAML path and line.

Must not load rules, open sockets or configure logging: it only reads and checks the file.
``cli`` logs the deprecation notices once logging is configured.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
import yaml

from coraza_spoa_py.config_shapes import (
    DEFAULT_TTL_MS,
    GEN1,
    GEN2,
    GEN3,
    GENERATION_NAMES,
    Path,
    PathMap,
    detect_generation,
    format_path,
    gen1_to_gen3,
    gen2_to_gen3,
)
from coraza_spoa_py.settings import (
    DEFAULT_TRANSACTION_ACTIVE_LIMIT,
    AppConfig,
    BindAddress,
    Config,
    LogConfig,
    RulePaths,
)

SCHEMA_RESOURCE = "config.schema.json"
# zerolog's numeric level strings (docs/compatibility.md "Gen3 keys") → the names we store
_NUMERIC_LEVELS = {"-1": "trace", "0": "debug", "1": "info", "2": "warn", "3": "error"}
_NUMERIC_LEVELS |= {"4": "fatal", "5": "panic", "7": "disabled", "warning": "warn"}


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    path: str  # "applications[0].transaction_ttl_ms"; "" for the whole document
    line: int | None  # 1-based line in the file
    message: str

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line else source
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """Every problem of a config file, each with its YAML path and line."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = sorted(problems, key=lambda p: (p.line or 0, p.path, p.message))
        lines = "\n".join(f"  {p.render(source)}" for p in self.problems)
        count = len(self.problems)
        super().__init__(f"invalid configuration {source} ({count} problem(s)):\n{lines}")


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: Config
    generation: int
    # deprecation and other non-fatal notices, logged by cli once logging is set up
    notices: tuple[str, ...] = ()


def _read_yaml(text: str, source: str) -> tuple[Any, dict[Path, int]]:
    """YAML text → (data, line of every key and list item). Duplicate keys are errors, as in
    yaml.v3 (PyYAML would keep the last one silently)."""
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # the reader rejects control characters up front
        raise ConfigError(source, [_yaml_problem(exc, text)]) from exc
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(source, [ConfigProblem("", 1, "the file is empty")])
        lines: dict[Path, int] = {}
        duplicates: list[ConfigProblem] = []
        _record_lines(node, (), lines, duplicates)
        if duplicates:
            raise ConfigError(source, duplicates)
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [_yaml_problem(exc, text)]) from exc
    except RecursionError as exc:  # PyYAML composes recursively
        raise ConfigError(source, [ConfigProblem("", None, "nested too deeply")]) from exc
    finally:
        loader.dispose()
    return data, lines


def _yaml_problem(exc: yaml.YAMLError, text: str) -> ConfigProblem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        line: int | None = mark.line + 1
    elif isinstance(getattr(exc, "position", None), int):
        line = text.count("\n", 0, getattr(exc, "position", 0)) + 1
    else:
        line = None
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
    return ConfigProblem("", line, f"YAML syntax error: {problem}")


def _record_lines(
    node: yaml.Node, path: Path, lines: dict[Path, int], duplicates: list[ConfigProblem]
) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*path, key)
            if key in seen:
                duplicates.append(
                    ConfigProblem(format_path(child), key_node.start_mark.line + 1, "duplicate key")
                )
            seen.add(key)
            lines[child] = key_node.start_mark.line + 1
            _record_lines(value_node, child, lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*path, index), lines, duplicates)


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema shipped in the package (one ``$defs`` entry per generation)."""
    text = resources.files("coraza_spoa_py").joinpath(SCHEMA_RESOURCE).read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def _validator(generation: int) -> jsonschema.protocols.Validator:
    root = dict(schema())
    root["$ref"] = f"#/$defs/gen{generation}"
    cls = jsonschema.validators.validator_for(root)
    validator: jsonschema.protocols.Validator = cls(root)
    return validator


class _Locator:
    """Paths and lines of the original file, for problems found on the Gen3-shaped data."""

    def __init__(self, lines: Mapping[Path, int], origins: PathMap) -> None:
        self.lines = lines
        self.origins = origins

    def original(self, path: Path) -> Path:
        for size in range(len(path), -1, -1):
            prefix = path[:size]
            if prefix in self.origins:
                return (*self.origins[prefix], *path[size:])
        return path

    def line(self, original: Path) -> int | None:
        for size in range(len(original), -1, -1):
            if original[:size] in self.lines:
                return self.lines[original[:size]]
        return None

    def problem(self, path: Path, message: str) -> ConfigProblem:
        original = self.original(path)
        return ConfigProblem(format_path(original), self.line(original), message)


def _schema_problems(data: Any, generation: int, lines: Mapping[Path, int]) -> list[ConfigProblem]:
    locate = _Locator(lines, {})
    problems: list[ConfigProblem] = []
    for error in _validator(generation).iter_errors(data):
        path: Path = tuple(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            subschema: Any = error.schema
            known = set(subschema.get("properties", {}))
            for key in sorted(set(error.instance) - known, key=str):
                problems.append(locate.problem((*path, str(key)), _unknown_key(key, generation)))
            continue
        problems.append(locate.problem(path, _schema_message(error)))
    return problems


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


def parse_bind(text: str) -> BindAddress:
    """``bind`` → ``BindAddress`` (docs/compatibility.md "Gen3 keys", fixed per §11.3).

    Accepts ``host:port``, ``:port``, ``[v6]:port``, ``tcp://host:port``, ``unix:///path`` and
    ``unix:/path``. Raises ``ValueError`` with what is wrong.
    """
    value = text.strip()
    if value.startswith("unix:"):
        path = value[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError("unix socket path is empty")
        return BindAddress("unix", path=path)
    for prefix in ("tcp://", "tcp4://", "tcp6://"):
        if value.startswith(prefix):
            value = value[len(prefix) :].rstrip("/")
            break
    if "://" in value:
        raise ValueError(f"unsupported scheme in {text!r} (use host:port, tcp:// or unix://)")
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} has no port (write host:port, :port or unix:///path)")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"unbalanced brackets in {text!r}")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"IPv6 addresses need brackets: [{host}]:{port_text}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 0 to 65535")
    return BindAddress("tcp", host=host, port=int(port_text))


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


def cross_problems(data: Mapping[str, Any], locate: _Locator) -> list[ConfigProblem]:
    """Checks that span keys or need code: ``bind`` forms, unique names, ``default_application``
    exists, TTL > 0 where responses are checked (docs/development.md "One config pipeline").

    Defensive about types, so it also runs on data the schema rejected: one run of the
    agent (or of -validate) lists every problem of the file.
    """
    problems: list[ConfigProblem] = []
    if isinstance(data.get("bind"), str):
        try:
            parse_bind(data["bind"])
        except ValueError as exc:
            problems.append(locate.problem(("bind",), str(exc)))
    items = data.get("applications")
    names: dict[str, int] = {}
    for index, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict):
            continue
        name = item.get("name")
        if isinstance(name, str) and name in names:
            problems.append(
                locate.problem(
                    ("applications", index, "name"),
                    f"duplicate application name {name!r} (also applications[{names[name]}])",
                )
            )
        if isinstance(name, str):
            names.setdefault(name, index)
        ttl = item.get("transaction_ttl_ms", DEFAULT_TTL_MS)
        if item.get("response_check") is True and isinstance(ttl, int) and ttl <= 0:
            problems.append(
                locate.problem(
                    ("applications", index, "transaction_ttl_ms"),
                    "must be > 0 when response_check is true (responses would never find "
                    "their request)",
                )
            )
    default = data.get("default_application") or None  # "" means none, as in coraza-spoa
    if isinstance(default, str) and default not in names:
        known = ", ".join(repr(n) for n in names) or "none"
        problems.append(
            locate.problem(
                ("default_application",),
                f"application {default!r} is not defined (defined: {known})",
            )
        )
    return problems


def _build(data: Mapping[str, Any], locate: _Locator, base_dir: str, source: str) -> Config:
    """Gen3-shaped, schema-valid data → ``Config``; cross-field problems raise ConfigError."""
    problems = cross_problems(data, locate)
    if problems:
        raise ConfigError(source, problems)
    bind = parse_bind(data["bind"])
    top_log = _log(data, LogConfig())
    apps = [
        AppConfig(
            name=item["name"],
            directives=item.get("directives", ""),
            response_check=item.get("response_check", False),
            transaction_ttl_ms=item.get("transaction_ttl_ms", DEFAULT_TTL_MS),
            transaction_active_limit=item.get(
                "transaction_active_limit", DEFAULT_TRANSACTION_ACTIVE_LIMIT
            ),
            orphan_responses=item.get("orphan_responses", "inspect"),
            export_rule_ids=item.get("export_rule_ids", False),
            log=_log(item, top_log) if any(key in item for key in _APP_LOG_KEYS) else None,
            base_dir=base_dir,
        )
        for item in data.get("applications") or []
    ]
    default = data.get("default_application") or None
    defaults = Config(bind=bind)
    return Config(
        bind=bind,
        applications=tuple(apps),
        default_application=default,
        log=top_log,
        rule_paths=RulePaths(
            crs_rules_dir=data.get("crs_rules_dir", defaults.rule_paths.crs_rules_dir),
            crs_setup_file=data.get("crs_setup_file", defaults.rule_paths.crs_setup_file),
        ),
        engine_threads=data.get("engine_threads"),
        workers=data.get("workers", defaults.workers),
        max_frame_size=data.get("max_frame_size", defaults.max_frame_size),
        max_connections=data.get("max_connections", defaults.max_connections),
        idle_timeout_s=float(data.get("idle_timeout_s", defaults.idle_timeout_s)),
        max_connections_per_source=data.get(
            "max_connections_per_source", defaults.max_connections_per_source
        ),
        hello_timeout_s=float(data.get("hello_timeout_s", defaults.hello_timeout_s)),
        frame_timeout_s=float(data.get("frame_timeout_s", defaults.frame_timeout_s)),
        processing_budget_ms=data.get("processing_budget_ms", defaults.processing_budget_ms),
        graceful_timeout_s=float(data.get("graceful_timeout_s", defaults.graceful_timeout_s)),
        source_file=source,
    )


def parse(text: str, source: str = "<config>", base_dir: str = ".") -> LoadedConfig:
    """Config text → ``LoadedConfig``; raises ``ConfigError`` listing every problem."""
    data, lines = _read_yaml(text, source)
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(source, [ConfigProblem("", 1, f"expected a mapping, got {kind}")])
    generation = detect_generation(data)
    problems = _schema_problems(data, generation, lines)
    if problems:
        if generation == GEN3:
            # report the cross-field problems of the same file in the same run
            problems += cross_problems(data, _Locator(lines, {}))
        raise ConfigError(source, problems)
    notices: list[str] = []
    origins: PathMap = {}
    shaped: Mapping[str, Any] = data
    if generation == GEN1:
        shaped, origins, notices = gen1_to_gen3(data)
    elif generation == GEN2:
        shaped, origins, notices = gen2_to_gen3(data)
    config = _build(shaped, _Locator(lines, origins), base_dir, source)
    if generation != GEN3:
        # one deprecation line: which format, and its mapping to the current one (the
        # converter's first notice); docs/operations.md "Migrating" has the full tables
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
