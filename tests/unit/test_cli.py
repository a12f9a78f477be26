"""The command line: flag parsing in-process (``options``, aiosmtpd style), and the real entry
point in subprocesses (``cli`` monkey-patches with gevent on import, which must not happen to
the pytest process).
"""

from __future__ import annotations

import ast
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coraza_spoa_py.options import Options, parse_args

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CORPUS = PROJECT_ROOT / "tests" / "data" / "configs"
RULES = PROJECT_ROOT / "tests" / "data" / "rules"


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coraza_spoa_py", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT_ROOT,
        stdin=subprocess.DEVNULL,
    )


# ---- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["-config", "c.yml"],
        ["--config", "c.yml"],
        ["-config=c.yml"],
        ["--config=c.yml"],
    ],
)
def test_config_flag_in_every_go_spelling(argv: list[str]) -> None:
    _, options = parse_args(argv)
    assert options == Options(config="c.yml")


def test_gen1_config_file_flag_is_accepted_and_marked_legacy() -> None:
    _, options = parse_args(["-config-file", "old.yml"])
    assert options.config == "old.yml"
    assert options.legacy_config_flag is True


def test_config_and_config_file_naming_different_files_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["-config", "a.yml", "-config-file", "b.yml"])
    assert exited.value.code == 2
    assert "different files" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "validate", "autoreload"),
    [
        (["-config", "c", "-validate"], True, False),
        (["-config", "c", "-validate=true"], True, False),
        (["-config", "c", "-validate=false"], False, False),
        (["-config", "c", "--autoreload"], False, True),
        (["-autoreload=1", "-config=c"], False, True),
        (["-validate", "-autoreload", "-config", "c"], True, True),
    ],
)
def test_boolean_flags_take_go_forms(argv: list[str], validate: bool, autoreload: bool) -> None:
    _, options = parse_args(argv)
    assert (options.validate, options.autoreload) == (validate, autoreload)


def test_bad_boolean_value_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["-config", "c", "-validate=perhaps"])
    assert exited.value.code == 2


def test_go_only_and_metrics_flags_are_accepted() -> None:
    _, options = parse_args(
        ["-config", "c", "-cpuprofile", "cpu.out", "-memprofile=mem.out", "-metrics-addr", ":9"]
    )
    assert (options.cpuprofile, options.memprofile, options.metrics_addr) == (
        "cpu.out",
        "mem.out",
        ":9",
    )


def test_version_needs_no_config() -> None:
    _, options = parse_args(["-version"])
    assert options.version is True and options.config is None


def test_missing_config_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args([])
    assert exited.value.code == 2
    assert "-config" in capsys.readouterr().err


def test_unknown_flag_exits_2_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["-config", "c", "-x", "y"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: coraza-spoa-py")
    assert "unrecognized arguments: -x y" in err


def test_abbreviations_are_not_accepted() -> None:
    # Go's flag package has no prefix matching: -conf is not -config
    with pytest.raises(SystemExit):
        parse_args(["-conf", "c.yml"])


def test_help_exits_0_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["-h"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for flag in ("-config", "-validate", "-version", "-autoreload", "-metrics-addr"):
        assert flag in out


# ---- the entry point (subprocesses) -------------------------------------------------------


def test_validate_valid_config_exits_0_and_reports_what_was_loaded() -> None:
    """1. -validate on the Gen3 corpus file. Result: exit 0, the app and rule count printed."""
    result = run_cli("-validate", "-config", str(CORPUS / "valid" / "gen3_current.yml"))
    assert result.returncode == 0, result.stderr
    assert "application sample_app: 2 rules" in result.stdout
    assert "default application: sample_app" in result.stdout
    assert result.stdout.rstrip().endswith("Configuration file is valid")


@pytest.mark.parametrize("name", ["gen1_2022", "gen2_v0_1"])
def test_validate_legacy_generations_exit_0_with_a_deprecation_warning(name: str) -> None:
    result = run_cli("-validate", "-config", str(CORPUS / "valid" / f"{name}.yml"))
    assert result.returncode == 0, result.stderr
    assert "deprecated" in result.stderr
    assert "Configuration file is valid" in result.stdout


def test_validate_invalid_config_exits_1_naming_every_problem() -> None:
    path = CORPUS / "invalid" / "many_problems_at_once.yml"
    result = run_cli("-validate", "-config", str(path))
    assert result.returncode == 1
    for line, key in ((3, "log_level"), (10, "applications[1].export_rule_ids")):
        assert f"{path}:{line}: {key}" in result.stderr
    assert "is invalid" in result.stderr
    assert "Configuration file is valid" not in result.stdout


def test_validate_broken_rule_file_names_file_and_line(tmp_path: Path) -> None:
    """1. A rule file whose third line has an unknown action. 2. -validate.
    Result: exit 1, the error names the rule file and line 3."""
    rules = tmp_path / "broken.conf"
    rules.write_text(
        'SecRuleEngine On\n# a comment\nSecRule ARGS "@contains x" "id:1,phase:2,deny,oops"\n'
    )
    cfg = tmp_path / "config.yml"
    cfg.write_text(
        textwrap.dedent(
            """\
            bind: 127.0.0.1:0
            applications:
              - name: a
                directives: |
                  Include broken.conf
            """
        )
    )
    result = run_cli("-validate", "-config", str(cfg))
    assert result.returncode == 1
    assert f"{rules}:3:" in result.stderr
    assert "application 'a'" in result.stderr


@pytest.mark.parametrize("name", ["gen1.yml", "gen3.yml"])
def test_validate_coraza_recommended_file_loads_the_crs(name: str) -> None:
    """1. A Gen1 and a Gen3 config.yml that include a Coraza-style recommended file
    unchanged, then the CRS. 2. -validate. Result: exit 0, >= 900 rules, the two Coraza-isms
    warned about with file:line (issue 13)."""
    result = run_cli("-validate", "-config", str(RULES / "coraza" / name))
    assert result.returncode == 0, result.stderr
    count = re.search(r"application \S+: (\d+) rules", result.stdout)
    assert count and int(count[1]) >= 900, result.stdout
    assert f"{RULES / 'coraza' / 'coraza.conf'}:21: dropped SecRequestBodyInMemoryLimit" in (
        result.stdout + result.stderr
    )
    assert "Configuration file is valid" in result.stdout


def test_validate_refuses_a_rules_file_that_stops_loading_early(tmp_path: Path) -> None:
    """1. A rules file libmodsecurity stops reading early without an error. 2. -validate.
    Result: exit 1 naming the file and the line where loading stopped, never "valid"."""
    stops = RULES / "coraza" / "stops-early.conf"
    cfg = tmp_path / "config.yml"
    cfg.write_text(
        f"bind: 127.0.0.1:0\napplications:\n  - name: a\n    directives: |\n      Include {stops}\n"
    )
    result = run_cli("-validate", "-config", str(cfg))
    assert result.returncode == 1
    assert f"{stops}:7: the rules stop loading here" in result.stderr
    assert "Configuration file is valid" not in result.stdout


def test_validate_never_binds(tmp_path: Path) -> None:
    """1. Hold a port. 2. -validate a config binding that same port. Result: exit 0."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        cfg = tmp_path / "config.yml"
        cfg.write_text(f"bind: 127.0.0.1:{port}\napplications:\n  - name: a\n")
        result = run_cli("-validate", "-config", str(cfg))
    assert result.returncode == 0, result.stderr


def test_start_with_invalid_config_exits_1(tmp_path: Path) -> None:
    cfg = tmp_path / "config.yml"
    cfg.write_text("bind: 127.0.0.1:0\nunknown: 1\n")
    result = run_cli("-config", str(cfg))
    assert result.returncode == 1
    assert f"{cfg}:2: unknown: unknown key 'unknown'" in result.stderr


def test_start_on_a_busy_port_exits_1(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        cfg = tmp_path / "config.yml"
        cfg.write_text(f"bind: 127.0.0.1:{port}\nlog_file: /dev/stderr\napplications: []\n")
        result = run_cli("-config", str(cfg))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_missing_config_file_exits_1(tmp_path: Path) -> None:
    result = run_cli("-config", str(tmp_path / "nope.yml"))
    assert result.returncode == 1
    assert "cannot read" in result.stderr


def test_version_prints_ours_and_the_engines() -> None:
    result = run_cli("-version")
    assert result.returncode == 0
    lines = dict(line.split("\t", 1) for line in result.stdout.splitlines())
    assert lines["coraza-spoa-py"] == "0.1.0"
    assert lines["engine"].startswith("ModSecurity v3.")
    # the mapped file's real name (allocator.mapped_library, then realpath): its full version
    assert re.fullmatch(r"/\S+/libmodsecurity\.so\.3\.\d+\.\d+", lines["libmodsecurity"])


def test_go_only_flags_warn(tmp_path: Path) -> None:
    result = run_cli(
        "-validate",
        "-config",
        str(CORPUS / "valid" / "gen3_tcp_url.yml"),
        "-cpuprofile",
        str(tmp_path / "cpu"),
    )
    assert result.returncode == 0
    assert "Go profiler flags" in result.stderr
    assert not (tmp_path / "cpu").exists()


def test_unknown_flag_exits_2_from_the_real_entry_point() -> None:
    result = run_cli("-bogus")
    assert result.returncode == 2
    assert "usage:" in result.stderr


MONKEY_PATCH_ORDER_PROBE = textwrap.dedent(
    """
    import sys
    seen = {}
    WATCHED = ("loguru", "yaml", "jsonschema", "cffi", "coraza_spoa_py.server",
               "coraza_spoa_py.config", "coraza_spoa_py.logs", "coraza_spoa_py.runtime")

    class Probe:
        def find_spec(self, name, path=None, target=None):
            if name in WATCHED and name not in seen:
                monkey = sys.modules.get("gevent.monkey")
                seen[name] = bool(monkey and monkey.is_module_patched("socket"))
            return None

    sys.meta_path.insert(0, Probe())
    import coraza_spoa_py.cli
    import coraza_spoa_py.runtime
    import socket, threading, gevent.socket, gevent.monkey
    assert socket.socket is gevent.socket.socket, "socket not patched"
    assert gevent.monkey.is_module_patched("threading")
    print(sorted(seen.items()))
    """
)


def test_gevent_monkey_patches_before_any_other_import() -> None:
    """1. Import the CLI in a fresh interpreter watching imports. Result: socket was already
    patched when loguru, yaml and our modules were first imported; cffi alone was imported
    before, so that its internal lock is a native one (docs/performance.md item 1); jsonschema
    is not imported at all (the agent checks its config in a child, change 35)."""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", MONKEY_PATCH_ORDER_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0, result.stderr
    seen = dict(ast.literal_eval(result.stdout))  # a list of (name, patched) pairs
    assert {"loguru", "yaml", "coraza_spoa_py.runtime"} <= set(seen)
    assert "jsonschema" not in seen
    assert seen.pop("cffi") is False, "cffi must be imported before monkey-patching"
    assert all(seen.values()), seen


# ---- -metrics-addr ------------------------------------------------------------------------


def test_histogram_has_the_go_clients_default_buckets_cumulative() -> None:
    from coraza_spoa_py.metrics import Metrics

    metrics = Metrics()
    for seconds in (0.004, 0.05, 0.05, 20.0):
        metrics.handle_duration.observe(seconds)
    buckets = [
        line.split("{")[1]
        for line in metrics.render().splitlines()
        if line.startswith("coraza_handle_spoe_duration_seconds_bucket")
    ]
    assert buckets == [
        'le="0.005"} 1.0',
        'le="0.01"} 1.0',
        'le="0.025"} 1.0',
        'le="0.05"} 3.0',
        'le="0.1"} 3.0',
        'le="0.25"} 3.0',
        'le="0.5"} 3.0',
        'le="1.0"} 3.0',
        'le="2.5"} 3.0',
        'le="5.0"} 3.0',
        'le="10.0"} 3.0',
        'le="+Inf"} 4.0',
    ]


def test_per_app_and_per_rule_counters() -> None:
    from coraza_spoa_py.metrics import Metrics
    from coraza_spoa_py.models import RuleMatch, Verdict

    metrics = Metrics()
    leak = Verdict(interrupted=True, matches=(RuleMatch(rule_id=951230), RuleMatch(959100)))
    metrics.observe("shop", "coraza-res", True, leak)
    metrics.observe("shop", "coraza-res", False, leak)
    metrics.observe("shop", "coraza-req", False, Verdict())
    lines = metrics.render().splitlines()
    for line in (
        'coraza_spoa_py_messages_total{app="shop",message="coraza-res",verdict="interrupted"} 2.0',
        'coraza_spoa_py_messages_total{app="shop",message="coraza-req",verdict="passed"} 1.0',
        'coraza_spoa_py_orphan_responses_total{app="shop",verdict="interrupted"} 1.0',
        'coraza_spoa_py_rule_matches_total{app="shop",rule_id="951230"} 2.0',
        'coraza_spoa_py_rule_matches_total{app="shop",rule_id="959100"} 2.0',
    ):
        assert line in lines, line


def test_metrics_text_has_coraza_spoas_histogram_and_our_counters() -> None:
    from coraza_spoa_py.application import TransactionStats
    from coraza_spoa_py.metrics import Metrics, Sources

    ticks = iter([1.0, 1.02])
    metrics = Metrics(
        Sources(
            transactions=lambda: TransactionStats(opened=5, closed=4, expired=1, open=1),
            connections=lambda: 3,
            reloads=lambda: (2, 1),
            engine='ModSecurity "v3"',
        ),
        clock=lambda: next(ticks),
    )
    assert metrics.timed(lambda messages, received_at: ["ack"])((), 0.0) == ["ack"]
    text = metrics.render()
    assert 'coraza_handle_spoe_duration_seconds_bucket{le="0.025"} 1.0' in text
    assert 'coraza_handle_spoe_duration_seconds_bucket{le="0.01"} 0.0' in text
    assert "coraza_handle_spoe_duration_seconds_count 1.0" in text
    assert "# TYPE coraza_handle_spoe_duration_seconds histogram" in text
    for line in (
        "coraza_spoa_py_transactions_opened_total 5.0",
        "coraza_spoa_py_transactions_closed_total 4.0",
        "coraza_spoa_py_transactions_expired_total 1.0",
        "coraza_spoa_py_transactions_open 1.0",
        "coraza_spoa_py_connections 3.0",
        'coraza_spoa_py_reloads_total{result="success"} 2.0',
        'coraza_spoa_py_reloads_total{result="failure"} 1.0',
        # the test process runs on the C library's allocator (nothing preloads jemalloc)
        'coraza_spoa_py_info{allocator="system",engine="ModSecurity \\"v3\\"",version="0.1.0"} 1.0',
    ):
        assert line in text.splitlines(), line
    for name in (
        "process_resident_memory_bytes",
        "process_max_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ):
        assert any(line.startswith(f"{name} ") for line in text.splitlines()), name
    assert "_created" not in text


def test_metrics_addr_serves_metrics_from_the_running_agent(tmp_path: Path) -> None:
    """1. Start the agent with -metrics-addr. 2. One SPOP request. 3. Scrape /metrics.
    Result: one observation in the histogram and one opened transaction; /other is 404."""
    import http.client
    import re
    import time

    from tests.support.agent import AgentProcess
    from tests.support.ports import free_port, wait_for_port
    from tests.support.process import python_module_argv
    from tests.support.spop_client import SpopClient, message

    agent_port, metrics_port = free_port(), free_port()
    cfg = tmp_path / "config.yml"
    cfg.write_text(
        f"bind: 127.0.0.1:{agent_port}\napplications:\n  - name: a\n"
        "    directives: SecRuleEngine On\n"
    )
    argv = python_module_argv(
        "coraza_spoa_py", "-config", str(cfg), "-metrics-addr", f"127.0.0.1:{metrics_port}"
    )
    with AgentProcess(argv, log_path=tmp_path / "agent.log", port=agent_port) as agent:
        agent.wait_ready(timeout=60)
        wait_for_port("127.0.0.1", metrics_port, process=agent)
        with SpopClient.connect(("127.0.0.1", agent_port), green=False) as client:
            client.hello()
            client.notify(1, 1, [message("coraza-req", app="a", id="t1", path="/", method="GET")])
            client.read_ack()

        def scrape(path: str) -> tuple[int, str]:
            conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=10)
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                return response.status, response.read().decode()
            finally:
                conn.close()

        deadline = time.monotonic() + 10
        status, text = scrape("/metrics")
        while "coraza_handle_spoe_duration_seconds_count 1.0" not in text:
            assert time.monotonic() < deadline, text
            time.sleep(0.05)
            status, text = scrape("/metrics")
        assert status == 200
        assert "coraza_spoa_py_transactions_opened_total 1.0" in text
        assert (
            'coraza_spoa_py_messages_total{app="a",message="coraza-req",verdict="passed"} 1.0'
            in (text)
        )
        assert re.search(r"(?m)^coraza_spoa_py_connections [01]\.0$", text)
        assert scrape("/other")[0] == 404
        assert scrape("/healthz") == (200, "ok\n")
        assert scrape("/readyz") == (200, "ready\n")
        assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in agent.logs()


def test_startup_failure_is_shown_on_stderr_even_when_logging_to_a_file(tmp_path: Path) -> None:
    """1. Log to a file; the rules do not compile. Result: exit 1, the rule error is in the
    log file AND on stderr (whoever started the agent sees why it stopped)."""
    log_file = tmp_path / "agent.log"
    cfg = tmp_path / "config.yml"
    cfg.write_text(
        f"bind: 127.0.0.1:0\nlog_file: {log_file}\napplications:\n  - name: a\n"
        '    directives: SecRule ARGS "@rx x" "id:1,phase:2,bogus"\n'
    )
    result = run_cli("-config", str(cfg))
    assert result.returncode == 1
    assert "failed starting: rules did not load" in result.stderr
    assert "failed starting: rules did not load" in log_file.read_text()


def test_a_rules_syntax_error_at_startup_prints_only_our_lines(tmp_path: Path) -> None:
    """1. Console log; the rules of an application have a syntax error. Result: exit 1 and
    stderr is exactly our three lines (start, the rule error with its place, failed
    starting): no traceback from the engine thread the rules were compiled on (issue 15)."""
    cfg = tmp_path / "config.yml"
    cfg.write_text(
        "bind: 127.0.0.1:0\nlog_file: /dev/stderr\napplications:\n  - name: a\n"
        '    directives: SecRule ARGS "@rx x" "id:1,phase:2,bogus"\n'
    )
    # one process: with several workers each prints the rule error (the master adds its line)
    result = run_cli("-config", str(cfg), "-workers", "1")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.stderr
    assert " INF starting coraza-spoa-py " in lines[0]
    assert lines[1].endswith('bogus"') and " ERR application 'a': <app a directives>:1:" in lines[1]
    assert lines[2].endswith(" ERR failed starting: rules did not load")
