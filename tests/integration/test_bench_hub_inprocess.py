"""``python -m bench.hub_inprocess`` runs end to end: every answer a clean verdict (else it
exits non-zero), a CPU figure per transaction, and every transaction it opened closed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent.parent


def test_the_in_process_driver_measures_and_closes_everything() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.hub_inprocess", "--transactions", "300", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    median = re.search(r"median: (\d+) us per transaction", run.stdout)
    assert median is not None and int(median[1]) > 0, run.stdout
    counts = re.search(r"opened (\d+), closed (\d+), open (\d+)", run.stdout)
    assert counts is not None, run.stdout
    # the warm-up's transactions and the round's, every one closed by its response's job
    assert int(counts[1]) == int(counts[2]) == 2_000 + 300 and counts[3] == "0"
