"""rules.resolve: @ includes, relative paths, Coraza-only directives, line mapping (no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coraza_spoa_py.engine import rules
from coraza_spoa_py.settings import AppConfig, RulePaths


def resolve(
    directives: str, paths: RulePaths | None = None, base_dir: str = "/etc/app"
) -> rules.ResolvedRules:
    app = AppConfig(name="shop", directives=directives, base_dir=base_dir)
    return rules.resolve(app, paths or RulePaths())


@pytest.fixture
def crs_tree(tmp_path: Path) -> RulePaths:
    """A CRS install like Debian's: rules in one folder, setup and exclusions in another."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "crs-setup.conf").write_text("# setup\n")
    return RulePaths(
        crs_rules_dir=str(tmp_path / "rules"), crs_setup_file=str(tmp_path / "etc/crs-setup.conf")
    )


def test_base_config_include_points_into_the_package() -> None:
    resolved = resolve("Include @coraza.conf-recommended\n")
    assert resolved.text == f"Include {rules.BASE_CONFIG_FILE}\n"
    assert rules.BASE_CONFIG_FILE.is_file()


def test_base_config_inspects_the_readable_response_types() -> None:
    text = rules.BASE_CONFIG_FILE.read_text()
    assert "\nSecResponseBodyMimeType text/plain text/html text/xml application/json\n" in text
    assert "\nSecRuleEngine DetectionOnly\n" in text
    assert "SecRxPreFilter" not in text  # nothing Coraza-only in our own file


def test_crs_setup_and_rules_resolve_to_rule_paths(crs_tree: RulePaths) -> None:
    resolved = resolve(
        "Include @crs-setup.conf.example\nInclude @owasp_crs/REQUEST-942-*.conf\n", crs_tree
    )
    assert resolved.text.splitlines() == [
        f"Include {crs_tree.crs_setup_file}",
        f"Include {crs_tree.crs_rules_dir}/REQUEST-942-*.conf",
    ]


def test_all_crs_rules_bring_debian_exclusion_files_around_them(crs_tree: RulePaths) -> None:
    """Debian keeps REQUEST-900/RESPONSE-999 beside crs-setup.conf and loads them around the
    rules (owasp-crs.load); `@owasp_crs/*.conf` does the same, in the same order."""
    etc = Path(crs_tree.crs_setup_file).parent
    (etc / rules.EXCLUSIONS_BEFORE).write_text("# before\n")
    (etc / rules.EXCLUSIONS_AFTER).write_text("# after\n")
    resolved = resolve("SecRuleEngine On\nInclude @owasp_crs/*.conf\nSecAction x\n", crs_tree)
    assert resolved.text.splitlines() == [
        "SecRuleEngine On",
        f"Include {etc / rules.EXCLUSIONS_BEFORE}",
        f"Include {crs_tree.crs_rules_dir}/*.conf",
        f"Include {etc / rules.EXCLUSIONS_AFTER}",
        "SecAction x",
    ]
    # every output line maps back to the directive line it came from
    assert resolved.source_lines == (1, 2, 2, 2, 3)
    assert resolved.source_line(5) == 3


def test_exclusion_files_missing_or_already_in_the_rules_folder(crs_tree: RulePaths) -> None:
    assert resolve("Include @owasp_crs/*.conf\n", crs_tree).text.splitlines() == [
        f"Include {crs_tree.crs_rules_dir}/*.conf"
    ]
    etc = Path(crs_tree.crs_setup_file).parent
    (etc / rules.EXCLUSIONS_BEFORE).write_text("# before\n")
    (Path(crs_tree.crs_rules_dir) / rules.EXCLUSIONS_BEFORE).write_text("# in the glob\n")
    assert resolve("Include @owasp_crs/*.conf\n", crs_tree).text.splitlines() == [
        f"Include {crs_tree.crs_rules_dir}/*.conf"
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Include local/rules.conf", "Include /etc/app/local/rules.conf"),
        ('Include "local/rules.conf"', "Include /etc/app/local/rules.conf"),
        ("include local/*.conf", "Include /etc/app/local/*.conf"),
        ("Include /abs/rules.conf", "Include /abs/rules.conf"),
        ("  Include   my rules.conf  ", 'Include "/etc/app/my rules.conf"'),
    ],
)
def test_include_paths(line: str, expected: str) -> None:
    assert resolve(line + "\n").text == expected + "\n"


def test_other_directives_pass_through_unchanged() -> None:
    directives = (
        "SecRuleEngine On\n"
        'SecRule ARGS "@rx x" \\\n'
        '    "id:1,phase:1,deny"\n'
        "# Include @owasp_crs/*.conf is only a comment\n"
    )
    resolved = resolve(directives)
    assert resolved.text == directives
    assert resolved.warnings == ()
    assert resolved.source_lines == (1, 2, 3, 4)


def test_coraza_only_directives_are_dropped_with_file_and_line() -> None:
    directives = (
        "SecRuleEngine On\n"
        "SecRxPreFilter Off\n"
        "secrequestbodyinmemorylimit 131072\n"  # directive names are case-insensitive
        "SecDataset fruits `\n"
        "apple\n"
        "banana\n"
        "`\n"
        "SecAuditLogFormat OCSF\n"
        "SecAuditLogFormat JSON\n"
        "SecHashEngine \\\n"
        "    Off\n"
        "SecAction last\n"
    )
    resolved = resolve(directives)
    assert resolved.text.splitlines() == [
        "SecRuleEngine On",
        "SecAuditLogFormat JSON",
        "SecAction last",
    ]
    assert resolved.source_lines == (1, 9, 12)
    assert resolved.warnings == tuple(
        f"<app shop directives>:{line}: dropped {name}: a Coraza-only directive that "
        "libmodsecurity does not accept"
        for line, name in [
            (2, "SecRxPreFilter"),
            (3, "secrequestbodyinmemorylimit"),
            (4, "SecDataset"),
            (8, "SecAuditLogFormat"),
            (10, "SecHashEngine"),
        ]
    )


def test_label_names_the_application() -> None:
    assert resolve("").label == "<app shop directives>"
    assert resolve("").text == "\n"


def test_unfinished_continuation_at_the_end_is_kept() -> None:
    """A last line ending in a backslash is passed on as it is: the engine reports it."""
    resolved = resolve('SecRule ARGS "@rx x" \\\n')
    assert resolved.text == 'SecRule ARGS "@rx x" \\\n'
    assert resolved.source_lines == (1,)


def test_included_file_that_needs_a_change_is_passed_inline_with_its_lines(
    tmp_path: Path,
) -> None:
    """A Coraza-only directive or a quote left open in an included file: the file's text is
    passed inline, each line mapped back to that file and line; unchanged files stay Includes."""
    (tmp_path / "clean.conf").write_text('SecAction "id:1,pass"\n')
    coraza = tmp_path / "coraza.conf"
    coraza.write_text(
        "# it's a comment with a ` backtick\n"
        "SecRequestBodyInMemoryLimit 131072\n"
        'SecRule ARGS "x" \\\n'
        '    "id:2,deny, \\\n'
        "    msg:'left open\"\n"
    )
    resolved = resolve("Include clean.conf\nInclude coraza.conf\n", base_dir=str(tmp_path))
    assert resolved.text.splitlines() == [
        f"Include {tmp_path}/clean.conf",
        "# it's a comment with a ` backtick",
        'SecRule ARGS "x" \\',
        '    "id:2,deny, \\',
        "    msg:'left open'\"",
    ]
    assert resolved.origins == (
        ("<app shop directives>", 1),
        (str(coraza), 1),
        (str(coraza), 3),
        (str(coraza), 4),
        (str(coraza), 5),
    )
    assert [w.split(": ")[0] for w in resolved.warnings] == [f"{coraza}:2", f"{coraza}:3"]
    assert [(d.file, d.line, d.rules) for d in resolved.directives] == [
        (str(tmp_path / "clean.conf"), 1, 1),
        (str(coraza), 3, 1),
    ]


def test_chained_rules_and_markers_are_counted_as_the_engine_counts_them() -> None:
    resolved = resolve(
        'SecRule ARGS "a" "id:1,msg:\'not a chain\',chain"\n'
        '    SecRule ARGS "b" "t:none"\n'
        "SecMarker END\n"
        "SecAction \"id:3,msg:'chain',pass\"\n"
        'SecRule ARGS "c" "id:4,pass"\n'
    )
    assert rules.count_defined(resolved.directives) == (3, 1)


def test_an_include_cycle_is_a_problem_not_a_hang(tmp_path: Path) -> None:
    (tmp_path / "self.conf").write_text("Include self.conf\n")
    resolved = resolve("Include self.conf\n", base_dir=str(tmp_path))
    assert resolved.problems and "nested includes" in resolved.problems[0]


@pytest.mark.parametrize(
    ("directives", "rejects"),
    [
        # the recommended base config: body access on, Reject, engine DetectionOnly until the
        # app turns it on (as config.example.yml does)
        ("Include @coraza.conf-recommended\nSecRuleEngine On\n", True),
        ("Include @coraza.conf-recommended\n", False),
        ("Include @coraza.conf-recommended\nSecRequestBodyLimitAction ProcessPartial\n", False),
        ("SecRequestBodyAccess On\nSecRequestBodyLimitAction Reject\n", True),
        ("SecRequestBodyAccess On\nSecRequestBodyLimitAction 'Reject'\nSecRuleEngine Off\n", False),
        ("SecRequestBodyLimitAction Reject\n", False),  # body access is off by default
        ("SecRequestBodyAccess On\n", False),  # libmodsecurity's default is ProcessPartial
        ("secrequestbodyaccess on\nsecrequestbodylimitaction reject\n", True),
    ],
)
def test_rejects_truncated_body_follows_the_last_body_limit_settings(
    directives: str, rejects: bool
) -> None:
    assert resolve(directives).rejects_truncated_body is rejects
