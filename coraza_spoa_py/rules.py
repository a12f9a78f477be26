"""Prepare an application's ``directives`` for libmodsecurity: resolve the ``@`` includes, make
relative ``Include`` paths absolute, and drop Coraza-only directives the engine would reject.

Text work only (plus reading the files it points at and checking they exist); it must not
load the engine or log: warnings are returned for the caller to log (compat.md Part 1,
"Config and CLI"; docs/engine.md "Includes").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from coraza_spoa_py.settings import AppConfig, RulePaths

# Our ModSecurity v3 base config, shipped in the package (docs/engine.md "Base config").
BASE_CONFIG_FILE = Path(__file__).parent / "data" / "coraza.conf-recommended"

CRS_RULES_PREFIX = "@owasp_crs/"
CRS_SETUP_NAME = "@crs-setup.conf.example"
BASE_CONFIG_NAME = "@coraza.conf-recommended"
# Debian keeps the CRS exclusion files beside crs-setup.conf and loads them around the rules
# (/usr/share/modsecurity-crs/owasp-crs.load); `Include @owasp_crs/*.conf` does the same.
EXCLUSIONS_BEFORE = "REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf"
EXCLUSIONS_AFTER = "RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf"

# Directives Coraza accepts (most of them as no-ops) and libmodsecurity 3.0.9 rejects, each
# checked against the library (tests/integration/test_waf.py). Dropping them loses nothing
# the engine could have done: they tune Coraza internals or features v3 does not have.
CORAZA_ONLY_DIRECTIVES = frozenset(
    name.lower()
    for name in (
        "SecRxPreFilter",
        "SecIgnoreRuleCompilationErrors",
        "SecRequestBodyInMemoryLimit",
        "SecSensorId",
        "SecServerSignature",
        "SecConnReadStateLimit",
        "SecConnWriteStateLimit",
        "SecGsbLookupDb",
        "SecHashEngine",
        "SecHashKey",
        "SecHashParam",
        "SecHashMethodPm",
        "SecHashMethodRx",
        "SecDataset",
        "SecAuditLogDir",
        "SecUnicodeMap",
        "SecRulePerfTime",
    )
)
# Directives whose Coraza-only *values* libmodsecurity rejects.
CORAZA_ONLY_VALUES = {
    "secauditlogformat": frozenset({"ocsf"}),
}

_DIRECTIVE = re.compile(r"^\s*(?P<name>[A-Za-z]+)(?:\s+(?P<rest>.*))?$")
_SEVERAL_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class ResolvedRules:
    """Directives ready for ``msc_rules_add``.

    ``source_lines[i]`` is the line of the app's ``directives`` that output line ``i + 1``
    came from, so engine errors can name the line the user wrote.
    """

    text: str
    source_lines: tuple[int, ...]
    warnings: tuple[str, ...]
    label: str  # how problems in the directives text are named: "<app NAME directives>"

    def source_line(self, output_line: int) -> int:
        if 1 <= output_line <= len(self.source_lines):
            return self.source_lines[output_line - 1]
        return output_line


def resolve(app: AppConfig, paths: RulePaths) -> ResolvedRules:
    """Rewrite ``app.directives`` for libmodsecurity (see the module docstring)."""
    label = f"<app {app.name} directives>"
    out_lines: list[str] = []
    origins: list[int] = []
    warnings: list[str] = []
    for first_line, directive_lines in _logical_lines(app.directives):
        joined = " ".join(line.rstrip("\\").strip() for line in directive_lines)
        found = _DIRECTIVE.match(joined)
        name = found["name"].lower() if found else ""
        rest = (found["rest"] or "").strip() if found else ""
        replacement: list[str] | None = None
        if name in CORAZA_ONLY_DIRECTIVES or (
            name in CORAZA_ONLY_VALUES and _unquote(rest).lower() in CORAZA_ONLY_VALUES[name]
        ):
            warnings.append(
                f"{label}:{first_line}: dropped {found['name'] if found else name}: "
                "a Coraza-only directive that libmodsecurity does not accept"
            )
            replacement = []
        elif name == "include":
            replacement = [
                f"Include {_quote(target)}"
                for target in _include_targets(_unquote(rest), app, paths)
            ]
        if replacement is None:  # unchanged: each line keeps its own number
            out_lines.extend(directive_lines)
            origins.extend(range(first_line, first_line + len(directive_lines)))
            continue
        out_lines.extend(replacement)
        origins.extend([first_line] * len(replacement))
    return ResolvedRules(
        text="\n".join(out_lines) + "\n",
        source_lines=tuple(origins),
        warnings=tuple(warnings),
        label=label,
    )


def _logical_lines(text: str) -> list[tuple[int, list[str]]]:
    # A SecLang directive continues on the next line when a line ends with a backslash, and
    # Coraza's SecDataset spans lines between backticks.
    result: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    in_backticks = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not current:
            start = number
        current.append(line)
        if line.count("`") % 2 == 1:
            in_backticks = not in_backticks
        if not in_backticks and not line.rstrip().endswith("\\"):
            result.append((start, current))
            current = []
    if current:
        result.append((start, current))
    return result


def _include_targets(target: str, app: AppConfig, paths: RulePaths) -> list[str]:
    if target == BASE_CONFIG_NAME:
        return [str(BASE_CONFIG_FILE)]
    if target == CRS_SETUP_NAME:
        return [paths.crs_setup_file]
    if target.startswith(CRS_RULES_PREFIX):
        pattern = target[len(CRS_RULES_PREFIX) :]
        rules_dir = Path(paths.crs_rules_dir)
        targets = [str(rules_dir / pattern)]
        if pattern == "*.conf":
            setup_dir = Path(paths.crs_setup_file).parent
            before, after = setup_dir / EXCLUSIONS_BEFORE, setup_dir / EXCLUSIONS_AFTER
            # only when they are not already in the rules folder (then the glob has them)
            if before.is_file() and not (rules_dir / EXCLUSIONS_BEFORE).exists():
                targets.insert(0, str(before))
            if after.is_file() and not (rules_dir / EXCLUSIONS_AFTER).exists():
                targets.append(str(after))
        return targets
    path = Path(target)
    if not path.is_absolute():
        path = Path(app.base_dir) / path
    return [str(path)]


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _quote(path: str) -> str:
    return f'"{path}"' if _SEVERAL_SPACES.search(path) else path
