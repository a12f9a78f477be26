"""Config defaults are stated once, in settings.py: the schema's ``default`` values (which
docs/configuration.md is generated from) are what a config that leaves the key out really gets,
in every generation, and what the settings dataclasses default to (issue 16: one source of
defaults).

Every ``default`` anywhere in the schema must have a reader in the tables below, so a default
can never be documented as one value and applied as another.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coraza_spoa_py import config
from coraza_spoa_py.settings import AppConfig, Config

SCHEMA = json.loads(
    (Path(config.__file__).parent / "config.schema.json").read_text(encoding="utf-8")
)
MINIMAL = "bind: 127.0.0.1:9000\napplications:\n  - name: app\n"

# schema key -> how to read it from a Config (top level) or an AppConfig (per application)
TOP_LEVEL: dict[str, Callable[[Config], Any]] = {
    "log_level": lambda c: c.log.level,
    "log_file": lambda c: c.log.file,
    "log_format": lambda c: c.log.format,
    "crs_rules_dir": lambda c: c.rule_paths.crs_rules_dir,
    "crs_setup_file": lambda c: c.rule_paths.crs_setup_file,
    "max_frame_size": lambda c: c.max_frame_size,
    "max_connections": lambda c: c.max_connections,
    "max_connections_per_source": lambda c: c.max_connections_per_source,
    "idle_timeout_s": lambda c: c.idle_timeout_s,
    "hello_timeout_s": lambda c: c.hello_timeout_s,
    "frame_timeout_s": lambda c: c.frame_timeout_s,
    "processing_budget_ms": lambda c: c.processing_budget_ms,
    "graceful_timeout_s": lambda c: c.graceful_timeout_s,
}
PER_APPLICATION: dict[str, Callable[[AppConfig], Any]] = {
    "directives": lambda a: a.directives,
    "response_check": lambda a: a.response_check,
    "transaction_ttl_ms": lambda a: a.transaction_ttl_ms,
    "transaction_active_limit": lambda a: a.transaction_active_limit,
    "orphan_responses": lambda a: a.orphan_responses,
    "export_rule_ids": lambda a: a.export_rule_ids,
}
# an application's log keys default to the top level's (AppConfig.log None), checked there
APP_INHERITED = {"log_level", "log_file", "log_format"}


def schema_defaults(definition: str) -> dict[str, Any]:
    properties = SCHEMA["$defs"][definition]["properties"]
    return {key: spec["default"] for key, spec in properties.items() if "default" in spec}


# Gen2 application keys with a schema default -> the Gen3 field they become, and how
GEN2_APPLICATION: dict[str, Callable[[Any], Any]] = {
    "no_response_check": lambda default: ("response_check", not default),
}
# documented as computed ("Default: the number of CPUs ..."), so no schema ``default``
COMPUTED = {"engine_threads", "workers", "default_application"}


def _defaults_anywhere(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The path of every ``default`` in the schema, nested objects included."""
    if isinstance(node, dict):
        if "default" in node:
            yield path
        for key, value in node.items():
            if key != "default":
                yield from _defaults_anywhere(value, (*path, key))
    elif isinstance(node, list):
        for value in node:
            yield from _defaults_anywhere(value, path)


def test_every_documented_default_has_a_reader() -> None:
    assert set(schema_defaults("gen3")) == set(TOP_LEVEL) | {"applications"}
    assert set(schema_defaults("application")) == set(PER_APPLICATION) | APP_INHERITED
    assert set(schema_defaults("gen2_application")) == set(GEN2_APPLICATION)
    expected = {("$defs", "gen3", "properties", key) for key in schema_defaults("gen3")}
    for definition in ("application", "gen2_application"):
        keys = schema_defaults(definition)
        expected |= {("$defs", definition, "properties", key) for key in keys}
    assert set(_defaults_anywhere(SCHEMA)) == expected
    assert not COMPUTED & set(schema_defaults("gen3"))


@pytest.mark.parametrize("key", sorted(TOP_LEVEL))
def test_a_top_level_key_left_out_gets_the_schema_default(key: str) -> None:
    loaded = config.parse(MINIMAL).config
    expected = schema_defaults("gen3")[key]
    assert TOP_LEVEL[key](loaded) == expected
    # the dataclass default says the same (what code building a Config directly gets)
    assert TOP_LEVEL[key](Config(bind=loaded.bind)) == expected


def test_a_config_without_applications_gets_none() -> None:
    loaded = config.parse("bind: 127.0.0.1:9000\n").config
    assert list(loaded.applications) == schema_defaults("gen3")["applications"] == []
    assert Config(bind=loaded.bind).applications == ()


@pytest.mark.parametrize("key", sorted(PER_APPLICATION))
def test_an_application_key_left_out_gets_the_schema_default(key: str) -> None:
    (application,) = config.parse(MINIMAL).config.applications
    expected = schema_defaults("application")[key]
    assert PER_APPLICATION[key](application) == expected
    assert PER_APPLICATION[key](AppConfig(name="x")) == expected


def test_application_log_keys_default_to_the_top_level_ones() -> None:
    (application,) = config.parse(MINIMAL).config.applications
    assert application.log is None
    top = schema_defaults("gen3")
    assert {key: top[key] for key in APP_INHERITED} == {
        key: schema_defaults("application")[key] for key in APP_INHERITED
    }


def test_computed_defaults_are_the_dataclass_ones() -> None:
    loaded = config.parse(MINIMAL).config
    assert loaded.engine_threads is None  # engine_threads_for(): the CPUs among the workers
    assert loaded.workers == Config(bind=loaded.bind).workers == (os.cpu_count() or 1)
    assert loaded.default_application is None


LEGACY = {
    "gen1": "spoa:\n  bind: 127.0.0.1:9000\n",
    "gen2": "bind: 127.0.0.1:9000\napplications:\n  app: {}\n",
}


@pytest.mark.parametrize("generation", sorted(LEGACY))
@pytest.mark.parametrize("key", ["transaction_ttl_ms", "transaction_active_limit"])
def test_a_legacy_config_gets_the_same_defaults(generation: str, key: str) -> None:
    (application,) = config.parse(LEGACY[generation]).config.applications
    assert PER_APPLICATION[key](application) == schema_defaults("application")[key]


def test_a_gen2_application_without_no_response_check_checks_responses() -> None:
    (application,) = config.parse(LEGACY["gen2"]).config.applications
    field, value = GEN2_APPLICATION["no_response_check"](
        schema_defaults("gen2_application")["no_response_check"]
    )
    assert getattr(application, field) is value is True


def test_a_gen2_application_log_without_a_file_writes_to_the_default_file() -> None:
    text = "bind: 127.0.0.1:9000\napplications:\n  app:\n    log_level: error\n"
    (application,) = config.parse(text).config.applications
    assert application.log is not None
    assert application.log.file == schema_defaults("application")["log_file"]
    assert (application.log.level, application.log.format) == ("error", "json")
