"""The bench's ``--haproxy``: a version, a path or a command on PATH, found before any run;
one that is not there is a usage error naming it (tests.support.haproxy.find_haproxy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import parse_args
from tests.support.haproxy import HAProxyNotFoundError, find_haproxy


@pytest.fixture
def haproxy_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An executable named ``haproxy`` in a folder that is the whole PATH."""
    binary = tmp_path / "haproxy"
    binary.write_text("#!/bin/sh\necho 'HAProxy version 9.9'\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    return binary


def test_a_command_on_path_is_found(haproxy_on_path: Path) -> None:
    assert find_haproxy("haproxy") == haproxy_on_path
    assert parse_args(["floor", "--haproxy", "haproxy"]).haproxy == str(haproxy_on_path)


def test_a_path_is_taken_as_is(haproxy_on_path: Path) -> None:
    assert parse_args(["floor", "--haproxy", str(haproxy_on_path)]).haproxy == str(haproxy_on_path)


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("/nonexistent/haproxy", "no HAProxy binary at /nonexistent/haproxy"),
        ("no-such-haproxy", "'no-such-haproxy' is neither an HAProxy version"),
        ("1.8", "unknown HAProxy version '1.8'"),
    ],
)
def test_a_missing_haproxy_is_a_usage_error_naming_it(
    name: str, error: str, haproxy_on_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["floor", "--haproxy", name])
    assert exited.value.code == 2
    assert f"--haproxy: {error}" in capsys.readouterr().err


def test_find_haproxy_raises_not_found_not_a_test_failure(haproxy_on_path: Path) -> None:
    """Outside pytest (the bench, the CRS runner) a missing binary is an ordinary exception."""
    with pytest.raises(HAProxyNotFoundError, match="no HAProxy binary at /nonexistent"):
        find_haproxy("/nonexistent/haproxy")
    with pytest.raises(HAProxyNotFoundError, match="nor a command on PATH"):
        find_haproxy("haproxy-none")
