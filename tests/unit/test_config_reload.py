"""reload/runtime pieces without a process: which files -autoreload watches, how it sees an
in-place edit and a symlink swap, and the second-signal forced exit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gevent.event
import pytest

from coraza_spoa_py import logs, reload, runtime
from coraza_spoa_py.settings import AppConfig, BindAddress, Config, RulePaths


def make_config(tmp_path: Path, directives: str) -> Config:
    return Config(
        bind=BindAddress("tcp", "127.0.0.1", 0),
        applications=(AppConfig("a", directives=directives, base_dir=str(tmp_path)),),
        rule_paths=RulePaths(crs_rules_dir="/crs/rules", crs_setup_file="/crs/setup.conf"),
    )


def test_rule_files_follow_includes_globs_and_aliases(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    for name in ("b.conf", "a.conf"):
        (tmp_path / "rules" / name).write_text("")
    directives = (
        "Include @coraza.conf-recommended\n"
        "Include @crs-setup.conf.example\n"
        "Include @owasp_crs/REQUEST-901-INITIALIZATION.conf\n"
        "include rules/*.conf\n"
        'Include "/abs/with space.conf"\n'
        "SecRuleEngine On\n"
    )
    found = reload.rule_files(make_config(tmp_path, directives))
    assert found == [
        "/crs/setup.conf",
        "/crs/rules/REQUEST-901-INITIALIZATION.conf",
        str(tmp_path / "rules" / "a.conf"),
        str(tmp_path / "rules" / "b.conf"),
        "/abs/with space.conf",
    ]


def test_rule_files_follow_nested_includes_relative_to_their_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "main.conf").write_text("Include sub/inner.conf\nInclude main.conf\n")
    (tmp_path / "sub" / "inner.conf").write_text("Include leaf.conf\n")
    (tmp_path / "sub" / "leaf.conf").write_text("SecRuleEngine On\n")
    found = reload.rule_files(make_config(tmp_path, "Include main.conf\n"))
    # each once, the cycle (main.conf includes itself) does not loop
    assert found == [
        str(tmp_path / "main.conf"),
        str(tmp_path / "sub" / "inner.conf"),
        str(tmp_path / "sub" / "leaf.conf"),
    ]


def test_rule_files_of_the_whole_crs_include_the_exclusion_files(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "REQUEST-901-INITIALIZATION.conf").write_text("")
    cfg = Config(
        bind=BindAddress("tcp", "127.0.0.1", 0),
        applications=(AppConfig("a", directives="Include @owasp_crs/*.conf"),),
        rule_paths=RulePaths(str(tmp_path / "rules"), str(tmp_path / "crs-setup.conf")),
    )
    assert reload.rule_files(cfg) == [
        str(tmp_path / "REQUEST-900-EXCLUSION-RULES-BEFORE-CRS.conf"),
        str(tmp_path / "RESPONSE-999-EXCLUSION-RULES-AFTER-CRS.conf"),
        str(tmp_path / "rules" / "REQUEST-901-INITIALIZATION.conf"),
    ]


def test_watcher_sees_an_in_place_edit(tmp_path: Path) -> None:
    path = tmp_path / "rules.conf"
    path.write_text("one")
    watcher = reload.FileWatcher([str(path)])
    assert watcher.changed() == []
    path.write_text("two, longer")
    assert watcher.changed() == [str(path)]
    assert watcher.changed() == []


def test_watcher_sees_an_edit_of_the_same_size_by_mtime(tmp_path: Path) -> None:
    path = tmp_path / "rules.conf"
    path.write_text("aaa")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    watcher = reload.FileWatcher([str(path)])
    path.write_text("bbb")
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    assert watcher.changed() == [str(path)]


def test_watcher_sees_a_configmap_symlink_swap(tmp_path: Path) -> None:
    """config.yml -> ..data/config.yml; ..data swapped to a new folder (kubelet's update)."""
    for name in ("v1", "v2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yml").write_text("same text")
    (tmp_path / "..data").symlink_to("v1")
    link = tmp_path / "config.yml"
    link.symlink_to("..data/config.yml")
    watcher = reload.FileWatcher([str(link)])
    swap = tmp_path / "..data_tmp"
    swap.symlink_to("v2")
    swap.replace(tmp_path / "..data")
    assert watcher.changed() == [str(link)]


def test_watcher_sees_a_file_appear_and_disappear(tmp_path: Path) -> None:
    path = tmp_path / "later.conf"
    watcher = reload.FileWatcher([str(path)])
    path.write_text("x")
    assert watcher.changed() == [str(path)]
    path.unlink()
    assert watcher.changed() == [str(path)]


def test_watch_forever_calls_back_once_per_change(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("1")
    watcher = reload.FileWatcher([str(path)])
    calls: list[list[str]] = []
    ticks = iter(range(6))

    def sleep(seconds: float) -> None:
        tick = next(ticks, None)
        if tick is None:
            raise StopIteration
        if tick == 2:
            path.write_text("22")

    with pytest.raises(StopIteration):
        reload.watch_forever(watcher, calls.append, sleep)
    assert calls == [[str(path)]]


def test_second_stop_signal_exits_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """1. SIGTERM: a stop is requested. 2. SIGTERM again. Result: os._exit(1), no draining."""
    exits: list[int] = []

    def fake_exit(code: int) -> Any:
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(os, "_exit", fake_exit)
    monkeypatch.setattr(logs, "shutdown_logging", lambda: None)
    agent = object.__new__(runtime.Runtime)
    agent._stop = gevent.event.Event()
    agent._stop_reason = ""
    agent.request_stop("SIGTERM")
    assert agent._stop.is_set() and exits == []
    with pytest.raises(SystemExit):
        agent.request_stop("SIGINT")
    assert exits == [runtime.EXIT_FORCED]
