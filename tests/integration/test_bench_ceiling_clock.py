"""The ceiling run for real, briefly, on the small rule set: its engine-only CPU figure
(``EngineClock``, docs/performance.md change 39) is measured and is part of the process's."""

from __future__ import annotations

import pytest

from bench import ceiling
from bench.agent_config import SMALL_DIRECTIVES
from bench.scenarios import SCENARIOS

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", ["clean_get", "attack_get"])
def test_engine_cpu_is_measured_and_within_the_process_cpu(name: str):
    """1. Load the small rules with an EngineClock and run the ceiling on 2 threads for 1 s.
    2. Transactions ran with the expected verdicts (the attack blocked, the GET passed); the
       CPU inside engine calls is above zero and at most the whole process's, per request as
       in total."""
    engine, clock = ceiling.clocked_engine(SMALL_DIRECTIVES, True)
    result = ceiling.run_ceiling(
        engine, SCENARIOS[name], threads=2, duration_s=1.0, warmup_s=0.2, clock=clock
    )
    assert result["transactions"] > 0
    assert result["wrong_verdicts"] == 0
    assert 0 < result["engine_cpu_s"] <= result["cpu_s"]
    assert 0 < result["engine_cpu_ms_per_request"] <= result["process_cpu_ms_per_request"]
