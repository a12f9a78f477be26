"""Coraza users' own files load unchanged, with the meaning they have in Coraza (issue 13).

``tests/data/rules/coraza/coraza.conf`` has the directives of Coraza's coraza.conf-recommended
(its Coraza-only ``SecRequestBodyInMemoryLimit`` and rule 200003's quote left open); the
configs include it from config.yml in the old (Gen1 ``spoa:``) and current forms, with
Debian's CRS 3.3.x. Real libmodsecurity, real CRS.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from coraza_spoa_py import config
from coraza_spoa_py import engine as waf
from coraza_spoa_py.models import RequestInfo
from coraza_spoa_py.settings import AppConfig, RulePaths

pytestmark = pytest.mark.integration

CORAZA_DIR = Path(__file__).resolve().parent.parent / "data" / "rules" / "coraza"
CORAZA_FILE = CORAZA_DIR / "coraza.conf"
HEADERS = ((b"host", b"localhost"), (b"user-agent", b"test/1.0"), (b"accept", b"*/*"))


def engine_of(config_name: str) -> waf.ModSecEngine:
    loaded = config.load(str(CORAZA_DIR / config_name))
    (app,) = loaded.applications
    return waf.load_engine(app, loaded.rule_paths)


@pytest.mark.parametrize("config_name", ["gen1.yml", "gen3.yml"])
def test_coraza_recommended_file_loads_the_whole_crs_and_blocks(config_name: str) -> None:
    engine = engine_of(config_name)
    assert engine.rule_count >= 900
    # both Coraza-isms are reported where they are, and neither stops the load
    assert engine.warnings == (
        f"{CORAZA_FILE}:21: dropped SecRequestBodyInMemoryLimit: a Coraza-only directive "
        "that libmodsecurity does not accept",
        f"{CORAZA_FILE}:32: closed the single quote left open in the actions of SecRule, "
        "where Coraza ends that value (libmodsecurity would read on into the next rules and "
        "lose them)",
    )
    attack = RequestInfo("tx-attack", path=b"/", query=b"id=1' OR '1'='1", headers=HEADERS)
    tx = engine.new_transaction("tx-attack")
    verdict = tx.process_request(attack)
    tx.close()
    assert verdict.interrupted and verdict.status == 403
    assert 942100 in verdict.matched_rule_ids or 942190 in verdict.matched_rule_ids
    clean = RequestInfo("tx-clean", path=b"/index.html", headers=HEADERS)
    tx = engine.new_transaction("tx-clean")
    assert not tx.process_request(clean).interrupted
    tx.close()


def test_rule_200003_keeps_its_message_as_coraza_reads_it() -> None:
    """The quote Coraza closes at the end of the actions: the message is the rest of them."""
    engine = waf.load_engine(
        AppConfig(name="t", directives=f"Include {CORAZA_FILE}\nSecRuleEngine On\n"), RulePaths()
    )
    body = b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--b--\r\nafter'
    request = RequestInfo(
        "tx-mp",
        method=b"POST",
        path=b"/",
        headers=(*HEADERS, (b"content-type", b"multipart/form-data; boundary=b")),
        body=body,
    )
    tx = engine.new_transaction("tx-mp")
    verdict = tx.process_request(request)
    tx.close()
    assert verdict.interrupted and verdict.status == 400 and verdict.rule_id == 200003
    assert verdict.matches[-1].msg == "Multipart request body failed strict validation."


def test_nested_include_with_an_at_name_and_a_glob(tmp_path: Path) -> None:
    """A file that includes Coraza's names and a glob of files, one of which needs a change:
    everything loads, the warnings name the nested file and line."""
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "a.conf").write_text(
        'SecRule ARGS "@contains aaa" "id:9101,phase:2,deny,status:403"\n'
    )
    (tmp_path / "conf.d" / "b.conf").write_text(
        "SecRxPreFilter On\n"
        'SecRule ARGS "@contains bbb" "id:9102,phase:2,deny,status:403,msg:\'open"\n'
    )
    (tmp_path / "main.conf").write_text(
        f"Include {CORAZA_FILE}\nInclude @crs-setup.conf.example\n"
        "Include conf.d/*.conf\nSecRuleEngine On\n"
    )
    engine = waf.load_engine(
        AppConfig(name="t", directives="Include main.conf\n", base_dir=str(tmp_path)),
        RulePaths(),
    )
    b_conf = tmp_path / "conf.d" / "b.conf"
    assert f"{b_conf}:1: dropped SecRxPreFilter" in engine.warnings[-2]
    assert engine.warnings[-1].startswith(f"{b_conf}:2: closed the single quote")
    for value, rule_id in ((b"aaa", 9101), (b"bbb", 9102)):
        tx = engine.new_transaction("t")
        verdict = tx.process_request(
            RequestInfo("t", path=b"/", query=b"q=" + value, headers=HEADERS)
        )
        tx.close()
        assert verdict.rule_id == rule_id


def test_a_file_that_stops_loading_early_is_refused_with_file_and_line() -> None:
    """libmodsecurity loads 1 of the 2 rules of stops-early.conf without an error; the
    rule-count guard refuses it, naming the first rule lost and the directive before it."""
    stops = CORAZA_DIR / "stops-early.conf"
    with pytest.raises(waf.RulesError) as caught:
        waf.load_engine(AppConfig(name="t", directives=f"Include {stops}\n"), RulePaths())
    (problem,) = caught.value.problems
    assert problem.startswith(f"{stops}:7: the rules stop loading here: ")
    assert f"({stops}:5) leave a quote open?" in problem


def test_an_included_file_that_is_not_utf8_loads_as_its_bytes(tmp_path: Path) -> None:
    """A Latin-1 rules file (a comment and a rule message with "é" as one byte) that needs a
    change (a Coraza-only directive dropped) goes to the engine as text: it loads, byte for
    byte, instead of failing to encode."""
    (tmp_path / "latin1.conf").write_bytes(
        b"# r\xe9gles maison\nSecRxPreFilter On\n"
        b'SecRule ARGS "@contains caf\xe9" "id:9103,phase:2,deny,status:403,msg:\'caf\xe9\'"\n'
    )
    engine = waf.load_engine(
        AppConfig(
            name="t", directives="SecRuleEngine On\nInclude latin1.conf\n", base_dir=str(tmp_path)
        ),
        RulePaths(),
    )
    assert engine.rule_count == 1
    assert "latin1.conf:2: dropped SecRxPreFilter" in engine.warnings[-1]
    tx = engine.new_transaction("t")
    verdict = tx.process_request(RequestInfo("t", path=b"/", query=b"q=caf%E9", headers=HEADERS))
    tx.close()
    assert verdict.rule_id == 9103
