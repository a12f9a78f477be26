"""Fuzzing the config pipeline: whatever the file holds, ``config.parse`` returns a config or
raises ``ConfigError`` whose every problem has a path and a line, never another exception."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from coraza_spoa_py import config

# every key any generation knows, plus a few unknown ones, so the shapes mix
KEYS = sorted(
    {
        *config.schema()["$defs"]["gen3"]["properties"],
        *config.schema()["$defs"]["application"]["properties"],
        *config.schema()["$defs"]["gen2_application"]["properties"],
        "spoa",
        "log",
        "level",
        "dir",
        "include",
        "transaction_ttl",
        "colour",
    }
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["127.0.0.1:0", ":0", "unix:///tmp/x.sock", "info", "json", "sample_app"])
    | st.text(max_size=12)
)
VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS), children, max_size=4)
    ),
    max_leaves=12,
)
DOCUMENTS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6)


def _check(text: str) -> None:
    try:
        loaded = config.parse(text, source="fuzz.yml")
    except config.ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.line is None or problem.line >= 1
            assert problem.message
        return
    assert loaded.generation in (1, 2, 3)


@settings(max_examples=300, deadline=None)
@given(DOCUMENTS)
def test_structured_documents_give_a_config_or_a_config_error(document: dict[str, Any]) -> None:
    _check(yaml.safe_dump(document, allow_unicode=True))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_gives_a_config_or_a_config_error(text: str) -> None:
    _check(text)
