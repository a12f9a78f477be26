"""libmodsecurity's text, turned into data: rule-match log lines (``parse_match``), load
errors ("file:line: message"), our anomaly-score report rule and its line, and the rule text
that tells ``drop`` from ``deny``.

Pure text work for ``waf``: standard library, ``models`` and ``rules`` only. It must not load
the library or hold engine state (docs/engine.md "The Verdict").
"""

from __future__ import annotations

import re

from coraza_spoa_py import rules
from coraza_spoa_py.models import RuleMatch

# Our score-reporting rule (engine.md "the anomaly score is a TX variable that the C API cannot
# read"): appended after every rule set, it logs the inbound blocking score of CRS 4
# (tx.blocking_inbound_anomaly_score) and of CRS 3 (tx.anomaly_score, summed per paranoia level
# by 949060-949063) at the end of phase 2. A macro over an unset variable expands to "".
# No `noauditlog`: in libmodsecurity 3.0.9 it also keeps the line from the log callback.
SCORE_RULE_ID = 8_999_101
SCORE_RULE = (
    f'SecAction "id:{SCORE_RULE_ID},phase:2,pass,log,t:none,'
    "msg:'coraza-spoa-py anomaly score',"
    "logdata:'crs4=%{tx.blocking_inbound_anomaly_score} crs3=%{tx.anomaly_score}'\""
)
_SCORE_DATA = re.compile(r"crs4=(\d*) crs3=(\d*)")
# When 949110 (or CRS 4's early-blocking twin) denies in phase 2, our rule never runs; the
# blocking rule's own message carries the same total (compat.md Part 2 §3.1).
_TOTAL_SCORE = re.compile(r"Inbound Anomaly Score Exceeded.*\(Total Score: (\d+)\)")

# rules_hit / rule_ids count matches with a msg and an id in these ranges (compat.md Part 2
# §3.1): the CRS attack and blocking-evaluation rules, and the "custom attack" range.
RULES_HIT_RANGES = ((910_000, 960_000), (190_000, 200_000))

# One "[name "value"]" field of the engine's text log line; a value ends at the first '"]'
# followed by ' [' or the end of the line. Written as runs of plain characters rather than a
# lazy '.*?': the same matches (tests/unit/test_waf_text_fields.py checks it against that
# simple form), about twice as fast on CRS lines, which the hub parses for every match of a
# blocked request.
_FIELD = re.compile(r'\[(\w+) "([^"\n]*(?:"(?!\](?: \[|\s*$))[^"\n]*)*)"\](?= \[|\s*$)')
# the intervention's line starts "[client ...] ModSecurity: Access denied with code N (phase P)"
_DISRUPTIVE = re.compile(r"^(?:\[client [^\]]*\] )?ModSecurity: Access denied")
# what libmodsecurity 3.0.9 puts in the intervention when a body limit rejects (no rule id)
BODY_LIMIT_LOGS = ("Request body limit", "Response body limit")
# "SecX is not supported.", "SecX is not yet supported.", "As of ModSecurity version 3.0,
# SecX is no longer supported. …"
_UNSUPPORTED = re.compile(r"\b(Sec\w+) is (?:not|not yet|no longer) supported")
_RULES_ERROR = re.compile(r"File: (?P<file>.*?)\. Line: (?P<line>\d+)\. Column: \d+\. (?P<msg>.*)")
# severity numbers of the SecLang severity action, in order (ModSecurity reference manual)
_SEVERITIES = ("emergency", "alert", "critical", "error", "warning", "notice", "info", "debug")
_PHASE_NAMES = {
    1: "request-headers",
    2: "request-body",
    3: "response-headers",
    4: "response-body",
    5: "logging",
}


def rules_problems(message: str, resolved: rules.ResolvedRules | None) -> list[str]:
    """The engine's load error text → "file:line: message" strings, lines as the user wrote
    them (``resolved`` maps lines of the directives text)."""
    # libmodsecurity reports "Rules error. File: F. Line: N. Column: C. text" for parse errors
    # (engine.md "Rule loading facts"); errors in the directives text itself name no file.
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
        # rules.resolve drops these from the directives, not from files they include
        message += " (a Coraza-only directive: remove it from this file)"
    return message


def parse_match(raw: bytes, phase: int, client: str, disruptive: bool = False) -> RuleMatch:
    """One engine log line → ``RuleMatch`` (fields as named in compat.md Part 2 §5)."""
    text = raw.decode("utf-8", errors="replace")
    # the first value of each field, and every tag (docs/engine.md "The lines are text": a
    # quoted client value that imitates a field comes first)
    fields: dict[str, str] = {}
    tags: list[str] = []
    for name, value in _FIELD.findall(text):
        if name == "tag":
            tags.append(value)
        elif name not in fields:
            fields[name] = value
    first = fields.get
    severity_id = _number(first("severity", ""), -1)
    return RuleMatch(
        rule_id=_number(first("id", ""), 0),
        msg=first("msg", ""),
        data=first("data", ""),
        severity=_SEVERITIES[severity_id] if 0 <= severity_id < len(_SEVERITIES) else "",
        severity_id=severity_id,
        file=first("file", ""),
        line=_number(first("line", ""), 0),
        revision=first("rev", ""),
        version=first("ver", ""),
        maturity=first("maturity", ""),
        accuracy=first("accuracy", ""),
        tags=tuple(tags),
        server=first("hostname", ""),
        uri=first("uri", ""),
        unique_id=first("unique_id", ""),
        client=client,
        disruptive=disruptive or bool(_DISRUPTIVE.match(text)),
        phase_id=phase,
        phase=_PHASE_NAMES.get(phase, ""),
        raw=text,
    )


def _number(text: str, default: int) -> int:
    # ASCII digits only: str.isdigit() also accepts "²", which int() refuses
    return int(text) if text.isascii() and text.isdigit() else default


def in_rules_hit_ranges(rule_id: int) -> bool:
    """Whether coraza-spoa counts this id in ``rules_hit`` / ``rule_ids``."""
    return any(low <= rule_id < high for low, high in RULES_HIT_RANGES)


def total_score(msg: str) -> int | None:
    """The "Total Score" of CRS's inbound blocking rule message, None for other messages."""
    found = _TOTAL_SCORE.search(msg)
    return int(found[1]) if found else None


def is_body_limit(log: str) -> bool:
    """An intervention that the body limits made, not a rule."""
    return log.startswith(BODY_LIMIT_LOGS)


# Our report rule's line, recognised without a full parse: it is logged by every transaction
# that reaches the end of phase 2, so it is the most frequent line by far.
# Our report rule is a SecAction: its line has no operator message, so its fields start right
# after "ModSecurity: Warning." and nothing the client sent can come before its id. Every line
# of a rule with an operator starts with 'Matched "Operator ...' and quotes the matched value
# there, which a client can fill with text that looks like fields, our id included.
_SCORE_LINE = re.compile(
    rb'ModSecurity: Warning\.\s+\[file "[^"]*"\] \[line "\d+"\] \[id "%d"\]' % SCORE_RULE_ID
)
_DATA_FIELD = re.compile(rb'\[data "(.*?)"\](?= \[|\s*$)')


def score_line_data(raw: bytes) -> str | None:
    """The ``data`` of our report rule's line, or None when ``raw`` is another rule's line."""
    start = _SCORE_LINE.match(raw)
    if start is None:
        return None
    data = _DATA_FIELD.search(raw, start.end())
    return "" if data is None else data[1].decode("ascii", errors="replace")


def reported_score(data: str, current: int) -> int:
    """The score from our report rule's ``data``; ``current`` when it carries none."""
    found = _SCORE_DATA.search(data)
    if found is None:
        return current
    crs4, crs3 = found[1], found[2]
    return int(crs4 or crs3 or current)


def directive_at(lines: list[str], line: int) -> list[str]:
    """The directive that starts at 1-based ``line``, with its backslash continuations."""
    result: list[str] = []
    for text in lines[max(line - 1, 0) :]:
        result.append(text)
        if not text.rstrip().endswith("\\"):
            break
    return result


def has_drop_action(directive: list[str]) -> bool:
    """Whether ``drop`` is among the rule's actions (its last quoted argument)."""
    text = " ".join(part.rstrip("\\") for part in directive)
    actions = text.rsplit('"', 2)[-2] if text.count('"') >= 2 else ""
    return any(part.strip().strip("'") == "drop" for part in actions.split(","))
