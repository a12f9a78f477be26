"""config: bind forms, generation detection, defaults, legacy mappings, the schema and its doc."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from coraza_spoa_py import config, schema_doc
from coraza_spoa_py.config_shapes import GEN1, GEN2, GEN3, detect_generation, format_path
from coraza_spoa_py.settings import BindAddress, Config

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9000", BindAddress("tcp", host="127.0.0.1", port=9000)),
        ("0.0.0.0:9000", BindAddress("tcp", host="0.0.0.0", port=9000)),
        (":9000", BindAddress("tcp", host="", port=9000)),
        ("[::]:9000", BindAddress("tcp", host="::", port=9000)),
        ("[::1]:0", BindAddress("tcp", host="::1", port=0)),
        ("localhost:9000", BindAddress("tcp", host="localhost", port=9000)),
        ("coraza-spoa:9000", BindAddress("tcp", host="coraza-spoa", port=9000)),
        ("tcp://127.0.0.1:9000", BindAddress("tcp", host="127.0.0.1", port=9000)),
        ("tcp://[::1]:9000/", BindAddress("tcp", host="::1", port=9000)),
        ("unix:///run/x.sock", BindAddress("unix", path="/run/x.sock")),
        ("unix:/run/x.sock", BindAddress("unix", path="/run/x.sock")),
    ],
)
def test_bind_forms(text: str, expected: BindAddress) -> None:
    assert config.parse_bind(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("127.0.0.1", "no port"),
        ("127.0.0.1:", "0 to 65535"),
        ("127.0.0.1:65536", "0 to 65535"),
        ("host:http", "0 to 65535"),
        ("::1:9000", "brackets"),
        ("[::1:9000", "brackets"),
        ("udp://1.2.3.4:9000", "unsupported scheme"),
        ("unix://", "empty"),
    ],
)
def test_bad_bind_forms(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        config.parse_bind(text)


def test_bind_address_round_trips_through_str() -> None:
    for text in ("127.0.0.1:9000", "[::1]:9000", "unix:///run/x.sock"):
        assert str(config.parse_bind(text)) == text


@pytest.mark.parametrize(
    ("data", "generation"),
    [
        ({"log": {}, "spoa": {}}, GEN1),
        ({"spoa": {}}, GEN1),
        ({"bind": "x", "applications": {"a": {}}}, GEN2),
        ({"bind": "x", "applications": []}, GEN3),
        ({"bind": "x"}, GEN3),
        # a Gen1 section next to a list is a Gen3 file with an unknown key, not Gen1
        ({"spoa": {}, "applications": []}, GEN3),
    ],
)
def test_generation_is_detected_by_shape(data: dict[str, object], generation: int) -> None:
    assert detect_generation(data) == generation


def test_format_path() -> None:
    assert format_path(("applications", 0, "name")) == "applications[0].name"
    assert format_path(("applications", "app1", "log_level")) == "applications.app1.log_level"
    assert format_path(()) == ""


def test_defaults_of_a_minimal_gen3_file() -> None:
    loaded = config.parse("bind: 127.0.0.1:9000\napplications:\n  - name: a\n")
    cfg = loaded.config
    defaults = Config(bind=cfg.bind)
    assert cfg.log.level == "info" and cfg.log.file == "/dev/stdout"
    assert cfg.log.format == "console"
    # the CPUs shared among the worker processes (docs/operations.md "Workers")
    assert cfg.engine_threads is None
    assert cfg.engine_threads_for(1) == (os.cpu_count() or 1)
    assert cfg.engine_threads_for(cfg.workers) == 1
    assert replace(cfg, engine_threads=3).engine_threads_for(cfg.workers) == 3
    # issue 14: one worker process per core (docs/operations.md "Workers")
    assert cfg.workers == (os.cpu_count() or 1)
    assert (cfg.max_frame_size, cfg.processing_budget_ms) == (
        defaults.max_frame_size,
        defaults.processing_budget_ms,
    )
    app = cfg.applications[0]
    assert (app.response_check, app.transaction_ttl_ms, app.log) == (False, 60_000, None)
    assert cfg.default_application is None
    assert app.orphan_responses == "inspect"


def test_orphan_responses_reject_and_a_bad_value() -> None:
    text = "bind: :0\napplications:\n  - name: a\n    orphan_responses: {}\n"
    assert config.parse(text.format("reject")).config.applications[0].orphan_responses == ("reject")
    with pytest.raises(config.ConfigError, match="orphan_responses"):
        config.parse(text.format("ignore"))


def test_schema_defaults_agree_with_settings() -> None:
    """The documented defaults (schema) and the dataclass defaults must be the same values."""
    gen3 = config.schema()["$defs"]["gen3"]["properties"]
    defaults = Config(bind=BindAddress("tcp"))
    for key in (
        "max_frame_size",
        "max_connections",
        "max_connections_per_source",
        "processing_budget_ms",
    ):
        assert gen3[key]["default"] == getattr(defaults, key), key
    for key in ("idle_timeout_s", "graceful_timeout_s", "hello_timeout_s", "frame_timeout_s"):
        assert float(gen3[key]["default"]) == getattr(defaults, key), key
    assert gen3["crs_rules_dir"]["default"] == defaults.rule_paths.crs_rules_dir
    assert gen3["crs_setup_file"]["default"] == defaults.rule_paths.crs_setup_file
    app = config.schema()["$defs"]["application"]["properties"]
    assert app["transaction_ttl_ms"]["default"] == 60_000
    assert app["transaction_active_limit"]["default"] == 32_768


def test_schema_is_a_valid_json_schema_with_a_description_on_every_key() -> None:
    root = config.schema()
    jsonschema.validators.validator_for(root).check_schema(root)

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for key, spec in node.get("properties", {}).items():
                assert spec.get("description"), f"{where}.{key} has no description"
                walk(spec, f"{where}.{key}")
            for name, spec in node.get("$defs", {}).items():
                assert node is root
                assert spec.get("additionalProperties") is not True
                walk(spec, name)

    walk(root, "")


def test_app_log_keys_inherit_the_missing_ones_from_the_top_level() -> None:
    text = (
        "bind: :0\nlog_file: /var/log/x.log\nlog_format: json\n"
        "applications:\n  - name: a\n    log_level: debug\n  - name: b\n"
    )
    cfg = config.parse(text).config
    app_a, app_b = cfg.applications
    assert app_a.log is not None
    assert (app_a.log.level, app_a.log.file, app_a.log.format) == (
        "debug",
        "/var/log/x.log",
        "json",
    )
    assert app_b.log is None  # no log_* key of its own: the agent log


@pytest.mark.parametrize(
    ("word", "stored"),
    [("warning", "warn"), ("-1", "trace"), ("3", "error"), ("7", "disabled"), ("panic", "panic")],
)
def test_level_words_are_normalised(word: str, stored: str) -> None:
    cfg = config.parse(f"bind: :0\nlog_level: '{word}'\n").config
    assert cfg.log.level == stored


def test_gen1_log_dir_maps_to_the_two_file_log(tmp_path: Path) -> None:
    text = f"log:\n  level: debug\n  dir: {tmp_path}\nspoa:\n  bind: :0\n"
    loaded = config.parse(text)
    assert loaded.generation == GEN1
    assert loaded.config.log.dir == str(tmp_path)
    assert loaded.config.log.level == "debug"
    assert loaded.config.default_application == "default"
    assert loaded.config.applications[0].response_check is True


def test_gen1_defaults_to_warn_like_coraza_spoa_2022() -> None:
    loaded = config.parse("spoa:\n  bind: :0\n")
    assert loaded.config.log.level == "warn"


def test_gen2_unknown_zap_level_means_info_with_a_notice() -> None:
    text = "bind: :0\napplications:\n  a:\n    log_level: chatty\n    log_file: /dev/stdout\n"
    loaded = config.parse(text)
    log = loaded.config.applications[0].log
    assert log is not None and log.level == "info" and log.format == "json"
    assert any("chatty" in notice for notice in loaded.notices)


def test_deprecation_notice_names_the_generation_and_the_migration() -> None:
    loaded = config.parse("bind: :0\napplications:\n  a:\n    no_response_check: true\n")
    assert loaded.generation == GEN2
    (notice,) = loaded.notices  # exactly one deprecation line
    assert "Gen2" in notice and "deprecated" in notice
    assert "no_response_check: X → response_check: (not X)" in notice


def test_gen3_hint_for_carried_over_keys() -> None:
    with pytest.raises(config.ConfigError) as caught:
        config.parse("bind: :0\napplications:\n  - name: a\n    rules: []\n")
    assert "use `directives`" in caught.value.problems[0].message


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(str(tmp_path / "missing.yml"))
    binary = tmp_path / "binary.yml"
    binary.write_bytes(b"\xff\xfe\x00bind")
    with pytest.raises(config.ConfigError, match="not UTF-8"):
        config.load(str(binary))


def test_only_one_yaml_document() -> None:
    with pytest.raises(config.ConfigError, match="YAML"):
        config.parse("bind: :0\n---\nbind: :1\n")


def test_configuration_md_is_generated_from_the_schema() -> None:
    """docs/configuration.md must be what `make docs` writes (run it after editing the schema)."""
    committed = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    assert committed == schema_doc.render(), "docs/configuration.md is stale: run `make docs`"
    for key in config.schema()["$defs"]["gen3"]["properties"]:
        assert f"`{key}`" in committed


def test_schema_doc_module_prints_the_page() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "coraza_spoa_py.schema_doc"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode == 0
    assert result.stdout == schema_doc.render()


def test_config_example_comments_every_key() -> None:
    """Every key used in config.example.yml has a comment line right above it or a trailing
    comment, and every top-level Gen3 key upstream has is present."""
    lines = (PROJECT_ROOT / "config.example.yml").read_text().splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or ":" not in stripped:
            continue
        if line.startswith(" " * 6):  # inside the directives block scalar
            continue
        previous = lines[index - 1].strip() if index else ""
        assert previous.startswith("#") or " #" in line, f"line {index + 1} has no comment"
    text = "\n".join(lines)
    for key in ("bind:", "log_level:", "log_file:", "log_format:", "default_application:"):
        assert key in text


def test_empty_default_application_and_empty_applications_mean_none() -> None:
    """coraza-spoa: default_application "" is no fallback; `applications:` left empty is a
    start with a warning, not an error."""
    cfg = config.parse('bind: :0\ndefault_application: ""\napplications:\n').config
    assert cfg.default_application is None
    assert cfg.applications == ()


def test_absurd_nesting_is_a_config_error() -> None:
    with pytest.raises(config.ConfigError, match="nested too deeply"):
        config.parse("a: " + "[" * 5000 + "]" * 5000)
