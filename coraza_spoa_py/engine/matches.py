"""The engine's rule messages for one transaction, as ``models.RuleMatch``: the records
``native/msc_glue_rm.cc`` copies from each ``RuleMessage`` (msc_glue.h "cs_log records"), every
field from the engine, never from its text (docs/engine.md "Rule matches"). Field names as
docs/compatibility.md "Logging".
"""

from __future__ import annotations

import struct
from typing import Any

from coraza_spoa_py.engine.binding import ffi, lib
from coraza_spoa_py.models import RuleMatch

# one length, little endian, before each string of a record (and the tag count)
_LENGTH = struct.Struct("<I")
_MATCH_HEAD = struct.Struct("<qIIIIII")  # msc_glue.h "cs_log records"
_STRING_FIELDS = 8  # file, msg, data, rev, ver, server, uri, raw
# severity numbers of the SecLang severity action, in order (ModSecurity reference manual)
_SEVERITIES = ("emergency", "alert", "critical", "error", "warning", "notice", "info", "debug")
_PHASE_NAMES = {
    1: "request-headers",
    2: "request-body",
    3: "response-headers",
    4: "response-body",
    5: "logging",
}
# the disruptive action a rule ran, as msc_glue_rm.cc reports it (CS_ACTION_*), by name; none
# for another one (allow, a `block` whose default action is none of these, ...)
ACTION_NAMES: dict[int, str] = {}
if lib is not None:
    ACTION_NAMES.update(
        {lib.CS_ACTION_DENY: "deny", lib.CS_ACTION_DROP: "drop", lib.CS_ACTION_REDIRECT: "redirect"}
    )


def phase_name(phase: int) -> str:
    return _PHASE_NAMES.get(phase, "")


def take_records(log: Any, client: str, unique_id: str) -> list[tuple[RuleMatch, str]]:
    """The rule messages msc_glue_rm.cc copied since the last call, each with the name of the
    disruptive action its rule ran ("" when none, or one we do not name); empties the log."""
    if not log.len:
        return []
    raw = bytes(ffi.buffer(log.buf, log.len))
    log.len = 0
    records = []
    head_size = _MATCH_HEAD.size
    unpack_head = _MATCH_HEAD.unpack_from
    unpack_length = _LENGTH.unpack_from  # the tag count
    at, end = 0, len(raw)
    while at + head_size <= end:
        rule_id, line, phase, severity_id, maturity, accuracy, action = unpack_head(raw, at)
        at += head_size
        texts, at = _strings(raw, at, _STRING_FIELDS)
        tags, at = _strings(raw, at + 4, unpack_length(raw, at)[0])
        file, msg, data, revision, version, server, uri, text = texts
        match = RuleMatch(
            rule_id=rule_id,
            msg=msg,
            data=data,
            # 3.0.9 has 0 for a rule without `severity`, so those read as emergency
            severity=_SEVERITIES[severity_id] if severity_id < len(_SEVERITIES) else "",
            severity_id=severity_id if severity_id < len(_SEVERITIES) else -1,
            file=file,
            line=line,
            revision=revision,
            version=version,
            maturity=str(maturity),
            accuracy=str(accuracy),
            tags=tuple(tags),
            server=server,
            uri=uri,
            unique_id=unique_id,
            client=client,
            disruptive=action != lib.CS_ACTION_NONE,
            phase_id=phase,
            phase=phase_name(phase),
            raw=text,
        )
        records.append((match, ACTION_NAMES.get(action, "")))
    return records


def _strings(raw: bytes, at: int, count: int) -> tuple[list[str], int]:
    """``count`` length-prefixed strings of a record from ``at``; and where they end."""
    texts = []
    unpack_length = _LENGTH.unpack_from
    for _ in range(count):
        length = unpack_length(raw, at)[0]
        at += 4
        texts.append(raw[at : at + length].decode("utf-8", "replace"))
        at += length
    return texts, at
