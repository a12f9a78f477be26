"""YAML text → data, keeping the line of every key and list item, so each problem of a config
file names its line (docs/development.md "One config pipeline"). ``safe_load`` only; a duplicate
key is an error, as in Go's yaml.v3 that coraza-spoa reads with.
"""

from __future__ import annotations

from typing import Any

import yaml

from coraza_spoa_py.config_problems import ConfigError, ConfigProblem
from coraza_spoa_py.config_shapes import Path, format_path


def read_yaml(text: str, source: str) -> tuple[Any, dict[Path, int]]:
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
