"""Count what HAProxy saw: one log line per request, written by the bench overlay's log-format.

HAProxy is the only witness of requests the agent never answered: a SPOE timeout or I/O error
leaves no trace in the agent, only ``txn.coraza.error`` set by ``option set-on-error``
(docs/protocol.md "HAProxy on agent errors"). Pure parsing; the overlay that writes the lines
lives in ``haproxy_config``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

LOG_MARK = "BENCHLOG"
# %[var()] prints "-" for an absent variable. `fail` is the verdict variable every request ACK
# sets (docs/compatibility.md "Variables we set"); `error` holds HAProxy's own codes (< 1000: 1 =
# processing timeout, 256+N = SPOP status N) or ours (1001-1005).
# ts = termination state (HAProxy's %tsc): "C" first means the client aborted (wrk closing its
# connections at the end of a run), which is no failure of the agent.
LOG_FORMAT = (
    LOG_MARK + " st=%ST fail=%[var(txn.coraza.fail)] err=%[var(txn.coraza.error)] ta=%Ta ts=%tsc"
)
# docs/compatibility.md "Errors": the message waited longer than the processing budget
SHED_ERROR = 1005
AGENT_ERROR_FLOOR = 1000  # our codes are 1001..1005; HAProxy's are below 1000


@dataclass
class LogCounts:
    requests: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    by_error: Counter[int] = field(default_factory=Counter)
    spoe_errors: int = 0  # HAProxy-side: timeout, I/O, too big... (error < 1000)
    agent_errors: int = 0  # the agent answered with one of our codes (error >= 1000)
    shed: int = 0  # error == 1005
    uninspected: int = 0  # let through (status < 400) without a verdict, or with an error
    unexpected_status: int = 0  # status other than the scenario's expected one
    client_aborts: int = 0  # the client closed before the answer (termination state C...)

    def as_dict(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_error": {str(k): v for k, v in sorted(self.by_error.items())},
            "spoe_errors": self.spoe_errors,
            "agent_errors": self.agent_errors,
            "shed": self.shed,
            "uninspected": self.uninspected,
            "unexpected_status": self.unexpected_status,
            "client_aborts": self.client_aborts,
        }


def _fields(line: str) -> dict[str, str]:
    start = line.find(LOG_MARK)
    return dict(part.split("=", 1) for part in line[start + len(LOG_MARK) :].split() if "=" in part)


def _int_or_none(text: str | None) -> int | None:
    if text is None or text in ("-", ""):
        return None
    try:
        return int(text)
    except ValueError:
        # a boolean-typed variable (set-on-error stores the code as a bool, docs/protocol.md
        # "HAProxy on agent errors")
        return 1 if text.lower() == "true" else 0 if text.lower() == "false" else None


def count_lines(lines: Iterable[str], expect_status: int | None = None) -> LogCounts:
    """Tally the bench log lines among ``lines`` (other HAProxy output is skipped)."""
    counts = LogCounts()
    for line in lines:
        if LOG_MARK not in line:
            continue
        f = _fields(line)
        status = _int_or_none(f.get("st")) or 0
        fail = _int_or_none(f.get("fail"))
        error = _int_or_none(f.get("err"))
        counts.requests += 1
        if f.get("ts", "").startswith("C"):
            counts.client_aborts += 1
            continue
        counts.by_status[status] += 1
        if error:
            counts.by_error[error] += 1
            if error >= AGENT_ERROR_FLOOR:
                counts.agent_errors += 1
                counts.shed += error == SHED_ERROR
            else:
                counts.spoe_errors += 1
        if status < 400 and (fail is None or error):
            counts.uninspected += 1
        if expect_status is not None and status != expect_status:
            counts.unexpected_status += 1
    return counts
