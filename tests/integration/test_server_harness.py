"""The harness the server tests (and every e2e test) stand on: binaries, templates, processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.haproxy import (
    HAPROXY_VERSIONS,
    haproxy_binary,
    haproxy_version_string,
    render_template,
)
from tests.support.httpclient import request
from tests.support.ports import free_port, wait_for_port
from tests.support.process import ManagedProcess, ProcessExitedError

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("version", HAPROXY_VERSIONS)
def test_each_haproxy_binary_is_the_version_it_claims(version: str) -> None:
    """`haproxy -v` of the binary picked for "2.6" says 2.6, and so on (a wrong path or a
    moved Debian suite must not silently test another version)."""
    assert haproxy_binary(version).is_file()
    assert f"version {version}." in haproxy_version_string(version)


def test_unknown_haproxy_version_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown HAProxy version"):
        haproxy_binary("1.8")


def test_render_template_replaces_only_the_given_names() -> None:
    """${NAME} with a substitution is replaced; HAProxy's own "${ENV}", `$$` and regex `$`
    anchors are left exactly as written."""
    text = 'bind 127.0.0.1:${FE_PORT}\nserver s "${SPOA_ADDR}"\nacl a path_reg ^/x$\nx $$\n'
    assert render_template(text, {"FE_PORT": 8080}) == (
        'bind 127.0.0.1:8080\nserver s "${SPOA_ADDR}"\nacl a path_reg ^/x$\nx $$\n'
    )


def test_managed_process_reports_an_early_exit_with_its_output(tmp_path: Path) -> None:
    """A process that dies while we wait for its port fails at once, quoting its output."""
    process = ManagedProcess(
        "dies",
        [sys.executable, "-c", "import sys; print('bad config'); sys.exit(3)"],
        log_path=tmp_path / "dies.log",
    )
    with process, pytest.raises(ProcessExitedError, match="(?s)status 3.*bad config"):
        wait_for_port("127.0.0.1", free_port(), timeout=10, process=process)
    assert process.returncode == 3


def test_http_backend_answers_status_and_reflect(http_backend) -> None:
    """The backend: 200 for anything, /status/<code>, and albedo's POST /reflect."""
    ok = request(http_backend.port, "/anything?q=1")
    assert (ok.status, ok.body, ok.header("X-Backend-Path")) == (200, b"backend ok\n", "/anything")
    assert request(http_backend.port, "/status/418").status == 418
    reflected = request(
        http_backend.port,
        "/reflect",
        method="POST",
        body=b'{"status": 201, "headers": {"X-Test": "yes"}, "body": "hello"}',
        headers={"Content-Type": "application/json"},
    )
    assert (reflected.status, reflected.header("X-Test"), reflected.body) == (201, "yes", b"hello")


def test_start_haproxy_names_a_missing_substitution(tmp_path: Path) -> None:
    """A ${NAME} nobody defined fails before HAProxy starts, naming the file and the name."""
    from tests.support.haproxy import start_haproxy

    config = tmp_path / "template.cfg"
    config.write_text("global\n    maxconn ${NOT_DEFINED_ANYWHERE}\n")
    with (
        pytest.raises(ValueError, match=r"haproxy.cfg: \$\{NOT_DEFINED_ANYWHERE\}"),
        start_haproxy("2.6", config, tmp_path / "work"),
    ):
        pass
