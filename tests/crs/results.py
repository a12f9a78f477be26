"""Compare judged stages with ``expected-failures.yaml`` and print the summary.

``expected-failures.yaml`` maps a stage id to ``{modes: [direct, haproxy], reason: "..."}``.
A run is clean when every failure of a mode is listed for that mode AND every entry listed for
that mode really fails (a stale entry is an error: it would hide a future regression).
The last line printed is ``N passed, N failed, N skipped`` alone, summed over the modes run.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import yaml

from tests.crs.judge import Judgement, Observation, judge
from tests.crs.loader import Stage

MODES = ("direct", "haproxy")


@dataclass(frozen=True)
class ExpectedFailure:
    stage_id: str
    modes: tuple[str, ...]
    reason: str


def load_expected(path: Path) -> dict[str, ExpectedFailure]:
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    entries: dict[str, ExpectedFailure] = {}
    for stage_id, body in document.items():
        modes = tuple(body.get("modes") or ())
        reason = str(body.get("reason") or "").strip()
        unknown = [m for m in modes if m not in MODES]
        if unknown or not modes or not reason:
            raise ValueError(f"{path.name}: {stage_id}: needs modes from {MODES} and a reason")
        entries[str(stage_id)] = ExpectedFailure(str(stage_id), modes, reason)
    return entries


@dataclass
class ModeResult:
    mode: str
    judgements: dict[str, Judgement]
    observations: dict[str, Observation]
    unexpected_failures: list[str] = field(default_factory=list)
    stale_entries: list[str] = field(default_factory=list)

    def count(self, outcome: str) -> int:
        return sum(1 for j in self.judgements.values() if j.outcome == outcome)

    @property
    def pass_rate(self) -> float:
        judged = self.count("passed") + self.count("failed")
        return self.count("passed") / judged if judged else 0.0

    @property
    def clean(self) -> bool:
        return not self.unexpected_failures and not self.stale_entries


def evaluate(
    mode: str,
    stages: Sequence[Stage],
    observations: Mapping[str, Observation],
    expected: Mapping[str, ExpectedFailure],
) -> ModeResult:
    judgements = {s.stage_id: judge(s.output, observations[s.stage_id]) for s in stages}
    result = ModeResult(mode, judgements, dict(observations))
    for stage_id, judgement in judgements.items():
        listed = stage_id in expected and mode in expected[stage_id].modes
        if judgement.outcome == "failed" and not listed:
            result.unexpected_failures.append(stage_id)
        if listed and judgement.outcome != "failed":
            result.stale_entries.append(stage_id)
    return result


def print_report(
    stages: Sequence[Stage],
    results: Sequence[ModeResult],
    expected: Mapping[str, ExpectedFailure],
    out: IO[str],
    *,
    verbose: bool = False,
) -> None:
    by_file: dict[str, list[Stage]] = defaultdict(list)
    for stage in stages:
        by_file[stage.file].append(stage)
    out.write("per-file summary (passed/judged per mode):\n")
    for file, file_stages in sorted(by_file.items()):
        cells = []
        for result in results:
            outcomes = Counter(result.judgements[s.stage_id].outcome for s in file_stages)
            judged = outcomes["passed"] + outcomes["failed"]
            cells.append(f"{result.mode} {outcomes['passed']}/{judged}")
        out.write(f"  {file:<60} {'  '.join(cells)}\n")

    for result in results:
        out.write(f"\n{result.mode}: failures\n")
        for stage in stages:
            judgement = result.judgements[stage.stage_id]
            if judgement.outcome != "failed":
                continue
            entry = expected.get(stage.stage_id)
            tag = "expected" if entry and result.mode in entry.modes else "UNEXPECTED"
            seen = result.observations[stage.stage_id]
            detail = "; ".join(judgement.reasons)
            ids = ",".join(str(i) for i in seen.rule_ids[:12])
            out.write(f"  [{tag}] {stage.stage_id}: {detail} (status {seen.status}; ids {ids})\n")
            if verbose and entry:
                out.write(f"      reason: {entry.reason}\n")
        for stage_id in result.stale_entries:
            out.write(f"  [STALE] {stage_id}: listed as failing in {result.mode} but it passes\n")

    if len(results) == 2:
        first, second = results
        differing = [
            s.stage_id
            for s in stages
            if first.judgements[s.stage_id].outcome != second.judgements[s.stage_id].outcome
        ]
        out.write(f"\n{first.mode} vs {second.mode}: {len(differing)} stages differ\n")
        for stage_id in differing:
            out.write(
                f"  {stage_id}: {first.mode} {first.judgements[stage_id].outcome},"
                f" {second.mode} {second.judgements[stage_id].outcome}\n"
            )

    out.write("\n")
    for result in results:
        out.write(
            f"{result.mode}: {result.count('passed')} passed, {result.count('failed')} failed,"
            f" {result.count('skipped')} skipped ({result.pass_rate:.2%} of judged stages pass;"
            f" {len(result.unexpected_failures)} unexpected failures,"
            f" {len(result.stale_entries)} stale expected-failure entries)\n"
        )
    passed = sum(r.count("passed") for r in results)
    failed = sum(r.count("failed") for r in results)
    skipped = sum(r.count("skipped") for r in results)
    out.write(f"{passed} passed, {failed} failed, {skipped} skipped\n")
