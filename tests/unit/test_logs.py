"""logs: sinks per config, console/JSON rendering, per-application routing, Gen1 log.dir,
logrotate reopen. Every test writes to files under tmp_path and restores loguru afterwards."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from coraza_spoa_py import log_render, logs
from coraza_spoa_py.settings import AppConfig, BindAddress, Config, LogConfig

MATCH = {
    "rule_id": 942100,
    "msg": "SQL Injection Attack Detected via libinjection",
    "data": "Matched Data: s&sos found",
    "severity": "critical",
    "file": "/usr/share/modsecurity-crs/rules/REQUEST-942-APPLICATION-ATTACK-SQLI.conf",
    "line": 45,
    "tags": ["attack-sqli"],
    "uri": "/?q=1' or '1'='1",
    "unique_id": "abc",
    "disruptive": False,
    "phase": "request-body",
    "raw": '[client "127.0.0.1"] ModSecurity: Warning. [id "942100"] [msg "SQL Injection"]',
}


@pytest.fixture(autouse=True)
def restore_loguru() -> Iterator[None]:
    yield
    logs.shutdown_logging()
    logger.add(sys.stderr)  # loguru's own default handler, as other tests expect it


def make_config(log: LogConfig, *apps: AppConfig) -> Config:
    return Config(bind=BindAddress("tcp", "127.0.0.1", 0), applications=apps, log=log)


def lines(path: Path) -> list[str]:
    logs.flush_log_files()  # files are block buffered; the runtime flushes every second
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize(
    ("name", "number"),
    [("trace", 5), ("debug", 10), ("info", 20), ("warn", 30), ("error", 40), ("fatal", 50)],
)
def test_level_names_of_zerolog(name: str, number: int) -> None:
    assert logs.level_number(name) == number
    assert logs.level_number(name.upper()) == number


def test_disabled_and_unknown_levels() -> None:
    assert logs.level_number("disabled") is None
    with pytest.raises(ValueError, match="unknown log level"):
        logs.level_number("loud")


def test_console_line_shows_the_bound_extras(tmp_path: Path) -> None:
    out = tmp_path / "agent.log"
    logs.configure_logging(make_config(LogConfig(level="debug", file=str(out))))
    logger.bind(peer="127.0.0.1:4242", stream_id=7, frame_id=1).debug("NOTIFY received")
    (line,) = lines(out)
    assert " DBG NOTIFY received " in line
    assert "peer=127.0.0.1:4242 stream_id=7 frame_id=1" in line


def test_level_filter(tmp_path: Path) -> None:
    out = tmp_path / "agent.log"
    logs.configure_logging(make_config(LogConfig(level="warn", file=str(out))))
    logger.info("hidden")
    logger.warning("shown")
    logger.error("also shown")
    assert [line.split(" ", 3)[2:] for line in lines(out)] == [
        ["WRN", "shown"],
        ["ERR", "also shown"],
    ]


def test_json_line_has_zerolog_fields(tmp_path: Path) -> None:
    out = tmp_path / "agent.json"
    logs.configure_logging(make_config(LogConfig(level="info", file=str(out), format="json")))
    logger.bind(peer="p", raw=b"\xff bytes").warning("reload failed")
    (line,) = lines(out)
    record = json.loads(line)
    assert record["level"] == "warn"
    assert record["message"] == "reload failed"
    assert record["peer"] == "p"
    assert record["raw"] == "\\xff bytes"
    assert record["time"][:4].isdigit() and "T" in record["time"]


def test_json_exception_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "agent.json"
    logs.configure_logging(make_config(LogConfig(level="info", file=str(out), format="json")))
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("failed")
    record = json.loads(lines(out)[0])
    assert "RuntimeError: boom" in record["error"]


def test_rule_match_json_has_a_match_object_per_rule(tmp_path: Path) -> None:
    """An application with its own JSON log gets one line per matched rule, with coraza-spoa's
    field names in a nested ``match`` object; the agent log gets none of it."""
    agent_log, app_log = tmp_path / "agent.log", tmp_path / "app.json"
    app = AppConfig(name="shop", log=LogConfig(level="info", file=str(app_log), format="json"))
    logs.configure_logging(make_config(LogConfig(level="debug", file=str(agent_log)), app))
    second = dict(MATCH, rule_id=949110, msg="Inbound Anomaly Score Exceeded")
    logger.bind(app="shop", tx="abc", kind="rule_match", matches=[MATCH, second]).warning(
        "rules matched"
    )
    records = [json.loads(line) for line in lines(app_log)]
    assert [r["match"]["rule_id"] for r in records] == [942100, 949110]
    first = records[0]
    assert (first["app"], first["tx"], first["level"]) == ("shop", "abc", "warn")
    for field in ("msg", "data", "severity", "file", "line", "tags", "uri", "unique_id", "phase"):
        assert field in first["match"]
    assert "matches" not in first and "kind" not in first
    assert lines(agent_log) == []


def test_json_values_become_what_json_can_write() -> None:
    """Plain JSON values pass as they are (checked by exact type first); everything else is
    converted as before: bytes to text, tuples and sets to lists, mapping keys to strings,
    int and str subclasses kept, any other object to its str()."""
    import enum
    from collections import OrderedDict

    class Code(enum.IntEnum):
        DENY = 403

    source = {
        "text": "é",
        "number": 7,
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
        "raw": b"\xffa",
        "pair": ("a", 1),
        "names": frozenset({"x"}),
        1: OrderedDict(inner=[b"b"]),
        "code": Code.DENY,
        "other": Path("/x"),
    }
    assert log_render._json_safe(source) == {
        "text": "é",
        "number": 7,
        "ratio": 0.5,
        "flag": True,
        "nothing": None,
        "raw": "\\xffa",
        "pair": ["a", 1],
        "names": ["x"],
        "1": {"inner": ["b"]},
        "code": 403,
        "other": "/x",
    }
    assert json.dumps(log_render._json_safe(source))  # writable


def test_rule_match_console_prints_the_engine_line(tmp_path: Path) -> None:
    out = tmp_path / "agent.log"
    logs.configure_logging(make_config(LogConfig(level="info", file=str(out))))
    logger.bind(app="a", tx="t1", kind="rule_match", matches=[MATCH]).warning("rules matched")
    (line,) = lines(out)
    assert "app=a tx=t1" in line
    assert line.endswith(str(MATCH["raw"]))
    assert '[id "942100"]' in line


def test_app_without_log_settings_writes_to_the_agent_log(tmp_path: Path) -> None:
    out = tmp_path / "agent.log"
    logs.configure_logging(make_config(LogConfig(level="info", file=str(out)), AppConfig("a")))
    logger.bind(app="a").info("application line")
    logger.info("agent line")
    assert [line.split(" ", 3)[3] for line in lines(out)] == [
        "application line app=a",
        "agent line",
    ]


def test_app_level_is_its_own(tmp_path: Path) -> None:
    agent_log, app_log = tmp_path / "agent.log", tmp_path / "app.log"
    app = AppConfig(name="a", log=LogConfig(level="error", file=str(app_log)))
    logs.configure_logging(make_config(LogConfig(level="debug", file=str(agent_log)), app))
    logger.bind(app="a").warning("below the app's level")
    logger.bind(app="a").error("kept")
    assert [line.split(" ", 3)[3] for line in lines(app_log)] == ["kept app=a"]
    assert lines(agent_log) == []


def test_disabled_and_dev_null_write_nothing(tmp_path: Path) -> None:
    logs.configure_logging(make_config(LogConfig(level="disabled", file=str(tmp_path / "x"))))
    logger.error("nothing")
    assert not (tmp_path / "x").exists()
    logs.configure_logging(make_config(LogConfig(level="info", file="/dev/null")))
    logger.error("nothing either")
    assert logs.open_targets() == ()


def test_stdout_sink(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure_logging(make_config(LogConfig(level="info", file="/dev/stdout")))
    logger.info("to stdout")
    assert "INF to stdout" in capsys.readouterr().out


def test_gen1_log_dir_splits_server_and_error_logs(tmp_path: Path) -> None:
    folder = tmp_path / "logs"
    logs.configure_logging(make_config(LogConfig(level="info", dir=str(folder))))
    logger.debug("hidden")
    logger.info("server line")
    logger.warning("server warning")
    logger.error("error line")
    assert [line.split(" ", 3)[3] for line in lines(folder / "server.log")] == [
        "server line",
        "server warning",
    ]
    assert [line.split(" ", 3)[3] for line in lines(folder / "error.log")] == ["error line"]


def test_reopen_after_logrotate_moved_the_file(tmp_path: Path) -> None:
    """1. Log a line. 2. Move the file away (logrotate). 3. Reopen (SIGHUP). 4. Log again.
    Result: the old line is in the moved file, the new one in a new file at the path."""
    out = tmp_path / "agent.log"
    logs.configure_logging(make_config(LogConfig(level="info", file=str(out))))
    logger.info("before")
    rotated = tmp_path / "agent.log.1"
    out.rename(rotated)
    logs.reopen_log_files()
    logger.info("after")
    assert [line.split(" ", 3)[3] for line in lines(rotated)] == ["before"]
    assert [line.split(" ", 3)[3] for line in lines(out)] == ["after"]


def test_unopenable_file_raises_and_keeps_the_old_sinks(tmp_path: Path) -> None:
    good = tmp_path / "good.log"
    logs.configure_logging(make_config(LogConfig(level="info", file=str(good))))
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(logs.LoggingSetupError, match="cannot open log file"):
        logs.configure_logging(make_config(LogConfig(file=str(blocker / "x.log"))))
    logger.info("still here")
    assert lines(good)[-1].endswith("still here")


def test_reconfigure_closes_the_previous_files(tmp_path: Path) -> None:
    first, second = tmp_path / "1.log", tmp_path / "2.log"
    logs.configure_logging(make_config(LogConfig(file=str(first))))
    logs.configure_logging(make_config(LogConfig(file=str(second))))
    logger.info("only in the second")
    assert lines(first) == []
    assert lines(second)[0].endswith("only in the second")
    assert logs.open_targets() == (str(second),)


def test_log_files_are_block_buffered_until_flushed_and_closing_flushes(tmp_path: Path) -> None:
    """1. log a line to a file  2. read the file  3. flush  4. log another, shut down.
    Result: the line is not written by the record itself (no write() per record), the flush
    writes it, and shutting down writes the rest."""
    out = tmp_path / "agent.log"
    logs.configure_logging(make_config(LogConfig(level="info", file=str(out))))
    logger.info("buffered")
    assert out.read_text() == ""
    logs.flush_log_files()
    assert out.read_text().endswith("buffered\n")
    logger.info("at shutdown")
    logs.shutdown_logging()
    assert out.read_text().endswith("at shutdown\n")


ENGINE_LINE = (
    'ModSecurity: Warning. Matched "Operator `Rx\' with parameter `x\'" [id "941100"] ' * 8
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # long ASCII lines take the bytes check, short ones and non-ASCII isprintable
        (ENGINE_LINE, ENGINE_LINE),
        (ENGINE_LINE + "\x1b[2J" + ENGINE_LINE, ENGINE_LINE + "\\x1b[2J" + ENGINE_LINE),
        (ENGINE_LINE + "\n", ENGINE_LINE + "\\n"),
        ("\x7f" + ENGINE_LINE, "\\x7f" + ENGINE_LINE),
        (ENGINE_LINE + "\u2028é", ENGINE_LINE + "\\u2028é"),
        (ENGINE_LINE + "é\x85", ENGINE_LINE + "é\\x85"),
        (ENGINE_LINE + "é", ENGINE_LINE + "é"),
        ("tx\rid", "tx\\rid"),
        ("sample_app", "sample_app"),
    ],
)
def test_escape_text_escapes_line_breakers_at_any_length(text: str, expected: str) -> None:
    assert len(ENGINE_LINE) > 128  # the long branch is taken
    assert log_render.escape_text(text) == expected


def test_console_stamp_follows_the_second_and_keeps_milliseconds() -> None:
    from datetime import datetime

    first = datetime(2026, 12, 5, 12, 0, 59, 999_000)
    later = datetime(2026, 12, 5, 12, 1, 0, 7_000)
    same_second_next_month = datetime(2027, 1, 5, 12, 0, 59, 1_000)
    assert log_render._console_stamp(first) == "2026-12-05 12:00:59.999"
    assert log_render._console_stamp(later) == "2026-12-05 12:01:00.007"
    assert log_render._console_stamp(first) == "2026-12-05 12:00:59.999"
    assert log_render._console_stamp(same_second_next_month) == "2027-01-05 12:00:59.001"


def test_rule_match_objects_render_as_their_dicts_would(tmp_path: Path) -> None:
    """The application logs ``RuleMatch`` objects (docs/architecture.md "Rule-match log
    records"): console shows each one's engine line, JSON its ``to_dict()`` fields."""
    from coraza_spoa_py.models import RuleMatch

    match = RuleMatch(
        rule_id=942100,
        msg="SQL Injection",
        severity="critical",
        tags=("attack-sqli",),
        raw='ModSecurity: Warning. [id "942100"]',
    )
    bare = RuleMatch(rule_id=949110, msg="Inbound Anomaly Score Exceeded")  # no engine line
    console, as_json = tmp_path / "agent.log", tmp_path / "app.json"
    app = AppConfig(name="shop", log=LogConfig(level="info", file=str(as_json), format="json"))
    logs.configure_logging(make_config(LogConfig(level="info", file=str(console)), app))
    for name in ("shop", "other"):
        logger.bind(app=name, tx="t1", kind="rule_match", matches=[match, bare]).error("m")
    first, second = lines(console)
    assert first.endswith(' app=other tx=t1 ModSecurity: Warning. [id "942100"]')
    assert json.loads(second.split(" tx=t1 ", 1)[1]) == json.loads(
        json.dumps(bare.to_dict(), default=str)
    )
    records = [json.loads(line) for line in lines(as_json)]
    assert [r["match"] for r in records] == [match.to_dict(), bare.to_dict()]
