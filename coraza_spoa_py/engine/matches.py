"""The engine's rule messages for one transaction, as ``models.RuleMatch``: the records
``native/msc_glue_rm.cc`` copies from each ``RuleMessage`` (msc_glue.h "cs_log records"), every
field from the engine, never from its text (docs/engine.md "Rule matches"). Field names as
docs/compatibility.md "Logging".

The records are read in C (``native/spop_fast.c`` ``read_rule_records``) when the compiled
module is there: the Python loop was a measurable share of a blocked request's hub time
(docs/performance.md change 43). ``read_records`` stays the reference, and runs when the module
is missing or the C reader refuses a buffer (a read past its end, which the glue never writes).
"""

from __future__ import annotations

import struct
from typing import Any

from coraza_spoa_py.engine.binding import ffi, lib
from coraza_spoa_py.models import RuleMatch

try:
    from coraza_spoa_py import _spop_fast
except ImportError:  # pragma: no cover (the build is part of make install)
    _read_native = None
else:
    _read_native = _spop_fast.read_rule_records

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
_NO_ACTION = 0  # CS_ACTION_NONE, from the binding when there is one
if lib is not None:
    _NO_ACTION = lib.CS_ACTION_NONE
    ACTION_NAMES.update(
        {lib.CS_ACTION_DENY: "deny", lib.CS_ACTION_DROP: "drop", lib.CS_ACTION_REDIRECT: "redirect"}
    )


# One record's fields, in the record's order (msc_glue.h "cs_log records"): rule id, line,
# phase, severity, maturity, accuracy, action; file, msg, data, rev, ver, server, uri, raw;
# the tags. What read_records and spop_fast.c's read_rule_records give per record.
Record = tuple[
    int, int, int, int, int, int, int, str, str, str, str, str, str, str, str, tuple[str, ...]
]


def phase_name(phase: int) -> str:
    return _PHASE_NAMES.get(phase, "")


def take_records(log: Any, client: str, unique_id: str) -> list[tuple[RuleMatch, str]]:
    """The rule messages msc_glue_rm.cc copied since the last call, each with the name of the
    disruptive action its rule ran ("" when none, or one we do not name); empties the log."""
    if not log.len:
        return []
    raw = bytes(ffi.buffer(log.buf, log.len))
    log.len = 0
    return rule_matches(raw, client, unique_id)


def rule_matches(
    raw: bytes, client: str, unique_id: str, *, native: bool = True
) -> list[tuple[RuleMatch, str]]:
    """``take_records`` over the records ``raw``; ``native=False`` reads them in Python only."""
    records = _read_native(raw) if native and _read_native is not None else None
    if records is None:
        records = read_records(raw)
    make = RuleMatch._make
    no_action = _NO_ACTION
    matches = []
    for (
        rule_id,
        line,
        phase,
        severity_id,
        maturity,
        accuracy,
        action,
        file,
        msg,
        data,
        revision,
        version,
        server,
        uri,
        text,
        tags,
    ) in records:
        # 3.0.9 has 0 for a rule without `severity`, so those read as emergency
        known = severity_id < len(_SEVERITIES)
        match = make(
            # RuleMatch's fields, in order (test_rule_records.py holds them to the names)
            (
                rule_id,
                msg,
                data,
                _SEVERITIES[severity_id] if known else "",
                severity_id if known else -1,
                file,
                line,
                revision,
                version,
                str(maturity),
                str(accuracy),
                tags,
                server,
                uri,
                unique_id,
                client,
                action != no_action,
                phase,
                _PHASE_NAMES.get(phase, ""),
                text,
            )
        )
        matches.append((match, ACTION_NAMES.get(action, "")))
    return matches


def read_records(raw: bytes) -> list[Record]:
    """Every record of ``raw``, in Python: the reference of spop_fast.c's read_rule_records."""
    records: list[Record] = []
    head_size = _MATCH_HEAD.size
    unpack_head = _MATCH_HEAD.unpack_from
    unpack_length = _LENGTH.unpack_from  # the tag count
    at, end = 0, len(raw)
    while at + head_size <= end:
        head = unpack_head(raw, at)
        at += head_size
        texts, at = _strings(raw, at, _STRING_FIELDS)
        tags, at = _strings(raw, at + 4, unpack_length(raw, at)[0])
        records.append((*head, *texts, tuple(tags)))
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
