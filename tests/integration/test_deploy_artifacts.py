"""The shipped deployment files checked by the real tools that can run here: Debian's
``systemd-analyze verify`` on etc/systemd/coraza-spoa-py.service, HAProxy's ``-c`` on the
sidecar manifest's haproxy.cfg, and the agent's own ``-validate`` (which compiles the rules) on
every config.yml that ships in deploy/. Docker and a cluster are not available: the Dockerfile
and the manifests' schemas are checked statically in tests/unit/test_deploy.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.haproxy import haproxy_binary
from tests.unit.test_cli import run_cli

pytestmark = pytest.mark.integration

PROJECT_ROOT = Path(__file__).resolve().parents[2]
UNIT = PROJECT_ROOT / "etc" / "systemd" / "coraza-spoa-py.service"
K8S_DIR = PROJECT_ROOT / "deploy" / "kubernetes"
INSTALLED_COMMAND = "/opt/coraza-spoa-py/bin/coraza-spoa-py"


def verify_unit(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # verify insists that ExecStart's binary exists: the unit's install path is swapped for this
    # checkout's own console script, nothing else changes
    here = Path(sys.executable).with_name("coraza-spoa-py")
    assert here.exists(), "the coraza-spoa-py console script (pip install -e .)"
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(INSTALLED_COMMAND, str(here)))
    systemd_analyze = shutil.which("systemd-analyze")
    assert systemd_analyze, "systemd-analyze: scripts/install-system-deps.sh installs systemd"
    return subprocess.run(
        [systemd_analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )


def test_the_systemd_unit_verifies_without_a_single_warning(tmp_path: Path) -> None:
    text = UNIT.read_text()
    assert INSTALLED_COMMAND in text
    result = verify_unit(text, tmp_path)
    # systemd-analyze exits 0 on unknown keys and bad values too: its output is the verdict
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_a_broken_unit_is_caught(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=very\nBogus=1")
    result = verify_unit(broken, tmp_path)
    output = result.stdout + result.stderr
    assert "Unknown key" in output and "Bogus" in output
    assert "protect system value" in output.lower()


def test_the_unit_is_hardened_but_lets_pcre2_jit_map_its_code() -> None:
    settings = dict(
        line.split("=", 1) for line in UNIT.read_text().splitlines() if re.match(r"^\w+=", line)
    )
    assert settings["User"] == "coraza-spoa" and settings["NoNewPrivileges"] == "yes"
    assert settings["ProtectSystem"] == "strict"
    assert "MemoryDenyWriteExecute" not in settings  # docs/operations.md "systemd"
    assert "-validate" in settings["ExecStartPre"]
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"


def test_the_sidecar_haproxy_cfg_is_valid_for_haproxy(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((K8S_DIR / "haproxy-sidecar.yaml").read_text()))
    (files,) = [d for d in docs if d["kind"] == "ConfigMap"]
    spoe = tmp_path / "coraza.cfg"
    spoe.write_text(files["data"]["coraza.cfg"])
    haproxy_cfg = tmp_path / "haproxy.cfg"
    mounted = "/usr/local/etc/haproxy/coraza.cfg"
    assert mounted in files["data"]["haproxy.cfg"]
    haproxy_cfg.write_text(files["data"]["haproxy.cfg"].replace(mounted, str(spoe)))
    result = subprocess.run(
        [str(haproxy_binary("2.6")), "-c", "-f", str(haproxy_cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # the only warning: the placeholder application Service does not resolve here
    warnings = [line for line in result.stderr.splitlines() if "[WARNING]" in line]
    assert all("could not resolve address 'my-app'" in line for line in warnings), warnings


def shipped_configs() -> list[tuple[str, str]]:
    found = [("deploy/docker/config.yml", (PROJECT_ROOT / "deploy/docker/config.yml").read_text())]
    for path in sorted(K8S_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc["kind"] == "ConfigMap" and "config.yml" in doc["data"]:
                found.append((f"{path.name}:{doc['metadata']['name']}", doc["data"]["config.yml"]))
    return found


@pytest.mark.parametrize(("name", "text"), shipped_configs(), ids=lambda v: v.split("\n")[0])
def test_every_shipped_config_compiles_with_validate(name: str, text: str, tmp_path: Path) -> None:
    # the audit log's folder is the pod's volume; here a temporary one
    text = text.replace("/var/log/coraza-spoa/", f"{tmp_path}/")
    config_file = tmp_path / "config.yml"
    config_file.write_text(text)
    result = run_cli("-validate", "-config", str(config_file), timeout=120)
    assert result.returncode == 0, f"{name}:\n{result.stdout}{result.stderr}"
    assert "Configuration file is valid" in result.stdout + result.stderr
    assert re.search(r"application sample_app: \d{3,} rules", result.stdout + result.stderr)
