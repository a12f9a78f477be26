"""What is wrong with a config file, and where: ``ConfigProblem`` (YAML path, line, message),
``ConfigError`` (every problem of one file, raised once) and ``Locator``, which finds the user's
own key and line for a problem found on the Gen3-shaped data (docs/development.md "One config
pipeline").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from coraza_spoa_py.config_shapes import Path, PathMap, format_path


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


class Locator:
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
