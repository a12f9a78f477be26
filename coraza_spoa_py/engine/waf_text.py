"""libmodsecurity's load errors, turned into "file:line: message" strings.

Pure text work for ``ruleset``: standard library and ``rules`` only. It must not load the library
or hold engine state. Rule matches are never read from text: they come from the engine's rule
messages (native/msc_glue_rm.cc, docs/engine.md "Rule matches").
"""

from __future__ import annotations

import re

from coraza_spoa_py.engine import rules

# "SecX is not supported.", "SecX is not yet supported.", "As of ModSecurity version 3.0,
# SecX is no longer supported. …"
_UNSUPPORTED = re.compile(r"\b(Sec\w+) is (?:not|not yet|no longer) supported")
_RULES_ERROR = re.compile(r"File: (?P<file>.*?)\. Line: (?P<line>\d+)\. Column: \d+\. (?P<msg>.*)")


def rules_problems(message: str, resolved: rules.ResolvedRules | None) -> list[str]:
    """The engine's load error text → "file:line: message" strings, lines as the user wrote
    them (``resolved`` maps lines of the directives text)."""
    # libmodsecurity reports "Rules error. File: F. Line: N. Column: C. text" for parse errors
    # (docs/engine.md "Rule loading facts"); errors in the directives text itself name no file.
    problems = []
    for raw_line in message.splitlines() or ["rules failed to load"]:
        line = raw_line.strip()
        if not line:
            continue
        found = _RULES_ERROR.search(line)
        if found is None:
            label = resolved.label if resolved else "<engine>"
            problems.append(f"{label}:0: {line}")
            continue
        file, line_no = found["file"], int(found["line"])
        unsupported = _UNSUPPORTED.search(found["msg"])
        if unsupported is not None:
            # these errors carry line 1 (and no file for the directives text): find the
            # directive ourselves
            line_no = _line_of_directive(file, unsupported[1], resolved) or line_no
        if resolved is not None and not file.startswith("/"):
            file, line_no = resolved.origin(line_no)
        problems.append(f"{file}:{line_no}: {_explain(found['msg'])}")
    return problems


def _line_of_directive(
    file: str, directive: str, resolved: rules.ResolvedRules | None
) -> int | None:
    if file.startswith("/"):
        try:
            with open(file, encoding="utf-8", errors="replace") as source:
                lines = source.read().splitlines()
        except OSError:
            return None
    elif resolved is not None:
        lines = resolved.text.splitlines()
    else:
        return None
    wanted = directive.lower()
    for number, text in enumerate(lines, start=1):
        words = text.split(None, 1)
        if words and words[0].lower() == wanted:
            return number
    return None


def _explain(message: str) -> str:
    # The engine lists every folder it tried for a missing file: the path says enough.
    message = message.split(" Looking at:", 1)[0].strip()
    # "Invalid input: SecX …" or "SecX is not supported" / "As of … SecX is no longer …"
    named = {word.lower() for word in re.findall(r"\bSec\w+", message)}
    if named & rules.CORAZA_ONLY_DIRECTIVES:
        # rules.resolve drops these from every file it reads; one the engine still meets came
        # from somewhere the resolver does not follow
        message += " (a Coraza-only directive: remove it from this file)"
    return message
