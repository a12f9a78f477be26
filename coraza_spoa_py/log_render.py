"""A log record → its line(s): console text or JSON, as coraza-spoa writes them
(docs/compatibility.md "Logging"). Every line is exactly one line whatever a client sent: the
characters that could end or rewrite it are escaped (``escape_text``).

Pure text: no loguru import (a record is the mapping loguru passes a sink), no file handling;
a rule-match record's ``matches`` are ``models.RuleMatch`` objects (or mappings of its fields);
``logs`` owns the sinks and calls ``render_console`` / ``render_json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from coraza_spoa_py.models import RuleMatch

# loguru level name → the lower-case word zerolog writes in JSON ("level":"warn")
_JSON_LEVEL_WORDS = {
    "TRACE": "trace",
    "DEBUG": "debug",
    "INFO": "info",
    "SUCCESS": "info",
    "WARNING": "warn",
    "ERROR": "error",
    "CRITICAL": "fatal",
}
_CONSOLE_LEVEL_WORDS = {
    "TRACE": "TRC",
    "DEBUG": "DBG",
    "INFO": "INF",
    "SUCCESS": "INF",
    "WARNING": "WRN",
    "ERROR": "ERR",
    "CRITICAL": "FTL",
}
# extras that are rendered specially, not as key=value
_STRUCTURAL_EXTRAS = frozenset({"kind", "matches"})


# What could end or rewrite a log line (issue 15): C0 controls (\n, \r, ESC ...), DEL, C1
# controls (U+0085 NEL) and the Unicode line and paragraph separators, which str.splitlines()
# and some viewers treat as line breaks. Client-controlled text (the HAPROXY-DISCONNECT message,
# transaction ids, message and argument names, rule match data) reaches records as it was sent;
# the renderers escape it, so a record is always exactly one line.
_LINE_BREAKERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ASCII_UNPRINTABLE = bytes(range(0x20)) + b"\x7f"
# from this length the bytes check is the cheaper one (shorter: isprintable)
_LONG_TEXT = 128
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(found: re.Match[str]) -> str:
    char = found.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_text(text: str) -> str:
    """``text`` with every character that could break or rewrite a log line escaped: a
    newline becomes backslash-n, ESC backslash-x1b, U+2028 backslash-u2028; printable text is
    returned unchanged."""
    if len(text) > _LONG_TEXT and text.isascii():
        # the engine's match lines (~600 characters): one C pass over the bytes, half the cost
        # of isprintable's per-character table lookups (docs/performance.md change 45); in
        # ASCII, what is not printable is exactly C0 and DEL
        encoded = text.encode("ascii")
        if len(encoded.translate(None, _ASCII_UNPRINTABLE)) == len(encoded):
            return text
    elif text.isprintable():  # the common case: one C call, no regex
        return text
    return _LINE_BREAKERS.sub(_escape_char, text)


def _escape_json_line(text: str) -> str:
    # json.dumps escapes C0 controls; with ensure_ascii=False it writes DEL, C1 and U+2028/9
    # as they are, and those are valid JSON escaped as \uXXXX too
    if text.isascii() and "\x7f" not in text:
        return text
    return _LINE_BREAKERS.sub(lambda found: f"\\u{ord(found.group()):04x}", text)


def _timestamp(record: Mapping[str, Any]) -> datetime:
    moment: datetime = record["time"]
    return moment


def _extras(record: Mapping[str, Any]) -> dict[str, Any]:
    extra: dict[str, Any] = record["extra"]
    return {key: value for key, value in extra.items() if key not in _STRUCTURAL_EXTRAS}


def _console_value(value: Any) -> str:
    text = str(value)
    if " " in text or not text:
        return escape_text(json.dumps(text, ensure_ascii=False))
    return escape_text(text)


def render_console(record: Mapping[str, Any]) -> str:
    """``2024-05-01 12:00:00.123 INF message key=value …``, rule matches one line each."""
    head = f"{_console_stamp(_timestamp(record))} {_console_level(record)} "
    fields = " ".join(f"{k}={_console_value(v)}" for k, v in _extras(record).items())
    matches = record["extra"].get("matches")
    if record["extra"].get("kind") == "rule_match" and isinstance(matches, list) and matches:
        # one line per matched rule, the engine's ModSecurity-style text, like coraza-spoa's
        # console format; go-ftw style tools grep these for `[id "N"]`
        prefix = f"{head}{fields} "
        lines = []
        for match in matches:
            raw = _match_raw(match)
            text = escape_text(str(raw)) if raw else json.dumps(_match_dict(match), default=str)
            line = prefix + text
            lines.append(line.rstrip() if line[-1].isspace() else line)
        lines.append("")
        return "\n".join(lines)
    line = f"{head}{escape_text(record['message'])}"
    if fields:
        line += f" {fields}"
    line += "\n"
    if record["exception"] is not None:
        line += _exception_text(record)
    return line


# the stamp up to the second, formatted once per second: strftime was ~1 us of every record
# (docs/performance.md change 45); one tuple, swapped whole, so a thread that logs at the same
# time reads an old pair or a new one, never a mix
_second_stamp: tuple[tuple[int, ...], str] = ((), "")


def _console_stamp(moment: datetime) -> str:
    """``2024-05-01 12:00:00.123``: the record's local time to the millisecond."""
    global _second_stamp
    second = (moment.second, moment.minute, moment.hour, moment.day, moment.month, moment.year)
    cached_second, text = _second_stamp
    if second != cached_second:
        text = moment.strftime("%Y-%m-%d %H:%M:%S")
        _second_stamp = (second, text)
    return f"{text}.{moment.microsecond // 1000:03d}"


def _console_level(record: Mapping[str, Any]) -> str:
    name: str = record["level"].name
    return _CONSOLE_LEVEL_WORDS.get(name, name[:3])


def _match_dict(match: Any) -> Any:
    # the application logs RuleMatch objects (docs/architecture.md "Rule-match log records");
    # a mapping is taken as it is
    return match.to_dict() if isinstance(match, RuleMatch) else match


def _match_raw(match: Any) -> Any:
    if isinstance(match, RuleMatch):
        return match.raw
    return match.get("raw") if isinstance(match, Mapping) else None


def _exception_text(record: Mapping[str, Any]) -> str:
    import traceback

    exc = record["exception"]
    return "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))


# what json.dumps takes as it is: checked by exact type first, because the isinstance chain
# below (an ABC among it) cost ~1.5 us a value, 187 us for a 3-match record (change 20)
_JSON_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})


def _json_safe(value: Any) -> Any:
    kind = type(value)
    if kind in _JSON_PLAIN_TYPES:
        return value
    if kind is dict:
        return {str(k): _json_safe(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def render_json(record: Mapping[str, Any]) -> str:
    """One object per line: ``level``, ``time`` (RFC 3339), ``message`` and the bound extras.

    A rule-match record becomes one line per matched rule with a nested ``match`` object in
    coraza-spoa's field names (docs/compatibility.md "Logging").
    """
    base: dict[str, Any] = {
        "level": _JSON_LEVEL_WORDS.get(record["level"].name, record["level"].name.lower()),
        "time": _timestamp(record).isoformat(timespec="milliseconds"),
    }
    base.update(_json_safe(_extras(record)))
    matches = record["extra"].get("matches")
    if record["extra"].get("kind") == "rule_match" and isinstance(matches, list) and matches:
        lines = []
        for match in matches:
            entry = dict(base)
            entry["match"] = _json_safe(_match_dict(match))
            entry["message"] = record["message"]
            lines.append(_escape_json_line(json.dumps(entry, ensure_ascii=False)) + "\n")
        return "".join(lines)
    base["message"] = record["message"]
    if record["exception"] is not None:
        base["error"] = _exception_text(record)
    return _escape_json_line(json.dumps(base, ensure_ascii=False)) + "\n"
