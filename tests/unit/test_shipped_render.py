"""tests/support/shipped.py: the real shipped etc/haproxy files get the test's addresses, the
added lines land in their section, every other line stays byte for byte, and a shipped file
lacking a line the renderer must rewrite is a clear error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.shipped import (
    RENDERED_HAPROXY_NAME,
    SHIPPED_DIR,
    ShippedConfigError,
    render_shipped,
    render_shipped_text,
    spoe_backend_name,
)

SHIPPED_TEXT = (SHIPPED_DIR / "haproxy.cfg").read_text()
SPOE_BACKEND = spoe_backend_name((SHIPPED_DIR / "coraza.cfg").read_text())
FRONTEND_LINE = "    http-after-response set-header X-Test %[var(txn.coraza.error)]"
GLOBAL_LINE = "    stats socket ${STATS_SOCKET} level admin"


def render(text: str = SHIPPED_TEXT, **overrides: object) -> str:
    arguments: dict[str, object] = {
        "frontend_port": 40001,
        "agent_port": 40002,
        "spoe_backend": SPOE_BACKEND,
        "spoe_config": Path("/tmp/x/coraza.cfg"),
        "demo_port": 40003,
    }
    arguments.update(overrides)
    return render_shipped_text(text, **arguments)  # type: ignore[arg-type]


def section_of(text: str, wanted: str) -> list[str]:
    """The lines of section ``wanted`` (its header line starts with it), header excluded."""
    lines: list[str] = []
    inside = False
    for line in text.splitlines():
        if re.match(r"^(global|defaults|frontend|backend|listen)\b", line):
            inside = line.startswith(wanted)
            continue
        if inside:
            lines.append(line)
    return lines


def changed_pairs(before: str, after: str) -> list[tuple[str, str]]:
    assert len(before.splitlines()) == len(after.splitlines())
    return [
        (old, new)
        for old, new in zip(before.splitlines(), after.splitlines(), strict=True)
        if old != new
    ]


def test_the_shipped_addresses_and_spoe_path_are_rewritten_and_nothing_else() -> None:
    """1. Render the real shipped haproxy.cfg, no added lines. 2. Exactly five lines differ:
    the frontend bind, the SPOE filter path, the agent server, the demo backend's server (→ the
    demo app) and the demo app's bind; comments and every other line are byte for byte."""
    rendered = render()
    assert changed_pairs(SHIPPED_TEXT, rendered) == [
        ("    bind 127.0.0.1:8080", "    bind 127.0.0.1:40001"),
        (
            "    filter spoe engine coraza config etc/haproxy/coraza.cfg",
            "    filter spoe engine coraza config /tmp/x/coraza.cfg",
        ),
        (
            "    server coraza-agent 127.0.0.1:9000 check inter 5s",
            "    server coraza-agent 127.0.0.1:40002 check inter 5s",
        ),
        ("    server demo 127.0.0.1:8081", "    server demo 127.0.0.1:40003"),
        ("    bind 127.0.0.1:8081", "    bind 127.0.0.1:40003"),
    ]
    assert rendered.endswith("\n") == SHIPPED_TEXT.endswith("\n")


def test_comments_keep_the_shipped_addresses() -> None:
    """The header comment names 127.0.0.1:8080 and 9000: comments are not configuration."""
    rendered = render()
    comments = [line for line in rendered.splitlines() if line.lstrip().startswith("#")]
    shipped = [line for line in SHIPPED_TEXT.splitlines() if line.lstrip().startswith("#")]
    assert comments == shipped
    assert any("127.0.0.1:8080" in line for line in comments)


def test_a_backend_port_replaces_the_demo_app_and_the_check_interval_is_set() -> None:
    """backend_port: the application backend's server points there, the demo app still moves
    to demo_port; agent_check_interval replaces the agent's ``inter``."""
    rendered = render(backend_port=40004, agent_check_interval="500ms")
    assert "    server demo 127.0.0.1:40004" in section_of(rendered, "backend demo_app")
    assert "    bind 127.0.0.1:40003" in section_of(rendered, "listen demo_app_server")
    agent_section = section_of(rendered, f"backend {SPOE_BACKEND}")
    assert "    server coraza-agent 127.0.0.1:40002 check inter 500ms" in agent_section


def test_added_lines_land_right_after_their_section_header() -> None:
    rendered = render(frontend_lines=[FRONTEND_LINE], global_lines=[GLOBAL_LINE])
    assert section_of(rendered, "frontend")[0] == FRONTEND_LINE
    assert section_of(rendered, "global")[0] == GLOBAL_LINE
    assert rendered.count(FRONTEND_LINE) == 1 and rendered.count(GLOBAL_LINE) == 1
    assert len(rendered.splitlines()) == len(SHIPPED_TEXT.splitlines()) + 2


@pytest.mark.parametrize(
    ("removed", "message"),
    [
        ("    bind 127.0.0.1:8080\n", "expected 1 'bind' line in the frontend, found 0"),
        ("    filter spoe engine coraza", "'filter spoe ... config' line in the frontend"),
        ("    server coraza-agent", "'server' line in backend 'coraza-spoa', found 0"),
        ("frontend web\n", "'frontend' section, found 0"),
    ],
)
def test_a_missing_anchor_is_a_clear_error(removed: str, message: str) -> None:
    """Remove one line the renderer rewrites (the whole line holding ``removed``): the error
    says which one, instead of a config that silently tests something else."""
    start = SHIPPED_TEXT.index(removed)
    end = SHIPPED_TEXT.index("\n", start) + 1
    broken = SHIPPED_TEXT[:start] + SHIPPED_TEXT[end:]
    with pytest.raises(ShippedConfigError, match=re.escape(message)):
        render(broken)


def test_a_missing_check_interval_or_demo_app_is_a_clear_error() -> None:
    no_inter = SHIPPED_TEXT.replace("check inter 5s", "check")
    with pytest.raises(ShippedConfigError, match="'inter' on the agent's server line"):
        render(no_inter, agent_check_interval="500ms")
    no_demo = SHIPPED_TEXT[: SHIPPED_TEXT.index("listen demo_app_server")]
    with pytest.raises(ShippedConfigError, match="pass backend_port"):
        render(no_demo)
    assert "server demo 127.0.0.1:40004" in render(no_demo, backend_port=40004)


def test_coraza_cfg_without_use_backend_is_a_clear_error() -> None:
    with pytest.raises(ShippedConfigError, match="names no use-backend"):
        spoe_backend_name("[coraza]\nspoe-agent coraza-agent\n")


def test_render_shipped_writes_both_files_into_the_workdir(tmp_path: Path) -> None:
    """The copied coraza.cfg is the shipped one unchanged, and the filter loads that copy."""
    shipped = render_shipped(tmp_path / "w", frontend_port=40001, agent_port=40002)
    assert shipped.haproxy_cfg == tmp_path / "w" / RENDERED_HAPROXY_NAME
    assert shipped.spoe_cfg.read_text() == (SHIPPED_DIR / "coraza.cfg").read_text()
    text = shipped.haproxy_cfg.read_text()
    assert f"    filter spoe engine coraza config {shipped.spoe_cfg}\n" in text
    assert f"    bind 127.0.0.1:{shipped.demo_port}\n" in text
    assert f"    server demo 127.0.0.1:{shipped.demo_port}\n" in text
    assert shipped.demo_port not in (40001, 40002, 8081)
