"""Claims as data: read a paper's claims and its MLflow runs, write ``reports/<paper>/``.

Each claim in ``paper.yaml``::

    - id: selcopy-s6
      statement: S6 inside the Mamba block solves selective copying
      source: Table 1                     # where in the paper
      paper: 0.998                        # the paper's value(s): a number, a {label: number} map or text
      format: percent                     # percent | float
      measure:
        task: selective_copying           # which of our runs measures it ...
        variant: s6
        metric: test/acc                  # ... with which metric; a glob ("acc/L*") is reduced
        reduce: min                       # min | max | mean (over the metrics the glob matches)
        relative_to: lti                  # optional: ours = value(variant) - value(relative_to)
      criteria: {smoke: null, cpu: ">= 0.95", gpu: ">= 0.99"}
      requires: other-claim-id           # optional: only meaningful if that claim is reproduced

Our value is the mean over seeds of the latest FINISHED run of each (task, variant, seed) at the
report's preset; never a typed number. Outputs: ``README.md``, a self-contained ``report.html``
(figures embedded), ``figures/*.png``, and the index ``reports/README.md``.
"""

from __future__ import annotations

import base64
import datetime as dt
import fnmatch
import html
import operator
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.errors import PaperzooError  # noqa: E402
from common.experiment import discover_papers, read_meta  # noqa: E402
from common.paths import reports_dir  # noqa: E402
from common.tracking import client, tracking_uri  # noqa: E402

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
REPRODUCED, NOT_REPRODUCED, NOT_RUN, UNCHECKED = "reproduced", "not reproduced", "not run", "no criterion"
INCONCLUSIVE = "inconclusive"  # its criterion holds, but a claim it requires was not reproduced


@dataclass
class ClaimResult:
    claim: dict[str, Any]
    ours: float | None
    criterion: str | None
    verdict: str
    run_ids: list[str]


def parse_criterion(text: str) -> tuple[str, float]:
    match = re.fullmatch(r"\s*(>=|<=|>|<)\s*(-?[0-9.eE+-]+)\s*", text)
    if not match:
        raise PaperzooError(f"bad criterion '{text}'; write e.g. '>= 0.95'")
    return match.group(1), float(match.group(2))


def fmt(value: Any, kind: str = "float") -> str:
    if value is None:
        return "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v, kind)}" for k, v in value.items())
    if isinstance(value, str):
        return value
    return f"{100 * value:.1f}%" if kind == "percent" else f"{value:.4g}"


# ---- reading runs --------------------------------------------------------------------------
def latest_runs(mlflow_client, slug: str, preset: str | None) -> tuple[str | None, dict[tuple, Any]]:
    """(preset, {(task, variant, seed): latest finished run}) for a paper."""
    experiment = mlflow_client.get_experiment_by_name(slug)
    if experiment is None:
        return preset, {}
    runs = mlflow_client.search_runs(
        [experiment.experiment_id], "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
        max_results=5000,
    )  # fmt: skip
    if preset is None and runs:
        preset = runs[0].data.tags.get("preset")
    chosen: dict[tuple, Any] = {}
    for run in runs:
        tags = run.data.tags
        if tags.get("preset") != preset:
            continue
        chosen.setdefault((tags.get("task"), tags.get("variant"), tags.get("seed")), run)
    return preset, chosen


def measured(
    runs: dict[tuple, Any], task: str, variant: str, metric: str, reduce: str
) -> tuple[float | None, list]:
    values, ids = [], []
    for (t, v, _), run in runs.items():
        if t != task or v != variant:
            continue
        matches = [val for name, val in run.data.metrics.items() if fnmatch.fnmatchcase(name, metric)]
        if not matches:
            continue
        values.append({"min": min, "max": max, "mean": lambda xs: sum(xs) / len(xs)}[reduce](matches))
        ids.append(run.info.run_id)
    return (sum(values) / len(values) if values else None), ids


def evaluate_claim(claim: dict[str, Any], runs: dict[tuple, Any], preset: str) -> ClaimResult:
    m = claim["measure"]
    ours, ids = measured(runs, m["task"], m["variant"], m["metric"], m.get("reduce", "mean"))
    if ours is not None and m.get("relative_to"):
        base, base_ids = measured(runs, m["task"], m["relative_to"], m["metric"], m.get("reduce", "mean"))
        ours = None if base is None else ours - base
        ids += base_ids
    criterion = (claim.get("criteria") or {}).get(preset)
    if ours is None:
        verdict = NOT_RUN
    elif not criterion:
        verdict = UNCHECKED
    else:
        op, threshold = parse_criterion(criterion)
        verdict = REPRODUCED if OPS[op](ours, threshold) else NOT_REPRODUCED
    return ClaimResult(claim, ours, criterion, verdict, ids)


# ---- figures -------------------------------------------------------------------------------
def _length_of(name: str) -> float | None:
    match = re.search(r"L=?(\d+)$", name)
    return float(match.group(1)) if match else None


def claim_figure(result: ClaimResult, runs: dict[tuple, Any], path: Path) -> None:
    m = result.claim["measure"]
    variants = sorted({v for (t, v, _) in runs if t == m["task"]})
    fig, ax = plt.subplots(figsize=(6, 3.6))
    glob = any(ch in m["metric"] for ch in "*?[")
    if glob:  # e.g. accuracy against test length, one line per variant
        for variant in variants:
            points: dict[float, list[float]] = defaultdict(list)
            for (t, v, _), run in runs.items():
                if t == m["task"] and v == variant:
                    for name, val in run.data.metrics.items():
                        if fnmatch.fnmatchcase(name, m["metric"]) and _length_of(name) is not None:
                            points[_length_of(name)].append(val)
            xs = sorted(points)
            ax.plot(xs, [sum(points[x]) / len(points[x]) for x in xs], marker="o", label=variant)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length")
        ax.legend(fontsize=8)
    else:
        values = [measured(runs, m["task"], v, m["metric"], "mean")[0] for v in variants]
        colors = ["tab:orange" if v == m["variant"] else "tab:blue" for v in variants]
        ax.bar(variants, [v if v is not None else 0 for v in values], color=colors)
        ax.tick_params(axis="x", rotation=20)
        if isinstance(result.claim.get("paper"), (int, float)) and not m.get("relative_to"):
            ax.axhline(result.claim["paper"], color="black", linestyle=":", label="paper")
    if result.criterion and not m.get("relative_to"):
        ax.axhline(
            parse_criterion(result.criterion)[1], color="tab:red", linestyle="--", label="pass threshold"
        )
        ax.legend(fontsize=8)
    ax.set_ylabel(m["metric"])
    ax.set_title(f"{result.claim['id']}: {result.verdict}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves_figure(mlflow_client, runs: dict[tuple, Any], task: str, path: Path) -> None:
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
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- writing -------------------------------------------------------------------------------
def _results_table(runs: dict[tuple, Any]) -> list[str]:
    lines = []
    for task in sorted({t for (t, _, _) in runs}):
        keys = sorted(k for k in runs if k[0] == task)
        names = sorted({n for k in keys for n in runs[k].data.metrics if not n.startswith(("lr", "train/"))})
        names = [n for n in names if n not in ("tokens_per_s",)] + ["tokens_per_s"]
        lines += [f"### {task}", "", "| variant | seed | " + " | ".join(names) + " |",
                  "|---|---|" + "---|" * len(names)]  # fmt: skip
        for key in keys:
            metrics = runs[key].data.metrics
            cells = [f"{metrics[n]:.4g}" if n in metrics else "—" for n in names]
            lines.append(f"| {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _run_metadata(runs: dict[tuple, Any]) -> list[str]:
    lines = [
        "| run | MLflow run id | preset | commit | device | date | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for (task, variant, seed), run in sorted(runs.items()):
        tags, info = run.data.tags, run.info
        date = dt.datetime.fromtimestamp(info.start_time / 1000, dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M UTC"
        )
        minutes = ((info.end_time or info.start_time) - info.start_time) / 60000
        commit = tags.get("git_commit", "?")[:10] + (" (dirty)" if tags.get("git_dirty") == "true" else "")
        lines.append(f"| {task}/{variant}/s{seed} | `{info.run_id}` | {tags.get('preset')} | {commit} | "
                     f"{tags.get('device_name', '?')} | {date} | {minutes:.1f} |")  # fmt: skip
    return lines


def markdown_to_html(title: str, markdown: str, figures: Path) -> str:
    """A tiny converter for the markdown this module writes: headings, tables, images, paragraphs."""
    out, in_table = [], False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-: "):
                continue
            tag = "th" if not in_table else "td"
            out.append(("<table>" if not in_table else "") + "<tr>" + "".join(
                f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")  # fmt: skip
            in_table = True
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        image = re.fullmatch(r"!\[(.*)\]\(figures/(.+)\)", line.strip())
        if image:
            data = base64.b64encode((figures / image.group(2)).read_bytes()).decode()
            out.append(f'<img alt="{html.escape(image.group(1))}" src="data:image/png;base64,{data}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if in_table:
        out.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;} table{border-collapse:collapse;}"
             "td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px;} img{max-width:560px;margin:4px;}")  # fmt: skip
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(out)}</body></html>")  # fmt: skip


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', text)


def build_report(
    slug: str, preset: str | None = None, uri: str | None = None, out_root: Path | None = None
) -> Path:
    meta = read_meta(slug)
    mlflow_client = client(uri or tracking_uri())
    preset, runs = latest_runs(mlflow_client, slug, preset)
    out = (out_root or reports_dir()) / slug
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for old in figures.glob("*.png"):
        old.unlink()
    results = [evaluate_claim(c, runs, preset or "") for c in meta.get("claims", [])]
    verdicts = {r.claim["id"]: r.verdict for r in results}
    for r in results:
        needed = r.claim.get("requires")
        if needed and r.verdict == REPRODUCED and verdicts.get(needed) != REPRODUCED:
            r.verdict = f"{INCONCLUSIVE} ({needed}: {verdicts.get(needed, 'unknown claim')})"

    authors = meta.get("authors", "")
    authors = ", ".join(authors) if isinstance(authors, list) else authors
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    commits = sorted({r.data.tags.get("git_commit", "?")[:10] for r in runs.values()})
    devices = sorted({r.data.tags.get("device_name", "?") for r in runs.values()})
    lines = [
        f"# {meta['title']}", "",
        f"{authors} ({meta.get('year', '?')}), arXiv [{meta.get('arxiv', '?')}](https://arxiv.org/abs/{meta.get('arxiv', '')}).",
        "",
        f"Preset **{preset or 'none'}** · hardware: {', '.join(devices) or '—'} · commit {', '.join(commits) or '—'} · "
        f"report written {now} from the MLflow store, {len(runs)} runs.",
        "", "## Claims", "",
        "| claim | statement | source | paper | ours | criterion | verdict |", "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in results:
        kind = r.claim.get("format", "float")
        if r.claim["measure"].get("relative_to") and r.ours is not None:
            shown = f"{100 * r.ours:+.1f} pts" if kind == "percent" else f"{r.ours:+.4g}"
        else:
            shown = fmt(r.ours, kind)
        lines.append(f"| {r.claim['id']} | {' '.join(str(r.claim['statement']).split())} | {r.claim.get('source', '')} | "
                     f"{fmt(r.claim.get('paper'), kind)} | {shown} | {r.criterion or '—'} | **{r.verdict}** |")  # fmt: skip
    lines += ["", "## Figures", ""]
    for task in sorted({t for (t, _, _) in runs}):
        name = f"curves_{task}.png"
        curves_figure(mlflow_client, runs, task, figures / name)
        lines.append(f"![training loss, {task}](figures/{name})")
    for r in results:
        if r.ours is not None:
            name = f"claim_{r.claim['id']}.png"
            claim_figure(r, runs, figures / name)
            lines.append(f"![{r.claim['id']}](figures/{name})")
    lines += ["", "## All final metrics", "", *_results_table(runs), "## Runs", "", *_run_metadata(runs), ""]
    markdown = "\n".join(lines)
    (out / "README.md").write_text(markdown)
    (out / "report.html").write_text(markdown_to_html(meta["title"], markdown, figures))
    write_index(out_root or reports_dir())
    return out


def verdict_counts(readme: Path) -> dict[str, int]:
    text = readme.read_text() if readme.exists() else ""
    counts = {v: text.count(f"**{v}**") for v in (REPRODUCED, NOT_REPRODUCED, NOT_RUN, UNCHECKED)}
    counts[INCONCLUSIVE] = text.count(f"**{INCONCLUSIVE}")
    return counts


def write_index(root: Path) -> Path:
    lines = ["# Reports", "", "Written by `nox -s reproduce-<paper>` / `nox -s report` from the runs in MLflow.", "",
             "| paper | report | reproduced | not reproduced | inconclusive | not run | no criterion |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for slug in discover_papers():
        readme = root / slug / "README.md"
        if not readme.exists():
            lines.append(f"| {read_meta(slug)['title']} | — | | | | | |")
            continue
        c = verdict_counts(readme)
        lines.append(f"| {read_meta(slug)['title']} | [{slug}]({slug}/README.md) | {c[REPRODUCED]} | "
                     f"{c[NOT_REPRODUCED]} | {c[INCONCLUSIVE]} | {c[NOT_RUN]} | {c[UNCHECKED]} |")  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("\n".join(lines) + "\n")
    return root / "README.md"


def main() -> int:
    import sys

    try:
        for slug in discover_papers():
            print(f"report: {build_report(slug) / 'README.md'}")
    except PaperzooError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
