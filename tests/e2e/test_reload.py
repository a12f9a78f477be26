"""Reload through a real HAProxy running the shipped etc/haproxy files (issue 4): SIGHUP under
steady traffic, a broken reload that keeps serving, a refused bind change, and -autoreload on an
in-place edit and on a Kubernetes-style symlink swap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.lifecycle_stack import (
    RULES_BROKEN,
    RULES_V1,
    RULES_V2,
    agent_config_text,
    lifecycle_stack,
    traffic,
)
from tests.support.httpclient import Response, request

pytestmark = pytest.mark.e2e

RELOADED = "configuration successfully reloaded"
RELOAD_FAILED = "failed to reload configuration, using old configuration"


def assert_blocked(response: Response, phase: str = "request") -> None:
    assert response.status == 403, response
    assert response.header("waf-block") == phase


# 2.6: the applet SPOE engine; 3.2: the SPOP multiplexer (docs/protocol.md "What HAProxy sends");
# 2 workers: the master forwards SIGHUP to each, and the slow response may reach the worker
# that did not see its request (handed to the one holding the pre-reload transaction)
@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("version", ["2.6", "3.2"])
def test_sighup_under_steady_traffic_changes_the_rule_with_no_error(
    tmp_path: Path, version: str, workers: int
) -> None:
    """1. 10 s of traffic from 4 clients: clean, "old-attack" and "new-attack" paths.
    2. Before the reload, a slow request whose response (2.5 s later) leaks.
    3. At ~5 s, rewrite the rule file (v1 → v2) and SIGHUP.
    Result: no error (500) and no failed request at any time; "old-attack" is blocked before
    the reload and passes after it, "new-attack" the other way round; the slow response is
    still inspected by its pre-reload transaction (403 from the v1 response rule that v2 no
    longer has)."""
    with lifecycle_stack(tmp_path, version=version, workers=workers) as stack:
        paths = ["/", "/old-attack", "/new-attack", "/shop?item=1"]
        outcomes, joiner = traffic(stack.frontend_port, paths, duration_s=10.0)
        time.sleep(4.0)
        slow: list[Response] = []
        slow_thread = _background(
            lambda: slow.append(request(stack.frontend_port, "/page?leak=1&delay_ms=2500"))
        )
        time.sleep(0.5)  # the slow request's request phase is done: its transaction is open
        stack.rules_path.write_text(RULES_V2)
        reload_started = time.monotonic()
        stack.sighup()
        stack.wait_for_log(RELOADED, count=workers)  # every worker reloaded
        reload_done = time.monotonic()
        joiner.join()
        slow_thread.join(30)

        assert len(outcomes) > 100, "the traffic generator barely ran"
        failures = [o for o in outcomes if o.error or o.status not in (200, 403)]
        assert failures == [], failures[:5]
        # path -> (status before the reload, status after it)
        expected = {"/": (200, 200), "/shop?item=1": (200, 200)}
        expected |= {"/old-attack": (403, 200), "/new-attack": (200, 403)}
        for outcome in outcomes:
            if outcome.done_at < reload_started:
                assert outcome.status == expected[outcome.path][0], outcome
            elif outcome.sent_at > reload_done:
                assert outcome.status == expected[outcome.path][1], outcome
        after_reload = [o for o in outcomes if o.sent_at > reload_done]
        assert any(o.path == "/new-attack" for o in after_reload)

        (slow_response,) = slow
        assert_blocked(slow_response, phase="response")
        assert_blocked(stack.get("/new-attack"))
        assert stack.get("/old-attack").status == 200
        logs = stack.agent_log()
        assert logs.count("reloading configuration") == workers and "(SIGHUP)" in logs
        assert "error" not in _lines_between(logs, "reloading configuration", RELOADED).lower()


def test_broken_reloads_keep_serving_the_old_rules(tmp_path: Path) -> None:
    """1. Break the rule file, SIGHUP. 2. Break the YAML, SIGHUP. 3. Change bind, SIGHUP.
    Result: each reload is refused with its reason (rule file and line, YAML line, bind) and
    the agent keeps answering with the v1 rules; fixing the file and SIGHUP works again."""
    with lifecycle_stack(tmp_path) as stack:
        assert_blocked(stack.get("/old-attack"))
        good_config = stack.config_path.read_text()

        stack.rules_path.write_text(RULES_BROKEN)
        stack.sighup()
        logs = stack.wait_for_log(RELOAD_FAILED)
        assert f"{stack.rules_path}:2:" in logs
        assert "Traceback" not in logs  # our lines only (issue 15)
        assert_blocked(stack.get("/old-attack"))
        assert stack.get("/").status == 200

        stack.rules_path.write_text(RULES_V1)
        stack.config_path.write_text(good_config + "unknown_key: 1\n")
        stack.sighup()
        logs = stack.wait_for_log(RELOAD_FAILED, count=2)
        last_line = len(good_config.splitlines()) + 1
        assert f"{stack.config_path}:{last_line}: unknown_key: unknown key" in logs
        assert_blocked(stack.get("/old-attack"))

        stack.config_path.write_text(good_config.replace("bind: 127.0.0.1:", "bind: 127.0.0.2:"))
        stack.sighup()
        logs = stack.wait_for_log(RELOAD_FAILED, count=3)
        assert "bind changed from 127.0.0.1:" in logs and "restart the agent" in logs
        assert_blocked(stack.get("/old-attack"))

        stack.config_path.write_text(good_config)
        stack.rules_path.write_text(RULES_V2)
        stack.sighup()
        stack.wait_for_log(RELOADED)
        assert_blocked(stack.get("/new-attack"))
        assert stack.get("/old-attack").status == 200
        assert stack.agent.is_running()


def test_autoreload_picks_up_an_in_place_rule_edit(tmp_path: Path) -> None:
    """1. -autoreload. 2. Rewrite the included rule file in place. Result: reloaded within a
    few seconds, the new rule in force; no SIGHUP sent."""
    with lifecycle_stack(tmp_path, agent_args=("-autoreload",)) as stack:
        assert_blocked(stack.get("/old-attack"))
        time.sleep(1.1)  # a new mtime even on file systems with 1 s resolution
        stack.rules_path.write_text(RULES_V2)
        logs = stack.wait_for_log(RELOADED, timeout=15)
        assert "autoreload: changed" in logs and "rules.conf" in logs
        assert_blocked(stack.get("/new-attack"))
        assert stack.get("/old-attack").status == 200


def test_autoreload_picks_up_a_configmap_symlink_swap(tmp_path: Path) -> None:
    """Kubernetes mounts a ConfigMap as config.yml -> ..data/config.yml, ..data -> a
    timestamped folder; an update writes a new folder and swaps ..data atomically.
    1. -autoreload on that layout. 2. Swap ..data to a folder whose config names other rules.
    Result: reloaded, the new folder's rules in force."""
    mount = tmp_path / "mount"
    first, second = mount / "..2024_01_01", mount / "..2024_01_02"
    for folder, rules in ((first, "rules-v1.conf"), (second, "rules-v2.conf")):
        folder.mkdir(parents=True)
        (folder / "config.yml").write_text(
            agent_config_text(0, rules_file=str(tmp_path / rules)).replace(
                "127.0.0.1:0", "127.0.0.1:AGENT_PORT"
            )
        )
    (tmp_path / "rules-v1.conf").write_text(RULES_V1)
    (tmp_path / "rules-v2.conf").write_text(RULES_V2)
    data = mount / "..data"
    data.symlink_to(first.name)
    link = mount / "config.yml"
    link.symlink_to("..data/config.yml")
    with lifecycle_stack(tmp_path / "stack", agent_args=("-autoreload",), config_path=link) as st:
        # the stack filled in the port in the first folder's file; the second needs it too
        port_line = next(x for x in link.read_text().splitlines() if x.startswith("bind:"))
        second_config = second / "config.yml"
        second_config.write_text(
            second_config.read_text().replace("bind: 127.0.0.1:AGENT_PORT", port_line)
        )
        assert_blocked(st.get("/old-attack"))
        swap = mount / "..data_tmp"
        swap.symlink_to(second.name)
        swap.replace(data)  # atomic rename over the old symlink, as kubelet does
        st.wait_for_log(RELOADED, timeout=15)
        assert_blocked(st.get("/new-attack"))
        assert st.get("/old-attack").status == 200


def _background(work: Callable[[], object]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def _lines_between(text: str, start: str, end: str) -> str:
    begin = text.find(start)
    return text[begin : text.find(end, begin)] if begin >= 0 else ""
