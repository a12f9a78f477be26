"""Profile the running agent with py-spy (sampling, from outside: the agent is not modified) and
summarise where its Python time goes, per thread: the gevent hub (main thread) versus the
engine worker threads.

The summary answers the issue's questions: per-message Python work on the hub, body copies,
and work on the hub that belongs on a worker thread. Starts only py-spy; the caller provides
the load.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

FRAME_RE = re.compile(r"^(?P<func>.+?) \((?P<file>[^:()]+)(?::\d+)?\)$")
# py-spy --threads puts the thread first: `thread (12345)` or `process 1:"thread (0x7f..)"`
THREAD_RE = re.compile(r"^(?:process \d+:)?\W*thread \((?P<tid>\w+)\)")


def py_spy_binary() -> str:
    return str(Path(sys.executable).with_name("py-spy"))


def py_spy_dump(pid: int) -> str:
    """Every thread's Python stack right now (for a stall report)."""
    done = subprocess.run(
        [py_spy_binary(), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60
    )
    return done.stdout + done.stderr


def start_py_spy(
    pid: int, output: Path, duration_s: float, rate: int = 200
) -> subprocess.Popen[bytes]:
    """``py-spy record`` in raw (collapsed stacks) form, one stack prefix per thread."""
    return subprocess.Popen(
        [
            py_spy_binary(), "record",
            "--pid", str(pid),
            "--duration", str(max(1, round(duration_s))),
            "--rate", str(rate),
            "--format", "raw",
            "--threads",
            "--output", str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def short_frame(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``file.py:func``; line numbers dropped so that samples
    of one function add up."""
    match = FRAME_RE.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{Path(match['file']).name}:{match['func']}"


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def thread_role(frames: list[str]) -> str:
    """'hub' for the main thread (gevent's loop and every greenlet), 'worker' for the rest."""
    # gevent's ThreadPool runs each native worker thread inside a _WorkerGreenlet
    joined = ";".join(frames[:3])
    if "_WorkerGreenlet" in joined or "_bootstrap" in joined:
        return "worker"
    return "hub"


def summarise(text: str, top: int = 25) -> dict[str, Any]:
    """Per role: samples, the functions with most self time and most inclusive time, and the
    modules of this project ranked by inclusive time."""
    by_role: dict[str, dict[str, Counter[str]]] = {}
    totals: Counter[str] = Counter()
    for raw_frames, count in parse_collapsed(text):
        frames = raw_frames[1:] if THREAD_RE.match(raw_frames[0]) else raw_frames
        role = thread_role(frames)
        totals[role] += count
        tables = by_role.setdefault(
            role, {"self": Counter(), "inclusive": Counter(), "project": Counter()}
        )
        short = [short_frame(f) for f in frames]
        if short:
            tables["self"][short[-1]] += count
        for name in set(short):
            tables["inclusive"][name] += count
        for name in {s for s, f in zip(short, frames, strict=True) if "coraza_spoa_py" in f}:
            tables["project"][name] += count
    out: dict[str, Any] = {"samples": dict(totals)}
    for role, tables in by_role.items():
        out[role] = {
            kind: [(name, n, n / totals[role]) for name, n in table.most_common(top)]
            for kind, table in tables.items()
        }
    return out


def markdown(summary: dict[str, Any], top: int = 15) -> str:
    out = ["| role | function | kind | samples | share of role |", "|---|---|---|--:|--:|"]
    for role in ("hub", "worker"):
        for kind in ("project", "self"):
            for name, n, share in summary.get(role, {}).get(kind, [])[:top]:
                out.append(f"| {role} | `{name}` | {kind} | {n} | {share:.1%} |")
    return "\n".join(out) + "\n"
