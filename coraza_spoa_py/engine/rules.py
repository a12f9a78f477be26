"""Prepare an application's ``directives`` for libmodsecurity: resolve the ``@`` includes, make
relative ``Include`` paths absolute, and drop Coraza-only directives the engine would reject.

Text work only (plus reading the files it points at and checking they exist); it must not
load the engine or log: warnings are returned for the caller to log (docs/compatibility.md "Config
and CLI"
 ; docs/engine.md "Includes").
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from coraza_spoa_py.settings import AppConfig, RulePaths

# Our ModSecurity v3 base config, shipped in the package (docs/engine.md "Base config").
BASE_CONFIG_FILE = Path(__file__).parent.parent / "data" / "coraza.conf-recommended"

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
_GLOB_CHARACTERS = re.compile(r"[*?\[]")
# a double-quoted argument (backslash escapes inside) or a bare word
_ARGUMENT = re.compile(r'"(?:[^"\\]|\\.)*"?|\S+')
_SINGLE_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'")
_CHAIN = re.compile(r"(?:^|,)\s*chain\s*(?:,|$)", re.IGNORECASE)
# Directives whose last argument is an action list (Coraza's rule parser reads these).
# the directives that decide what a cut request body gets (ResolvedRules.rejects_truncated_body)
_BODY_LIMIT_SETTINGS = frozenset(
    {"secruleengine", "secrequestbodyaccess", "secrequestbodylimitaction"}
)
ACTION_LIST_DIRECTIVES = frozenset({"secrule", "secaction", "secdefaultaction"})
RULE_DIRECTIVES = frozenset({"secrule", "secaction"})
# Coraza refuses more nested includes than this (and so do we: a file including itself)
MAX_INCLUDE_DEPTH = 100


@dataclass(frozen=True, slots=True)
class Directive:
    """One directive as the engine gets it, wherever it was written: ``file`` (an absolute
    path, or the directives' label) and the ``line`` it starts on there."""

    file: str
    line: int
    text: str
    rules: int = 0  # rules it defines: a SecRule/SecAction that does not continue a chain
    markers: int = 0  # SecMarker: the engine counts one per phase
    continues_chain: bool = False  # a SecRule after one with the "chain" action


@dataclass(frozen=True, slots=True)
class ResolvedRules:
    """Directives ready for ``msc_rules_add``.

    ``origins[i]`` is where output line ``i + 1`` was written, (file or label, line), so
    engine errors can name the line the user wrote (the lines of a file passed inline because
    it needed a change). ``directives`` is every directive the engine loads, through all the
    includes, in order: what the rule-count guard counts (``ruleset``).
    """

    text: str
    warnings: tuple[str, ...]
    label: str  # how problems in the directives text are named: "<app NAME directives>"
    origins: tuple[tuple[str, int], ...] = ()
    directives: tuple[Directive, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def source_lines(self) -> tuple[int, ...]:
        """The line (in its file or in the directives) of every output line."""
        return tuple(line for _, line in self.origins)

    def source_line(self, output_line: int) -> int:
        return self.origin(output_line)[1]

    def origin(self, output_line: int) -> tuple[str, int]:
        """Where output line ``output_line`` was written: (file or label, line)."""
        if 1 <= output_line <= len(self.origins):
            return self.origins[output_line - 1]
        return self.label, output_line

    @property
    def rejects_truncated_body(self) -> bool:
        """Whether a request body that reached the engine cut short (HAProxy's buffer was
        full, docs/haproxy.md "Request bodies") is refused rather than judged on its part.

        The part that reached us is the body limit in effect, so this is what libmodsecurity
        does past ``SecRequestBodyLimit``: refuse with ``SecRequestBodyLimitAction Reject``;
        inspect the part with ``ProcessPartial`` (its default). Only when the body is
        inspected at all (``SecRequestBodyAccess On``, off by default) and the engine may
        block (``SecRuleEngine`` neither ``DetectionOnly`` nor ``Off``). The last directive
        of each wins, as in the engine.
        """
        settings: dict[str, str] = {}
        for directive in self.directives:
            found = _DIRECTIVE.match(directive.text)
            if found and found["name"].lower() in _BODY_LIMIT_SETTINGS:
                value = _unquote((found["rest"] or "").strip()).lower()
                settings[found["name"].lower()] = value
        return (
            settings.get("secruleengine", "on") not in ("detectiononly", "off")
            and settings.get("secrequestbodyaccess") == "on"
            and settings.get("secrequestbodylimitaction") == "reject"
        )


def count_defined(directives: Sequence[Directive]) -> tuple[int, int]:
    """How many rules and markers ``directives`` define (the rule-count guard weighs a
    marker by what the engine counts for one)."""
    return sum(d.rules for d in directives), sum(d.markers for d in directives)


def resolve(app: AppConfig, paths: RulePaths) -> ResolvedRules:
    """Rewrite ``app.directives`` for libmodsecurity (see the module docstring)."""
    label = f"<app {app.name} directives>"
    resolver = _Resolver(app, paths)
    text = resolver.text(app.directives, label, Path(app.base_dir), depth=0)
    return ResolvedRules(
        text="\n".join(text.lines) + "\n",
        warnings=tuple(resolver.warnings),
        label=label,
        origins=tuple(text.origins),
        directives=tuple(text.directives),
        problems=tuple(resolver.problems),
    )


@dataclass(slots=True)
class _Text:
    """One text (the directives or a file) rewritten: its output lines, where each came
    from, the directives it loads (through its includes) and whether anything changed."""

    lines: list[str]
    origins: list[tuple[str, int]]
    directives: list[Directive]
    changed: bool = False


class _Resolver:
    def __init__(self, app: AppConfig, paths: RulePaths) -> None:
        self._app = app
        self._paths = paths
        self.warnings: list[str] = []
        self.problems: list[str] = []
        self._in_chain = False

    def text(self, source: str, where: str, folder: Path, depth: int) -> _Text:
        out = _Text([], [], [])
        for first_line, directive_lines in _logical_lines(source):
            joined = _joined(directive_lines)
            found = _DIRECTIVE.match(joined)
            name = found["name"].lower() if found else ""
            rest = (found["rest"] or "").strip() if found else ""
            origin = f"{where}:{first_line}"
            if name in CORAZA_ONLY_DIRECTIVES or (
                name in CORAZA_ONLY_VALUES and _unquote(rest).lower() in CORAZA_ONLY_VALUES[name]
            ):
                self.warnings.append(
                    f"{origin}: dropped {found['name'] if found else name}: "
                    "a Coraza-only directive that libmodsecurity does not accept"
                )
                out.changed = True
                continue
            if name == "include":
                self._include(out, _unquote(rest), where, first_line, folder, depth)
                continue
            if name in ACTION_LIST_DIRECTIVES:
                closed = _close_open_quote(directive_lines)
                if closed is not None:
                    self.warnings.append(
                        f"{origin}: closed the single quote left open in the actions of "
                        f"{found['name'] if found else name}, where Coraza ends that value "
                        "(libmodsecurity would read on into the next rules and lose them)"
                    )
                    directive_lines = closed
                    out.changed = True
            if name:
                out.directives.append(self._directive(where, first_line, name, joined))
            out.lines.extend(directive_lines)
            out.origins.extend(
                (where, n) for n in range(first_line, first_line + len(directive_lines))
            )
        return out

    def _directive(self, where: str, line: int, name: str, joined: str) -> Directive:
        rules = markers = 0
        continues_chain = False
        if name in RULE_DIRECTIVES:
            continues_chain = self._in_chain
            rules = 0 if continues_chain else 1
            arguments = _arguments(joined)
            actions = _unquote(arguments[-1]) if len(arguments) > 1 else ""
            # "chain" as an action of its own, not inside a quoted value such as a msg
            self._in_chain = bool(_CHAIN.search(_SINGLE_QUOTED.sub("''", actions)))
        elif name == "secmarker":
            markers = 1
        return Directive(where, line, joined, rules, markers, continues_chain)

    def _include(
        self, out: _Text, target: str, where: str, line: int, folder: Path, depth: int
    ) -> None:
        origin = (where, line)
        targets = _include_targets(target, self._paths, folder)
        if depth >= MAX_INCLUDE_DEPTH:
            self.problems.append(
                f"{where}:{line}: more than {MAX_INCLUDE_DEPTH} nested includes "
                "(does a file include itself?)"
            )
            return
        for pattern in targets:
            files = _matching_files(pattern)
            if not files:  # missing: the engine names the path in its error
                out.lines.append(f"Include {_quote(pattern)}")
                out.origins.append(origin)
                continue
            texts = [(f, self._file(f, depth + 1)) for f in files]
            if not any(text.changed for _, text in texts):
                # unchanged files load by name, so rule matches name them as they are
                out.lines.append(f"Include {_quote(pattern)}")
                out.origins.append(origin)
                for _, text in texts:
                    out.directives.extend(text.directives)
                continue
            out.changed = True
            for file, text in texts:
                if text.changed:  # passed inline: its lines keep their file and number
                    out.lines.extend(text.lines)
                    out.origins.extend(text.origins)
                else:
                    out.lines.append(f"Include {_quote(file)}")
                    out.origins.append(origin)
                out.directives.extend(text.directives)
        if target.startswith("@"):
            # libmodsecurity knows no @ names: a file that has one is passed inline. (It
            # resolves a relative path against the including file's folder, as we do.)
            out.changed = True

    def _file(self, path: str, depth: int) -> _Text:
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as source:
                content = source.read()
        except OSError as exc:
            self.problems.append(f"{path}:0: cannot read it: {exc.strerror or exc}")
            return _Text([], [], [])
        return self.text(content, path, Path(path).parent, depth)


def _logical_lines(text: str) -> list[tuple[int, list[str]]]:
    # As Coraza's parser splits directives: a line ending with a backslash continues on the
    # next; Coraza's SecDataset opens a block with a line ending in a backtick, closed by a
    # line starting with one. A comment or blank line outside those is a unit of its own
    # (a backtick in a comment opens nothing).
    result: list[tuple[int, list[str]]] = []
    current: list[str] = []
    start = 0
    in_backticks = False
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not current:
            start = number
            if not stripped or stripped.startswith("#"):
                result.append((number, [line]))
                continue
        current.append(line)
        if in_backticks:
            in_backticks = not stripped.startswith("`")
        elif stripped.endswith("`"):
            in_backticks = True
        if not in_backticks and not stripped.endswith("\\"):
            result.append((start, current))
            current = []
    if current:
        result.append((start, current))
    return result


def _include_targets(target: str, paths: RulePaths, folder: Path) -> list[str]:
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
        # relative to the file that has the Include (the app's config folder for directives),
        # as both libmodsecurity and Coraza resolve it
        path = folder / path
    return [str(path)]


def _matching_files(pattern: str) -> list[str]:
    """The files an Include pattern loads, in the engine's order (glob(3) sorts names)."""
    if _GLOB_CHARACTERS.search(pattern):
        return sorted(f for f in glob.glob(pattern) if os.path.isfile(f))
    return [pattern] if os.path.isfile(pattern) else []


def _joined(directive_lines: list[str]) -> str:
    # one directive on one line; comment lines inside a continuation are skipped, as Coraza
    # skips them
    kept = [directive_lines[0]] + [
        line for line in directive_lines[1:] if not line.lstrip().startswith("#")
    ]
    return " ".join(line.strip().removesuffix("\\").strip() for line in kept)


def _arguments(directive: str) -> list[str]:
    return _ARGUMENT.findall(directive)


def _close_open_quote(directive_lines: list[str]) -> list[str] | None:
    """The directive with the single quote its action list leaves open closed at the end of
    that list, or None when every quote is closed.

    Coraza reads an action value whose quote is never closed up to the end of the action list
    (Coraza's own coraza.conf-recommended has one: rule 200003's msg). libmodsecurity's lexer
    instead reads on into the following lines, even past the end of the file, and stops
    loading without an error: every rule after it is lost.
    """
    arguments = _arguments(_joined(directive_lines))
    if len(arguments) < 2:
        return None
    actions = arguments[-1]
    if len(actions) < 2 or not (actions.startswith('"') and actions.endswith('"')):
        return None
    inner = re.sub(r"\\.", "", actions[1:-1])
    if inner.count("'") % 2 == 0:
        return None
    last = directive_lines[-1].rstrip()
    if not last.endswith('"'):
        return None
    return [*directive_lines[:-1], last[:-1] + "'\""]


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _quote(path: str) -> str:
    return f'"{path}"' if _SEVERAL_SPACES.search(path) else path
