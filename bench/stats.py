"""Small numeric helpers shared by the drivers and the report. Pure functions, no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence

REPORTED_PERCENTILES = (50.0, 75.0, 90.0, 99.0, 99.9)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values (what wrk reports too)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), math.ceil(p / 100.0 * len(sorted_values))))
    return float(sorted_values[rank - 1])


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50 … p99.9, mean and max of ``values`` (any unit), keyed ``"p50"``, ``"p99.9"``, …"""
    ordered = sorted(values)
    out = {f"p{p:g}": percentile(ordered, p) for p in REPORTED_PERCENTILES}
    out["mean"] = sum(ordered) / len(ordered) if ordered else 0.0
    out["max"] = float(ordered[-1]) if ordered else 0.0
    return out


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None when the denominator is not a measurement."""
    return numerator / denominator if denominator > 0 else None
