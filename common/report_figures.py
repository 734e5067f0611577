"""The figures of a report (``reports/<paper>/figures/*.png``), drawn from one reproduction's runs.

``curves_figure``: the training loss of every run of a task against the step. ``claim_figure``: the
claim's metric per variant (a bar per variant, in natural order, the mean over seeds with the std as an
error bar; for a glob metric such as ``acc/L*``, one line per variant against the sequence length), with the paper's
value and the pass threshold as horizontal lines. A ``relative_to`` claim is judged on a difference,
so a second panel shows that difference per seed and its mean, with the threshold line there. Legends
sit outside the axes, never over the data.
"""

from __future__ import annotations

import fnmatch
import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from common.claims import ClaimResult, RunKey, measured, natural_key, shown_criterion


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _length_of(name: str) -> float | None:
    match = re.search(r"L=?(\d+)$", name)
    return float(match.group(1)) if match else None


def save_figure(fig, path: Path) -> None:
    """Tight layout, the legend of every axes to the right of the figure, then PNG."""
    plt = pyplot()
    handles, labels = [], []
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.tight_layout()
    if handles:
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _metric_panel(ax, result: ClaimResult, runs: dict[RunKey, Any]) -> None:
    """The claim's metric for every variant of its task."""
    m = result.claim.measure
    variants = sorted({v for (t, v, _) in runs if t == m.task}, key=natural_key)  # mb4, mb8, .., mb64, mbT
    if any(ch in m.metric for ch in "*?["):  # e.g. accuracy against test length, one line per variant
        for variant in variants:
            points: dict[float, list[float]] = defaultdict(list)
            for (t, v, _), run in runs.items():
                if t == m.task and v == variant:
                    for name, val in run.data.metrics.items():
                        if fnmatch.fnmatchcase(name, m.metric) and _length_of(name) is not None:
                            points[_length_of(name)].append(val)
            xs = sorted(points)
            ax.plot(xs, [statistics.fmean(points[x]) for x in xs], marker="o", label=variant)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("L of the metric name (a sequence length, or the end of a position bucket)")
    else:  # one bar per variant: the mean over seeds, the std as an error bar
        per_seed = [list(measured(runs, m.task, v, m.metric, "mean")[0].values()) for v in variants]
        means = [statistics.fmean(xs) if xs else 0 for xs in per_seed]
        stds = [statistics.stdev(xs) if len(xs) > 1 else 0 for xs in per_seed]
        colors = [
            "tab:orange" if any(fnmatch.fnmatchcase(v, p) for p in m.variants) else "tab:blue"
            for v in variants
        ]
        ax.bar(variants, means, yerr=stds if any(stds) else None, color=colors)
        ax.tick_params(axis="x", rotation=20)
        low, high = min(m - s for m, s in zip(means, stds)), max(m + s for m, s in zip(means, stds))
        if low > 0 and high - low < 0.2 * high:  # close positive values (losses): zoom on them, not on 0
            ax.set_ylim(low - 0.25 * (high - low) - 1e-9, high + 0.25 * (high - low) + 1e-9)
    if isinstance(result.claim.paper, (int, float)) and not m.relative_to:
        ax.axhline(result.claim.paper, color="black", linestyle=":", label="paper")
    ax.set_ylabel(m.metric)


def _difference_panel(ax, result: ClaimResult) -> None:
    """Our value of a ``relative_to`` claim: the difference per seed (dots) and its mean (bar)."""
    m = result.claim.measure
    ax.bar([0], [result.ours], yerr=[result.std] if result.std else None, color="tab:orange", width=0.5)
    ax.scatter([0] * len(result.per_seed), list(result.per_seed.values()), color="black", s=12, zorder=3,
               label="seeds")  # fmt: skip
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks([0], [f"{m.variant} − {m.relative_to}"])
    ax.set_xlim(-1, 1)
    ax.set_ylabel(f"Δ {m.metric}")


def claim_figure(result: ClaimResult, runs: dict[RunKey, Any], path: Path) -> None:
    plt = pyplot()
    relative = bool(result.claim.measure.relative_to)
    fig, axes = plt.subplots(1, 2 if relative else 1, figsize=(8 if relative else 6, 3.6),
                             gridspec_kw={"width_ratios": [3, 1]} if relative else None)  # fmt: skip
    _metric_panel(axes[0] if relative else axes, result, runs)
    judged = axes[1] if relative else axes  # the axes whose values the criterion applies to
    if relative:
        _difference_panel(judged, result)
    if result.criterion:
        judged.axhline(result.criterion.threshold, color="tab:red", linestyle="--",
                       label=f"pass: {shown_criterion(result.claim, result.criterion)}")  # fmt: skip
    fig.suptitle(f"{result.claim.id}: {result.verdict}", fontsize=10)
    save_figure(fig, path)


def curves_figure(mlflow_client, runs: dict[RunKey, Any], task: str, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for (t, variant, seed), run in sorted(runs.items()):
        if t != task:
            continue
        history = sorted(
            mlflow_client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step
        )
        ax.plot([m.step for m in history], [m.value for m in history], label=f"{variant} s{seed}")
    ax.set_xlabel("step")
    ax.set_ylabel("train/loss")
    ax.set_yscale("log")
    ax.set_title(f"{task}: training loss")
    save_figure(fig, path)
