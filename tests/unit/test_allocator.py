"""``allocator``: when the agent re-executes itself with jemalloc preloaded, and what it says
(docs/operations.md "Memory allocator"). The re-execution itself, through real HAProxy:
tests/e2e/test_allocator_haproxy.py."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest

from coraza_spoa_py import allocator
from coraza_spoa_py.allocator import ALLOCATOR_ENV, PRELOADED_ENV, find_jemalloc, plan

JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


@pytest.fixture(autouse=True)
def no_execve(monkeypatch):
    """A test that calls ``reexec_with_allocator`` must fail, not replace the pytest process,
    if the plan ever says to re-execute where it should not."""

    def refuse(*args):
        raise AssertionError(f"execve{args[:2]}")

    monkeypatch.setattr(os, "execve", refuse)


def test_default_preloads_jemalloc_and_marks_the_new_image():
    decided = plan({"PATH": "/usr/bin"}, JEMALLOC)
    assert decided.reexec
    assert decided.environ["LD_PRELOAD"] == JEMALLOC
    assert decided.environ[PRELOADED_ENV] == JEMALLOC
    assert decided.environ["PATH"] == "/usr/bin"


def test_a_users_preload_stays_after_the_allocator():
    decided = plan({"LD_PRELOAD": "/opt/libtrace.so"}, JEMALLOC)
    assert decided.reexec
    assert decided.environ["LD_PRELOAD"] == f"{JEMALLOC}:/opt/libtrace.so"


@pytest.mark.parametrize("value", ["system", "SYSTEM", " system "])
def test_system_keeps_the_c_library_allocator(value):
    decided = plan({ALLOCATOR_ENV: value}, JEMALLOC)
    assert not decided.reexec and not decided.invalid
    assert decided.why == f"{ALLOCATOR_ENV}=system"


@pytest.mark.parametrize("value", ["jemalloc", "JeMalloc", ""])
def test_jemalloc_spelled_out_or_empty_is_the_default(value):
    assert plan({ALLOCATOR_ENV: value}, JEMALLOC).reexec


def test_an_unknown_choice_is_named_and_nothing_is_preloaded():
    decided = plan({ALLOCATOR_ENV: "tcmalloc"}, JEMALLOC)
    assert not decided.reexec and decided.invalid
    assert "'tcmalloc'" in decided.why and ALLOCATOR_ENV in decided.why


def test_only_an_unknown_choice_is_a_misconfiguration(monkeypatch):
    monkeypatch.setattr(allocator, "_kept", None)
    monkeypatch.setenv(ALLOCATOR_ENV, "tcmalloc")
    allocator.reexec_with_allocator()  # decides not to: nothing to exec
    assert allocator.misconfigured() == (
        f"{ALLOCATOR_ENV}='tcmalloc' is not one of ('jemalloc', 'system')"
    )
    monkeypatch.setenv(ALLOCATOR_ENV, "system")
    allocator.reexec_with_allocator()
    assert allocator.misconfigured() is None


def test_never_twice_even_when_the_loader_ignored_the_preload():
    decided = plan({PRELOADED_ENV: JEMALLOC, "LD_PRELOAD": ""}, JEMALLOC)
    assert not decided.reexec
    assert decided.why == f"the loader did not preload {JEMALLOC}"


def test_missing_library_names_the_debian_package():
    decided = plan({}, None)
    assert not decided.reexec
    assert "libjemalloc2" in decided.why


def test_already_preloaded_by_the_user_is_left_alone():
    decided = plan({"LD_PRELOAD": "/usr/local/lib/libjemalloc.so.2"}, JEMALLOC)
    assert not decided.reexec
    assert decided.why == "already preloaded"


def test_find_jemalloc_takes_the_first_directory_holding_it(tmp_path):
    first, second, empty = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for directory in (first, second, empty):
        directory.mkdir()
    (second / "libjemalloc.so.2").write_bytes(b"")
    (first / "libjemalloc.so.2").write_bytes(b"")
    assert find_jemalloc([str(empty), str(second), str(first)]) == str(second / "libjemalloc.so.2")
    assert find_jemalloc([str(empty)]) is None


def test_the_default_directories_start_with_this_interpreters_multiarch_one():
    """Debian installs libjemalloc2 in the multiarch directory of the machine's architecture,
    which ld.so also takes (a library of another architecture would be ignored with a
    warning); on this machine the package is installed there (``make install``)."""
    multiarch = sysconfig.get_config_var("MULTIARCH")
    assert multiarch, "Debian's and pyenv's CPython both know their multiarch triplet"
    assert allocator.jemalloc_dirs()[0] == f"/usr/lib/{multiarch}"
    assert find_jemalloc() == f"/usr/lib/{multiarch}/libjemalloc.so.2"


def test_mapped_allocator_reads_the_maps_file(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f02-7f03 r-xp 00000000 08:01 2 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n"
        "7f04-7f05 rw-p 00000000 00:00 0\n"
    )
    assert allocator.mapped_allocator(str(maps)) == "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert allocator.mapped_allocator(str(maps)) is None
    assert allocator.mapped_allocator(str(tmp_path / "absent")) is None


def test_describe_says_why_when_it_is_not_jemalloc(monkeypatch):
    monkeypatch.setattr(allocator, "mapped_allocator", lambda: None)
    monkeypatch.setattr(allocator, "_kept", None)
    assert allocator.describe() == "memory allocator: the C library's (not re-executed)"
    monkeypatch.setenv(ALLOCATOR_ENV, "system")
    allocator.reexec_with_allocator()  # decides not to: nothing to exec
    assert allocator.describe() == (
        "memory allocator: the C library's (CORAZA_SPOA_ALLOCATOR=system)"
    )
    monkeypatch.setattr(allocator, "mapped_allocator", lambda: JEMALLOC)
    assert allocator.describe() == f"memory allocator: jemalloc ({JEMALLOC})"


def test_main_with_explicit_argv_never_reexecutes(tmp_path):
    """``main([...])`` (an embedding program, a test) must not replace its process: only the
    program's own entry re-executes. In a subprocess: ``cli`` monkey-patches on import."""
    code = (
        "import os, sys\n"
        "from coraza_spoa_py import cli\n"
        f"code = cli.main(['-config', {str(tmp_path / 'absent.yml')!r}])\n"
        f"print(code, os.environ.get({PRELOADED_ENV!r}, 'not re-executed'))\n"
    )
    environ = {k: v for k, v in os.environ.items() if k not in (ALLOCATOR_ENV, PRELOADED_ENV)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=environ
    )
    assert done.stdout.split() == ["1", "not", "re-executed"], done.stderr[-2000:]
