"""The comparison's own tables and figures in ``reports/compare/`` (common.compare's ``tables`` / ``figures``).

Read from one reproduction's runs (each tagged architecture, size, n_params_non_embedding, tokens, lr,
lr_search, kind): the sizes each architecture took; the learning-rate search per task (val/loss per lr,
the chosen one in bold); one table per task, architecture x size, each declared metric as mean ± std over
seeds; and the figures:

    loss_vs_params_<task>     final val/loss against non-embedding parameters (log), a line per architecture
    loss_vs_tokens_<task>     val/loss during training against tokens seen, the largest size
    loss_vs_time_<task>       the same against wall-clock seconds since the run started (the time of each
                              logged val/loss; runs shared the machine as the preset's workers ran them)
    loss_by_position_<task>   long documents: mean loss in each bucket of positions, a line per architecture
    recall_<task>             MQAR: recall against the number of key-value pairs
    accuracy_<task>           induction heads / state tracking: accuracy against the test length
    inference_ms, inference_state   ms per generated token and state bytes against the position (log-log)
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from common.claims import RunKey, natural_key
from common.report_figures import pyplot, save_figure

SUFFIX = {"acc": re.compile(r"^acc/L(\d+)$"), "mqar": re.compile(r"^test/acc_p(\d+)$"),
          "position": re.compile(r"^val/loss_pos_L(\d+)$"), "ms": re.compile(r"^infer/ms_per_token_p(\d+)$"),
          "state": re.compile(r"^infer/state_bytes_p(\d+)$")}  # fmt: skip


def _compared(runs: dict[RunKey, Any]) -> dict[str, dict[tuple[str, str], list[Any]]]:
    """task -> (architecture, size) -> its compared (not search) runs, one per seed."""
    out: dict[str, dict[tuple[str, str], list[Any]]] = defaultdict(lambda: defaultdict(list))
    for (task, _, _), run in sorted(runs.items()):
        tags = run.data.tags
        if tags.get("lr_search") == "false" and "architecture" in tags:
            out[task][(tags["architecture"], tags["size"])].append(run)
    return out


def _size_order(group: dict[tuple[str, str], list[Any]]) -> list[str]:
    """The task's sizes, smallest first: by their mean non-embedding parameters over the architectures."""
    params: dict[str, list[int]] = defaultdict(list)
    for (_, size), runs in group.items():
        params[size].append(int(runs[0].data.tags["n_params_non_embedding"]))
    return sorted(params, key=lambda size: statistics.fmean(params[size]))


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    mean = statistics.fmean(values)
    return f"{mean:.4g} ± {statistics.stdev(values):.2g}" if len(values) > 1 else f"{mean:.4g}"


def _seconds(run) -> float:
    return ((run.info.end_time or run.info.start_time) - run.info.start_time) / 1e3


def markdown_tables(mlflow_client, runs: dict[RunKey, Any], cfg) -> list[str]:
    compared = _compared(runs)
    lines = ["", "## Sizes", "", "Non-embedding parameters (the nearest to each target), d_model and layers:", "",
             "| architecture | " + " | ".join(f"{name} (target {spec.params:,})" for name, spec in cfg.sizes.items())
             + " |", "|---|" + "---|" * len(cfg.sizes)]  # fmt: skip
    built: dict[str, dict[str, str]] = defaultdict(dict)
    for group in compared.values():
        for (arch, size), found in group.items():
            params = found[0].data.params
            built[arch][size] = (f"{int(found[0].data.tags['n_params_non_embedding']):,} (d {params.get('model.d_model')}, "
                                 f"{params.get('model.n_layers')} layers)")  # fmt: skip
    lines += [
        f"| {arch} | " + " | ".join(built[arch].get(s, "—") for s in cfg.sizes) + " |"
        for arch in sorted(built)
    ]
    lines += ["", "## Learning-rate search", ""]
    search: dict[str, dict[str, dict[float, str]]] = defaultdict(lambda: defaultdict(dict))
    for (task, _, _), run in runs.items():
        tags = run.data.tags
        if tags.get("lr_search") == "true":
            loss = run.data.metrics.get("val/loss")
            search[task][tags["architecture"]][float(tags["lr"])] = (
                "diverged" if loss is None else f"{loss:.4f}"
            )
    edges: list[str] = []
    for task, by_arch in sorted(search.items()):
        grid = sorted({lr for found in by_arch.values() for lr in found})
        lines += [f"**{task}** (val/loss at the smallest size, seed {cfg.lr_search_seed}; **bold**: chosen):", "",
                  "| architecture | " + " | ".join(f"lr {lr:g}" for lr in grid) + " |", "|---|" + "---|" * len(grid)]  # fmt: skip
        for arch, found in sorted(by_arch.items()):
            chosen = {
                float(r[0].data.tags["lr"]) for (a, _), r in compared.get(task, {}).items() if a == arch
            }
            cells = [f"**{found[lr]}**" if lr in chosen else found.get(lr, "—") for lr in grid]
            lines.append(f"| {arch} | " + " | ".join(cells) + " |")
            if chosen & {grid[0], grid[-1]} and len(grid) > 1:
                edges.append(f"{task}/{arch}")
        lines.append("")
    if edges:  # the search did not bracket the optimum: a better lr may lie beyond the grid
        lines += [f"At the edge of the grid (the best lr may lie beyond it): {', '.join(edges)}.", ""]
    reusing = [
        f"{name} uses the lr chosen on {task.lr_from}" for name, task in cfg.tasks.items() if task.lr_from
    ]
    lines += [f"{'; '.join(reusing)}." if reusing else "", ""]
    for task, group in compared.items():
        metrics = list(cfg.tasks[task].metrics) if task in cfg.tasks else ["val/loss"]
        lines += [f"## Task: {task}", "", "Mean ± std over seeds; tokens per run; seconds per run (wall clock).", "",
                  "| architecture | size | non-embedding params | lr | tokens | seconds | " + " | ".join(metrics) + " |",
                  "|---|---|---|---|---|---|" + "---|" * len(metrics)]  # fmt: skip
        sizes = _size_order(group)
        for (arch, size), found in sorted(
            group.items(), key=lambda item: (item[0][0], sizes.index(item[0][1]))
        ):
            tags = found[0].data.tags
            cells = [_mean_std([r.data.metrics[m] for r in found if m in r.data.metrics]) for m in metrics]
            lines.append(f"| {arch} | {size} | {int(tags['n_params_non_embedding']):,} | {tags['lr']} | "
                         f"{int(tags['tokens']):,} | {statistics.fmean(_seconds(r) for r in found):.0f} | "
                         + " | ".join(cells) + " |")  # fmt: skip
        lines.append("")
    return lines


def _history(mlflow_client, run, metric: str) -> list[tuple[int, float, float]]:
    """(step, value, seconds since the run started) of a logged metric."""
    start = run.info.start_time
    return [(m.step, m.value, (m.timestamp - start) / 1e3)
            for m in sorted(mlflow_client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)]  # fmt: skip


def _by_suffix(found: list[Any], pattern: re.Pattern) -> dict[int, float]:
    """{n: mean over seeds} of the metrics ``pattern`` matches (n: its number)."""
    values: dict[int, list[float]] = defaultdict(list)
    for run in found:
        for name, value in run.data.metrics.items():
            match = pattern.match(name)
            if match:
                values[int(match.group(1))].append(value)
    return {n: statistics.fmean(v) for n, v in sorted(values.items())}


def _against(
    ax, group, pattern: re.Pattern, sizes: list[str], xlabel: str, ylabel: str, log: bool = False
) -> bool:
    drawn = False
    for (arch, size), found in sorted(group.items()):
        points = _by_suffix(found, pattern)
        if points:
            style = "-" if size == sizes[-1] else ":"
            ax.plot(list(points), list(points.values()), style, marker="o", label=f"{arch} {size}")
            drawn = True
    if log:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    return drawn


def draw(mlflow_client, runs: dict[RunKey, Any], folder: Path, cfg) -> list[tuple[str, str]]:
    plt, drawn = pyplot(), []
    for task, group in _compared(runs).items():
        kind, sizes = next(iter(group.values()))[0].data.tags["kind"], _size_order(group)
        if kind in ("lm", "long_documents"):
            fig, ax = plt.subplots(figsize=(5.5, 3.8))
            for arch in sorted({a for a, _ in group}):
                points = sorted((int(r[0].data.tags["n_params_non_embedding"]), [x.data.metrics.get("val/loss") for x in r])
                                for (a, _), r in group.items() if a == arch)  # fmt: skip
                points = [(n, [v for v in vals if v is not None]) for n, vals in points]
                points = [(n, vals) for n, vals in points if vals]
                ax.errorbar([n for n, _ in points], [statistics.fmean(v) for _, v in points],
                            yerr=[statistics.stdev(v) if len(v) > 1 else 0 for _, v in points], marker="o", capsize=3,
                            label=arch)  # fmt: skip
            ax.set(
                xscale="log",
                xlabel="non-embedding parameters",
                ylabel="final val/loss",
                title=f"{task}: equal tokens",
            )
            save_figure(fig, folder / f"loss_vs_params_{task}.png")
            drawn.append((f"{task}: val/loss against parameters", f"loss_vs_params_{task}.png"))
            for axis, name, label in (
                (0, "tokens", "tokens seen"),
                (2, "time", "seconds since the run started"),
            ):
                fig, ax = plt.subplots(figsize=(5.5, 3.8))
                for (arch, size), found in sorted(group.items()):
                    if size != sizes[-1]:
                        continue
                    history = _history(mlflow_client, found[0], "val/loss")
                    per_step = int(found[0].data.tags["tokens"]) / max(
                        1, int(found[0].data.params["train.max_steps"])
                    )
                    xs = [h[2] if axis == 2 else h[0] * per_step for h in history]
                    ax.plot(xs, [h[1] for h in history], marker=".", label=f"{arch} {size}")
                ax.set(
                    xlabel=label,
                    ylabel="val/loss",
                    title=f"{task}, size {sizes[-1]}, seed {found[0].data.tags['seed']}",
                )
                save_figure(fig, folder / f"loss_vs_{name}_{task}.png")
                drawn.append((f"{task}: val/loss against {label}", f"loss_vs_{name}_{task}.png"))
        panels = {"long_documents": ("position", "loss_by_position", "position (end of bucket)", "mean loss", False),
                  "mqar": ("mqar", "recall", "key-value pairs", "recall (test/acc)", False),
                  "induction_heads": ("acc", "accuracy", "test length", "accuracy", False),
                  "state_tracking": ("acc", "accuracy", "test length", "accuracy", False)}  # fmt: skip
        if kind in panels:
            key, name, xlabel, ylabel, log = panels[kind]
            fig, ax = plt.subplots(figsize=(5.5, 3.8))
            if _against(ax, group, SUFFIX[key], sizes, xlabel, ylabel, log):
                ax.set_title(task)
                save_figure(fig, folder / f"{name}_{task}.png")
                drawn.append((f"{task}: {ylabel} against {xlabel}", f"{name}_{task}.png"))
            else:
                plt.close(fig)
        if kind == "inference":
            for key, ylabel in (
                ("ms", "ms per generated token"),
                ("state", "state bytes (KV cache or recurrent)"),
            ):
                fig, ax = plt.subplots(figsize=(5.5, 3.8))
                _against(ax, group, SUFFIX[key], sizes, "position", ylabel, log=True)
                ax.set_title(f"{task}: batch 1")
                save_figure(fig, folder / f"inference_{key}.png")
                drawn.append((f"{task}: {ylabel} against the position", f"inference_{key}.png"))
    return sorted(drawn, key=lambda item: natural_key(item[1]))
