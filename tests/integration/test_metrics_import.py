"""``prometheus_client`` is loaded only by an agent that exports metrics (docs/performance.md
change 26: ~2.5 MiB of RSS otherwise spent on a library nothing reads).

Each case starts a real ``runtime.Runtime`` (real engine, small rules) in a fresh interpreter,
so that ``sys.modules`` says what the serving process imported, and serves a NOTIFY before it
looks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ports import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

SERVE_AND_REPORT = """
import cffi
from gevent import monkey

monkey.patch_all()

import json, sys, urllib.request

from coraza_spoa_py import config as config_module, runtime
from tests.support.spop_client import SpopClient, actions_by_name, message

config, port, metrics_addr = sys.argv[1], int(sys.argv[2]), sys.argv[3]
loaded = config_module.load_with_notices(config)
rt = runtime.Runtime.start(config, loaded, metrics_addr=metrics_addr)
with SpopClient.connect(("127.0.0.1", port)) as client:
    client.hello()
    client.notify(1, 1, [message("coraza-req", app="a", id="t1", method="GET", path="/")])
    actions = dict(actions_by_name(client.read_ack()[2]))
scraped = ""
if metrics_addr:
    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10) as response:
        scraped = response.read().decode()
rt.request_stop("test")
rt.shutdown()
print(json.dumps({"prometheus": "prometheus_client" in sys.modules,
                  "acked": actions.get("fail") == 0 and "error" not in actions,
                  "histogram": "coraza_handle_spoe_duration_seconds" in scraped}))
"""


def serve(tmp_path: Path, with_metrics: bool) -> dict[str, bool]:
    port = free_port()
    metrics_addr = f"127.0.0.1:{free_port()}" if with_metrics else ""
    config = tmp_path / "config.yml"
    config.write_text(
        f"bind: 127.0.0.1:{port}\napplications:\n  - name: a\n"
        "    directives: |\n      SecRuleEngine On\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", SERVE_AND_REPORT, str(config), str(port), metrics_addr],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, bool] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_an_agent_without_metrics_never_imports_prometheus_client(tmp_path: Path) -> None:
    """1. Start an agent without -metrics-addr; answer a NOTIFY. 2. prometheus_client is not
    in its sys.modules."""
    report = serve(tmp_path, with_metrics=False)
    assert report == {"prometheus": False, "acked": True, "histogram": False}


def test_an_agent_with_metrics_imports_it_and_exports_the_histogram(tmp_path: Path) -> None:
    """1. Start the same agent with -metrics-addr; answer a NOTIFY. 2. /metrics has
    coraza-spoa's histogram, so prometheus_client was loaded when asked for."""
    report = serve(tmp_path, with_metrics=True)
    assert report == {"prometheus": True, "acked": True, "histogram": True}
