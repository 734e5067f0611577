"""A paper's claims against one reproduction: which runs, our value per seed, the verdicts.

The claims are ``common.experiment.Claim`` (parsed from paper.yaml). A reproduction is the set of
runs that ``common.reproduce`` tagged with one ``reproduction`` id; it is complete when every planned
(task, variant, seed) — ``reproduction_size`` runs — FINISHED. Our value of a claim is the mean over
the reproduction's seeds (each seed's value and the std are kept too; for ``relative_to`` the
difference is taken seed by seed), and the claim's criterion at the reproduction's preset applies to
that mean with a margin (``judge``): reproduced when it holds for every seed or for mean ± std, not
reproduced when it fails likewise, else "inconclusive (spread too large)". A claim that ``requires``
another one, and would be reproduced, is inconclusive unless that one is reproduced too.
The ``fmt`` family shows these numbers in the claim's unit (``percent``: ``95.0%``, a difference in
points ``+5.0 pts``; ``float``: four significant digits).
"""

from __future__ import annotations

import fnmatch
import re
import statistics
from dataclasses import dataclass, field
from typing import Any

from common.experiment import Claim, Criterion
from common.tracking import newest_runs

REPRODUCED, NOT_REPRODUCED, NOT_RUN, UNCHECKED = "reproduced", "not reproduced", "not run", "no criterion"
INCONCLUSIVE = "inconclusive"  # its criterion holds, but a claim it requires was not reproduced, or:
SPREAD_TOO_LARGE = f"{INCONCLUSIVE} (spread too large)"  # the seeds disagree and their mean is within 1 std
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN, UNCHECKED)
RunKey = tuple[str, str, str]  # (task, variant, seed)
# a metric "n/<name>": how many independent trials (test sequences) the accuracy <name> averaged
TRIALS = "n/"


# ---- which runs ----------------------------------------------------------------------------
@dataclass
class Reproduction:
    """The runs of one ``python -m common.reproduce`` (and its ``resume=true`` continuations)."""

    id: str
    preset: str
    planned: int | None  # the reproduction_size tag (None: runs logged before it existed)
    keys: set[RunKey] = field(default_factory=set)  # every (task, variant, seed) it started
    runs: dict[RunKey, Any] = field(default_factory=dict)  # the latest FINISHED run of each
    started: int = 0  # ms since the epoch, of its latest run

    @property
    def complete(self) -> bool:
        return len(self.runs) >= (self.planned if self.planned is not None else len(self.keys))

    @property
    def seeds(self) -> list[str]:
        return sorted({seed for (_, _, seed) in self.runs}, key=seed_order)


def reproductions(mlflow_client, slug: str, preset: str | None = None) -> list[Reproduction]:
    """Every reproduction of a paper (at ``preset``, if given), the newest first."""
    found: dict[str, Reproduction] = {}
    for run in newest_runs(mlflow_client, slug, max_results=50000):
        tags = run.data.tags
        if not tags.get("reproduction") or (preset and tags.get("preset") != preset):
            continue
        size = tags.get("reproduction_size")
        rep = found.setdefault(
            tags["reproduction"],
            Reproduction(tags["reproduction"], tags.get("preset", "?"), int(size) if size else None),
        )
        key = (tags.get("task", "?"), tags.get("variant", "?"), tags.get("seed", "?"))
        rep.keys.add(key)
        rep.started = max(rep.started, run.info.start_time or 0)
        if run.info.status == "FINISHED":
            rep.runs.setdefault(key, run)
    return sorted(found.values(), key=lambda r: r.started, reverse=True)


def natural_key(name: str) -> tuple:
    """Sort key that orders the numbers inside a name by value: ``acc/L128`` before ``acc/L1024``, ``mb4``
    before ``mb16``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def seed_order(seed: str) -> tuple[int, str]:
    return len(seed), seed


# ---- verdicts ------------------------------------------------------------------------------
@dataclass
class ClaimResult:
    claim: Claim
    per_seed: dict[str, float]  # seed -> our value (a difference for relative_to)
    criterion: Criterion | None
    verdict: str
    run_ids: list[str]

    @property
    def ours(self) -> float | None:
        return statistics.fmean(self.per_seed.values()) if self.per_seed else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.per_seed.values()) if len(self.per_seed) > 1 else None


REDUCE = {"min": min, "max": max, "mean": statistics.fmean}


def measured(
    runs: dict[RunKey, Any], task: str, variant: str, metric: str, reduce: str, best: str | None = None,
    select_by: str | None = None,
) -> tuple[dict, list]:  # fmt: skip
    """({seed: value}, run ids) of one (task, variant); a glob metric is reduced with ``reduce``. A variant
    glob (an lr search: "gpt_lr*") takes, per seed, the variant with the ``best`` ("min" | "max") value of
    ``select_by`` (default: the metric itself; e.g. val/loss, so that a test metric never picks the run it
    reports), and the run ids of those best runs."""
    candidates: dict[str, list[tuple[float, float, str]]] = {}
    for (t, v, seed), run in sorted(runs.items(), key=lambda item: seed_order(item[0][2])):
        if t != task or not fnmatch.fnmatchcase(v, variant):
            continue
        values = [
            [val for name, val in run.data.metrics.items() if fnmatch.fnmatchcase(name, pattern)]
            for pattern in (select_by or metric, metric)
        ]
        if all(values):
            key, value = (REDUCE[reduce](found) for found in values)
            candidates.setdefault(seed, []).append((key, value, run.info.run_id))
    chosen = {seed: (min if best == "min" else max)(found) if best else found[0]
              for seed, found in candidates.items()}  # fmt: skip
    return {seed: value for seed, (_, value, _) in chosen.items()}, [
        run_id for _, _, run_id in chosen.values()
    ]


def evaluate_claim(claim: Claim, runs: dict[RunKey, Any], preset: str) -> ClaimResult:
    m = claim.measure
    values, ids = measured(runs, m.task, m.variant, m.metric, m.reduce, m.best, m.select_by)
    if m.relative_to:
        base, base_ids = measured(runs, m.task, m.relative_to, m.metric, m.reduce, m.best, m.select_by)
        values = {seed: value - base[seed] for seed, value in values.items() if seed in base}
        ids += base_ids
    result = ClaimResult(claim, values, claim.criterion(preset), NOT_RUN, ids)
    if result.ours is not None:
        result.verdict = UNCHECKED if result.criterion is None else judge(result.criterion, values)
    return result


def judge(criterion: Criterion, per_seed: dict[str, float]) -> str:
    """A verdict that survives a rerun: reproduced when the criterion holds for every seed, or for the seed
    mean with a margin of at least one std (it holds at mean - std and at mean + std); not reproduced when
    it fails likewise; otherwise inconclusive, the seeds' spread being larger than the margin."""
    values = list(per_seed.values())
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    if all(map(criterion.holds, values)) or (criterion.holds(mean - std) and criterion.holds(mean + std)):
        return REPRODUCED
    if not any(map(criterion.holds, values)) or not (
        criterion.holds(mean - std) or criterion.holds(mean + std)
    ):
        return NOT_REPRODUCED
    return SPREAD_TOO_LARGE


def wilson(accuracy: float, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval (95% at the default z) of a proportion measured on ``trials`` Bernoulli
    trials: unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or 1 (100% of 64
    only bounds the accuracy above 94.3%)."""
    p, z2 = accuracy, z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z / (1 + z2 / trials) * (p * (1 - p) / trials + z2 / (4 * trials * trials)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate(claims: list[Claim], runs: dict[RunKey, Any], preset: str) -> list[ClaimResult]:
    results = [evaluate_claim(c, runs, preset) for c in claims]
    verdicts = {r.claim.id: r.verdict for r in results}
    for r in results:
        needed = r.claim.requires
        if needed and r.verdict == REPRODUCED and verdicts[needed] != REPRODUCED:
            r.verdict = f"{INCONCLUSIVE} ({needed}: {verdicts[needed]})"
    return results


def verdict_class(verdict: str) -> str:
    """One of ``VERDICTS`` (``inconclusive (x: not run)`` -> ``inconclusive``)."""
    return INCONCLUSIVE if verdict.startswith(INCONCLUSIVE) else verdict


# ---- shown in the claim's unit -------------------------------------------------------------
def fmt(value: Any, kind: str = "float", relative: bool = False, spread: bool = False) -> str:
    """A value as the report shows it; ``relative``: a signed difference; ``spread``: a std."""
    if value is None:
        return "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v, kind)}" for k, v in value.items())
    if isinstance(value, str):
        return value
    sign = "+" if relative and not spread else ""
    if kind == "percent":
        return f"{100 * value:{sign}.1f}{' pts' if relative or spread else '%'}"
    return f"{value:{sign}.4g}"


def shown_ours(r: ClaimResult) -> str:
    """``mean`` or ``mean ± std``, in the claim's format."""
    kind, relative = r.claim.format, bool(r.claim.measure.relative_to)
    mean = fmt(r.ours, kind, relative)
    return mean if r.std is None else f"{mean} ± {fmt(r.std, kind, relative, spread=True)}"


def shown_criterion(claim: Claim, criterion: Criterion | None) -> str:
    """The criterion in the unit of the value it judges: ``≥ 95.0%``, ``≥ +5.0 pts``, ``≤ +0.05``."""
    if criterion is None:
        return "—"
    op = {">=": "≥", "<=": "≤"}.get(criterion.op, criterion.op)
    return f"{op} {fmt(criterion.threshold, claim.format, bool(claim.measure.relative_to))}"
