"""The C spoa-modsecurity agent's command line (``-f -p -n -d -m -c -t``): parsing, the error
when mixed with ``-config``, the ``Config`` it builds (``modsec_config``), ``-validate`` with it,
and the metrics of messages answered with an error because of their name or app."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from coraza_spoa_py import modsec_config
from coraza_spoa_py.config import ConfigError
from coraza_spoa_py.options import ModSecOptions, parse_args

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODSEC_CONF = PROJECT_ROOT / "tests" / "e2e" / "modsec" / "modsecurity.conf"


def test_the_c_agents_flags_are_parsed():
    argv = ["-f", "a.conf", "-f", "b.conf", "-p", "9000", "-n", "4", "-d", "-m", "16384"]
    argv += ["-c", "pipelining", "-c", "async", "-t", "10ms"]
    _, options = parse_args(argv)
    assert options.config is None
    assert options.modsec == ModSecOptions(
        files=("a.conf", "b.conf"),
        port=9000,
        workers=4,
        debug=True,
        max_frame_size=16384,
        capabilities=("pipelining", "async"),
        delay="10ms",
    )


def test_only_f_gives_the_c_agents_defaults():
    _, options = parse_args(["-f", "/etc/modsecurity/modsecurity.conf"])
    assert options.modsec == ModSecOptions(files=("/etc/modsecurity/modsecurity.conf",))
    assert options.modsec.port == 12345


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-config", "c.yml", "-f", "m.conf"], "cannot be mixed with -config"),
        (["-config=c.yml", "-p", "1"], "cannot be mixed with -config"),
        (["-p", "12345"], "-f is required"),
        (["-f", "m.conf", "-p", "70000"], "above 65535"),
        (["-f", "m.conf", "-n", "0"], "at least 1"),
        (["-f", "m.conf", "-c", "turbo"], "invalid choice"),
    ],
)
def test_bad_or_mixed_flags_exit_2_saying_why(argv, message, capsys):
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_the_config_is_one_application_including_the_files_in_order(tmp_path):
    first, second = tmp_path / "modsecurity.conf", tmp_path / "crs.conf"
    first.write_text("SecRuleEngine On\n")
    second.write_text("")
    options = ModSecOptions(files=(str(first), str(second)), port=9001, workers=3, debug=True)
    loaded = modsec_config.load(options)
    config = loaded.config
    assert (config.bind.kind, config.bind.host, config.bind.port) == ("tcp", "", 9001)
    (app,) = config.applications
    assert config.default_application == app.name == "modsecurity"
    assert app.directives == f'Include "{first}"\nInclude "{second}"\n'
    assert not app.response_check
    assert config.engine_threads == 3 and config.log.level == "debug"
    # one process, like the C agent: -n is every engine thread it runs
    assert config.workers == 1
    assert config.log.file == "/dev/stderr" and loaded.notices == ()


def test_ignored_flags_are_notices():
    options = ModSecOptions(files=(str(MODSEC_CONF),), capabilities=("async",), delay="5ms")
    notices = modsec_config.load(options).notices
    assert any("-c async" in n for n in notices) and any("-t 5ms" in n for n in notices)


def test_a_missing_file_is_a_config_error_naming_it(tmp_path):
    missing = tmp_path / "nope.conf"
    with pytest.raises(ConfigError, match="nope.conf: cannot read"):
        modsec_config.load(ModSecOptions(files=(str(MODSEC_CONF), str(missing))))


def test_validate_compiles_the_f_files_with_the_crs():
    result = subprocess.run(
        [sys.executable, "-m", "coraza_spoa_py", "-validate", "-f", str(MODSEC_CONF)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PROJECT_ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert "application modsecurity:" in result.stdout
    assert "Configuration file is valid" in result.stdout


def test_metrics_count_unknown_messages_and_apps_by_name():
    from coraza_spoa_py.application import TransactionStats
    from coraza_spoa_py.metrics import Metrics, Sources

    metrics = Metrics(
        Sources(
            transactions=TransactionStats,
            connections=lambda: 0,
            reloads=lambda: (0, 0),
            unknown_messages=lambda: {"check-requests": 3},
            unknown_applications=lambda: {'a"b': 1},
        )
    )
    lines = metrics.render().splitlines()
    assert 'coraza_spoa_py_unknown_messages_total{message="check-requests"} 3.0' in lines
    assert 'coraza_spoa_py_unknown_applications_total{app="a\\"b"} 1.0' in lines
