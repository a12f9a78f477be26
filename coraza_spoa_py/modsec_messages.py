"""The ModSecurity SPOA dialect: ``check-request`` in, ``code`` / ``intervention`` out.

The C ``spoa-modsecurity`` agents (and haproxy-ingress in ModSecurity mode, which generates
their SPOE config) send one message, ``check-request``, with POSITIONAL arguments (declared
without a name, so HAProxy sends the empty name, SPOE.txt "spoe-message" ``args``):

- 8 arguments: ``unique-id method path query req.ver req.hdrs_bin req.body_size req.body``
- 12 arguments: ``unique-id src src_port dst dst_port method path query req.ver req.hdrs_bin
  req.body_size req.body`` (the libmodsecurity v3 port)

and read one variable back, ``code`` (``txn.modsec.code`` with ``option var-prefix modsec``):
0 when clean, the intervention's HTTP status when the rules interrupt. The samples deny with
``http-request deny if { var(txn.modsec.code) -m int gt 0 }``. docs/migrating-from-modsecurity-
spoa.md has the whole contract.

Here the message is rewritten into the named arguments of ``coraza-req`` (``messages``), so the
application evaluates it like any other request, and its answer is spelled back as ``code``:

- interrupted: ``code`` = the status (403, 302 ...), ``intervention`` = true;
- clean: ``code`` = 0, ``intervention`` = false;
- any error (bad arguments, no application, engine failure, overload): ``error`` = our code
  (1001-1006) AND ``code`` = the same number. The C agent left ``code`` unset on errors, which
  its deny rule reads as a pass (fail-open); an error code is > 0, so the same unchanged deny
  rule now blocks, and it can never be confused with an HTTP status (those are < 1000).

Named arguments work too, in any mix with the positional ones: the C samples' names
(``unique-id``, ``src``, ``req.hdrs_bin`` ...) or ours (``id``, ``src-ip``, ``headers`` ...), plus
``app`` and ``ignorerules`` (space-separated rule ids to remove for this transaction only, the
small Python ModSecurity SPOA's ``txn.ignorerules``).

Pure: no logging, no engine, no I/O.
"""

from __future__ import annotations

import re

from coraza_spoa_py import messages as m
from coraza_spoa_py.models import Verdict
from coraza_spoa_py.spop.events import Action, Arg, DataType, Message, SetVar, VarScope
from coraza_spoa_py.verdicts import (
    ACTION_REDIRECT,
    DEFAULT_DENY_STATUS,
    DEFAULT_REDIRECT_STATUS,
    VAR_ERROR,
)

MESSAGE_CHECK_REQUEST = "check-request"
ARG_IGNORE_RULES = "ignorerules"

VAR_CODE = "code"
VAR_INTERVENTION = "intervention"

# the positional layouts of docs/compatibility.md's two C agents; req.body_size is the body's
# declared size, which tells a body cut to fit the frame from a whole one (docs/haproxy.md
# "Request bodies"), as the body-size argument of coraza-req does
POSITIONAL_8: tuple[str, ...] = (
    m.ARG_ID, m.ARG_METHOD, m.ARG_PATH, m.ARG_QUERY, m.ARG_VERSION, m.ARG_HEADERS,
    m.ARG_BODY_SIZE, m.ARG_BODY,
)  # fmt: skip
POSITIONAL_12: tuple[str, ...] = (
    m.ARG_ID, m.ARG_SRC_IP, m.ARG_SRC_PORT, m.ARG_DST_IP, m.ARG_DST_PORT, m.ARG_METHOD,
    m.ARG_PATH, m.ARG_QUERY, m.ARG_VERSION, m.ARG_HEADERS, m.ARG_BODY_SIZE, m.ARG_BODY,
)  # fmt: skip
_LAYOUTS = {len(POSITIONAL_8): POSITIONAL_8, len(POSITIONAL_12): POSITIONAL_12}

# names a user of the C agents may give the same samples -> our names
_ALIASES: dict[str, str] = {
    "unique-id": m.ARG_ID,
    "unique_id": m.ARG_ID,
    "src": m.ARG_SRC_IP,
    "src_port": m.ARG_SRC_PORT,
    "dst": m.ARG_DST_IP,
    "dst_port": m.ARG_DST_PORT,
    "req.ver": m.ARG_VERSION,
    "ver": m.ARG_VERSION,
    "req.hdrs_bin": m.ARG_HEADERS,
    "req.hdrs": m.ARG_HEADERS,
    "hdrs_bin": m.ARG_HEADERS,
    "req.body_size": m.ARG_BODY_SIZE,
    "body_size": m.ARG_BODY_SIZE,
    "req.body": m.ARG_BODY,
}
# what the application's parser knows, plus ours (the debug line calls the rest unknown)
CHECK_REQUEST_ARGS = m.REQUEST_ARGS | {ARG_IGNORE_RULES}

# a rule id, or a range of them as SecRuleRemoveById takes it (ModSecurity reference manual)
_RULE_ID = re.compile(rb"^[0-9]{1,10}(?:-[0-9]{1,10})?$")
# more than this many ids in one message is not an exclusion list but garbage
MAX_IGNORED_RULES = 64


def to_request_message(message: Message) -> Message:
    """``check-request`` → the named-argument message ``messages.parse_request_message``
    reads. Raises ``MalformedArgumentError`` when the unnamed arguments are neither 8 nor 12
    (the C agent skipped such a message silently: a pass)."""
    positional = [arg for arg in message.args if not arg.name]
    named: list[Arg] = []
    if positional:
        layout = _LAYOUTS.get(len(positional))
        if layout is None:
            raise m.MalformedArgumentError(
                f"check-request has {len(positional)} unnamed arguments; expected 8 "
                "(unique-id method path query req.ver req.hdrs_bin req.body_size req.body) "
                "or 12 (unique-id src src_port dst dst_port method path query req.ver "
                "req.hdrs_bin req.body_size req.body)"
            )
        named.extend(
            Arg(name, arg.type, arg.value) for name, arg in zip(layout, positional, strict=True)
        )
    named.extend(
        Arg(_ALIASES.get(arg.name, arg.name), arg.type, arg.value)
        for arg in message.args
        if arg.name
    )
    # args_by_name keeps the first of a name: a named argument given as well as a positional
    # one is ignored, as the positional layout is what the C agent's users rely on
    return Message(message.name, tuple(named))


def ignored_rule_ids(arg: Arg | None) -> tuple[str, ...]:
    """The ``ignorerules`` argument: space- or comma-separated rule ids (or ``a-b`` ranges).
    Absent, NULL (an unset ``var(txn.ignorerules)``) or empty: none. Anything that is not an
    id raises ``MalformedArgumentError``: it ends up in a SecRuleRemoveById line, so only
    digits get there."""
    text = m.text_arg(arg)
    if not text:
        return ()
    words = text.replace(b",", b" ").split()
    if len(words) > MAX_IGNORED_RULES:
        raise m.MalformedArgumentError(
            f"argument {ARG_IGNORE_RULES!r}: more than {MAX_IGNORED_RULES} rule ids"
        )
    for word in words:
        if not _RULE_ID.match(word):
            raise m.MalformedArgumentError(
                f"argument {ARG_IGNORE_RULES!r}: {word[:32]!r} is not a rule id"
            )
    # sorted and once each: "1 2" and "2 1" are the same exclusion (one compiled rule set)
    return tuple(sorted({word.decode("ascii") for word in words}))


def _set(name: str, value: int | bool) -> SetVar:
    data_type = DataType.BOOL if isinstance(value, bool) else DataType.INT64
    return SetVar(VarScope.TRANSACTION, name, value, data_type)


def verdict_to_code(verdict: Verdict, *, detect_only: bool) -> list[Action]:
    """The application's ``coraza-req`` verdict → ``code`` and ``intervention`` (see the module
    doc): the status HAProxy's ``status`` variable would carry when it blocks (a deny or drop
    without one: 403, a redirect: 302), 0 when it passes or only detects."""
    if not verdict.interrupted or detect_only:
        return [_set(VAR_CODE, 0), _set(VAR_INTERVENTION, False)]
    default = DEFAULT_REDIRECT_STATUS if verdict.action == ACTION_REDIRECT else DEFAULT_DENY_STATUS
    return [_set(VAR_CODE, verdict.status or default), _set(VAR_INTERVENTION, True)]


def error_to_code(code: int) -> list[Action]:
    """``error`` and ``code`` both set to our error code (1001-1006)."""
    return [_set(VAR_ERROR, int(code)), _set(VAR_CODE, int(code))]
