"""The memory allocator the engine runs on: jemalloc when it is installed, preloaded by
re-executing the agent once at start.

Why (docs/performance.md change 53): libmodsecurity allocates and frees many small blocks per
rule evaluated (strings, rule messages, variable values); with glibc's allocator a quarter of
an engine thread's CPU under the CRS went to ``malloc`` and ``free``. jemalloc spends ~20 % less
engine CPU per request on the same transactions, at no more RSS. The allocator must be in place
before the first allocation of the process, so it cannot be loaded from Python: the dynamic
loader preloads it (``LD_PRELOAD``, ld.so(8)) in the new image of the same process (``execve``
keeps the pid, so a supervisor or HAProxy's ``spoe-agent`` never sees a second process).

``CORAZA_SPOA_ALLOCATOR``: ``jemalloc`` (the default: preloaded when found) or ``system`` (the C
library's own, nothing preloaded); docs/operations.md "Memory allocator".

Imports nothing beyond the standard library's ``os``, ``sys`` and ``sysconfig``: it runs before
the agent starts anything.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ALLOCATOR_ENV = "CORAZA_SPOA_ALLOCATOR"
# set in the re-executed image: it never re-executes again, even if the loader ignored the
# preload (a library of the wrong architecture: ld.so warns and goes on without it)
PRELOADED_ENV = "CORAZA_SPOA_ALLOCATOR_PRELOADED"
JEMALLOC_NAME = "libjemalloc.so.2"
CHOICES = ("jemalloc", "system")


@dataclass(frozen=True)
class Plan:
    """What ``reexec_with_allocator`` does: re-execute with ``environ`` (``reexec``), or not
    (``why`` says why not, for the start-up log; ``invalid``: because of a value of
    ``CORAZA_SPOA_ALLOCATOR`` that is not one of ``CHOICES``, which the start warns about)."""

    reexec: bool
    environ: Mapping[str, str]
    why: str
    invalid: bool = False


def jemalloc_dirs() -> tuple[str, ...]:
    """Where to look: Debian's libjemalloc2 is in this interpreter's multiarch directory
    (``/usr/lib/x86_64-linux-gnu``, ``/usr/lib/aarch64-linux-gnu``, ``/usr/lib/i386-linux-gnu``
    ...), a local build under the usual prefixes."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{os.uname().machine}-linux-gnu"
    return (f"/usr/lib/{multiarch}", "/usr/lib", "/usr/local/lib", "/usr/lib64")


def find_jemalloc(dirs: Sequence[str] | None = None) -> str | None:
    """The path of jemalloc's shared library, or None when it is not installed."""
    for directory in jemalloc_dirs() if dirs is None else dirs:
        path = os.path.join(directory, JEMALLOC_NAME)
        if os.path.isfile(path):
            return path
    return None


def plan(environ: Mapping[str, str], jemalloc: str | None) -> Plan:
    """Whether to re-execute, and with which environment (pure: the tests' entry)."""
    wanted = environ.get(ALLOCATOR_ENV, "jemalloc").strip().lower() or "jemalloc"
    if wanted not in CHOICES:
        why = f"{ALLOCATOR_ENV}={wanted!r} is not one of {CHOICES}"
        return Plan(False, environ, why, invalid=True)
    if wanted == "system":
        return Plan(False, environ, f"{ALLOCATOR_ENV}=system")
    if PRELOADED_ENV in environ:
        # describe() reports this only when the library is not mapped after all
        return Plan(False, environ, f"the loader did not preload {environ[PRELOADED_ENV]}")
    if jemalloc is None:
        return Plan(False, environ, f"{JEMALLOC_NAME} not found (Debian: libjemalloc2)")
    preload = environ.get("LD_PRELOAD", "")
    if JEMALLOC_NAME in preload:
        return Plan(False, environ, "already preloaded")
    new = dict(environ)
    # ld.so(8): entries separated by spaces or colons; the allocator goes first so that it
    # wins over anything else the user preloads
    new["LD_PRELOAD"] = f"{jemalloc}:{preload}" if preload else jemalloc
    new[PRELOADED_ENV] = jemalloc
    return Plan(True, new, "preloading jemalloc")


# this process's decision, when it did not re-execute (``describe``, ``misconfigured``)
_kept: Plan | None = None


def reexec_with_allocator() -> None:
    """Re-execute this process with jemalloc preloaded when the plan says so (never returns
    then); otherwise keep the plan, for ``describe``. Only from the program's entry point: the
    new image runs the same command line (``sys.orig_argv``)."""
    global _kept
    decided = plan(os.environ, find_jemalloc())
    if decided.reexec and sys.executable and sys.orig_argv:
        # flush first: execve drops what is buffered
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execve(sys.executable, sys.orig_argv, dict(decided.environ))
        except OSError as exc:
            decided = Plan(False, os.environ, f"cannot re-execute: {exc}")
    elif decided.reexec:
        decided = Plan(False, os.environ, "cannot re-execute: no interpreter path")
    _kept = decided


def mapped_library(name_part: str, maps_path: str = "/proc/self/maps") -> str | None:
    """The path of the first mapped file whose path holds ``name_part`` (what the dynamic
    loader really loaded), or None."""
    try:
        with open(maps_path, encoding="utf-8") as maps:
            for line in maps:
                fields = line.split()
                if len(fields) >= 6 and name_part in fields[-1]:
                    return fields[-1]
    except OSError:
        return None
    return None


def mapped_allocator(maps_path: str = "/proc/self/maps") -> str | None:
    """The jemalloc library this process really has mapped, or None (the C library's own)."""
    return mapped_library("libjemalloc", maps_path)


def misconfigured() -> str | None:
    """What is wrong with ``CORAZA_SPOA_ALLOCATOR``, if its value is not one of ``CHOICES``
    (the agent then runs on the C library's allocator and warns at start)."""
    return _kept.why if _kept is not None and _kept.invalid else None


def describe() -> str:
    """For the start line: which allocator runs, and why when it is not jemalloc."""
    library = mapped_allocator()
    if library is not None:
        return f"memory allocator: jemalloc ({library})"
    # no decision: main() called with arguments, which never re-executes
    why = _kept.why if _kept is not None else "not re-executed"
    return f"memory allocator: the C library's ({why})"


__all__ = [
    "ALLOCATOR_ENV",
    "PRELOADED_ENV",
    "Plan",
    "describe",
    "find_jemalloc",
    "mapped_allocator",
    "mapped_library",
    "misconfigured",
    "plan",
    "reexec_with_allocator",
]
