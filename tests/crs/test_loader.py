"""The loader reads both test formats into the same ``Stage`` (no engine, no sockets).

The go-ftw (CRS 4) files are not available here: the go-ftw cases are small YAML written in the
test, shaped like CRS 4's tests/regression/tests files (docs/crs.md "Test file formats").
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.crs.crs_setup import crs_tests_dir
from tests.crs.loader import LoadError, detect_format, load_file, load_tree

LEGACY = """\
---
  meta:
    author: "someone"
    enabled: true
    name: "920999.yaml"
    description: "legacy sample"
  tests:
    -
      test_title: 920999-1
      desc: list data, joined with CRLF
      stages:
        -
          stage:
            input:
              dest_addr: "127.0.0.1"
              port: 80
              method: "POST"
              headers:
                  User-Agent: "ModSecurity CRS 3 Tests"
                  Host: "localhost"
              data:
                - "a=1"
                - "b=2"
            output:
              log_contains: "id \\"920999\\""
              status: [200, 403]
    -
      test_title: 920999-2
      stages:
        -
          stage:
            input:
              stop_magic: true
              encoded_request: "R0VUIC8gSFRUUC8xLjENCg0K"
            output:
              no_log_contains: "id \\"920999\\""
              expect_error: true
    -
      test_title: 920999-3
      enabled: false
      stages:
        - stage: {input: {}, output: {status: 200}}
"""

GOFTW = """\
---
meta:
  author: "someone"
  description: "go-ftw sample"
rule_id: 932999
tests:
  - test_id: 1
    desc: "expect ids, sorted headers, templating"
    stages:
      - input:
          dest_addr: "127.0.0.1"
          port: 80
          method: "POST"
          headers:
            User-Agent: "OWASP CRS test agent"
            Host: "localhost"
          data: '{{ "1" | repeat 5 }}'
        output:
          log:
            expect_ids: [932999]
            no_expect_ids: [949110]
  - test_id: 2
    stages:
      - input:
          autocomplete_headers: false
          encoded_request: "R0VUIC8gSFRUUC8xLjENCg0K"
        output:
          status: 400
          log:
            match_regex: 'id[:\\s"]*932999'
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / "REQUEST-999-SAMPLE" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_legacy_format_fields(tmp_path: Path) -> None:
    """1. Load a legacy (ftw 1.x) file. 2. List data is CRLF-joined, statuses become tuples,
    stop_magic turns autocomplete off, disabled tests are dropped."""
    stages = load_file(write(tmp_path, "920999.yaml", LEGACY), tmp_path)
    assert [s.stage_id for s in stages] == ["920999-1", "920999-2"]
    first, second = stages
    assert first.format == "legacy"
    assert first.file == "REQUEST-999-SAMPLE/920999.yaml"
    assert first.rule_file == "REQUEST-999-SAMPLE"
    assert first.input.method == "POST"
    assert first.input.headers == (("User-Agent", "ModSecurity CRS 3 Tests"), ("Host", "localhost"))
    assert first.input.data == "a=1\r\nb=2"
    assert first.output.log_regexes == ('id "920999"',)
    assert first.output.status == (200, 403)
    assert second.input.autocomplete is False
    assert second.input.encoded_request == "R0VUIC8gSFRUUC8xLjENCg0K"
    assert second.output.expect_error is True
    assert second.output.no_log_regexes == ('id "920999"',)


def test_legacy_file_disabled_in_meta_has_no_stages(tmp_path: Path) -> None:
    text = LEGACY.replace("enabled: true", "enabled: false")
    assert load_file(write(tmp_path, "920998.yaml", text), tmp_path) == []


def test_goftw_format_fields(tmp_path: Path) -> None:
    """1. Load a go-ftw (CRS 4) file. 2. Ids come from rule_id + test_id, log.expect_ids /
    no_expect_ids / match_regex are read, autocomplete_headers false is kept."""
    stages = load_file(write(tmp_path, "932999.yaml", GOFTW), tmp_path)
    assert [s.stage_id for s in stages] == ["932999-1", "932999-2"]
    first, second = stages
    assert first.format == "goftw"
    assert first.output.expect_ids == (932999,)
    assert first.output.no_expect_ids == (949110,)
    assert first.input.data == '{{ "1" | repeat 5 }}'  # expanded by the builder, not here
    assert second.input.autocomplete is False
    assert second.output.status == (400,)
    assert second.output.log_regexes == ('id[:\\s"]*932999',)


def test_format_detection() -> None:
    assert detect_format({"tests": [{"test_title": "x", "stages": [{"stage": {}}]}]}) == "legacy"
    assert detect_format({"tests": [{"test_id": 1, "stages": [{"input": {}}]}]}) == "goftw"


def test_commented_out_file_and_broken_file(tmp_path: Path) -> None:
    """CRS 4's 920539.yaml is all comments: no stages. A file that is not YAML: LoadError."""
    assert load_file(write(tmp_path, "920539.yaml", "# nothing\n"), tmp_path) == []
    with pytest.raises(LoadError, match="broken.yaml"):
        load_file(write(tmp_path, "broken.yaml", "tests: [\n"), tmp_path)


def test_duplicate_titles_stay_distinct(tmp_path: Path) -> None:
    text = LEGACY.replace("920999-2", "920999-1")
    write(tmp_path, "920999.yaml", text)
    assert [s.stage_id for s in load_tree(tmp_path)] == ["920999-1", "920999-1~2"]


def test_v3_3_4_tree_counts() -> None:
    """The shared v3.3.4 tests: 178 files, 2396 enabled stages (ftw 1.3.0 counts 2396 tests),
    every one legacy, ids unique (941160-10 appears twice in the files)."""
    stages = load_tree(crs_tests_dir())
    assert len(stages) == 2396
    assert {s.format for s in stages} == {"legacy"}
    assert len({s.stage_id for s in stages}) == 2396
    assert "941160-10~2" in {s.stage_id for s in stages}
