"""Claims as data: read a paper's claims and its MLflow runs, write ``reports/<paper>/``.

The claims are ``common.experiment.Claim`` (parsed from paper.yaml). The report reads ONE
reproduction of the paper (the runs that ``common.reproduce`` tagged with the same
``reproduction`` id): by default the latest COMPLETE one at the preset, i.e. one where every
planned (task, variant, seed) — ``reproduction_size`` runs — FINISHED; ``--reproduction ID``
selects another. Our value of a claim is the mean over the reproduction's seeds (each seed's value
and the std are shown too; for ``relative_to``, the difference is taken seed by seed); the
criterion applies to the mean. Never a typed number.

Outputs in ``reports/<paper>/``: ``README.md``, ``figures/*.png``, ``results.json`` (verdicts and
numbers, machine-readable; the index ``reports/README.md`` is built from these) and a local,
self-contained ``report.html`` (figures embedded; not committed). A report is never replaced by
one built from fewer runs unless ``--force`` is given; a paper without runs is skipped.

    python -m common.report [paper ...] [--reproduction ID] [--preset P] [--force] [--strict]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import fnmatch
import html
import json
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import PaperzooError
from common.experiment import (
    Claim,
    Criterion,
    discover_papers,
    parse_claims,
    read_meta,
    resolve_slug,
    shown_path,
)
from common.paths import PAPERS_DIR, reports_dir, session_name
from common.tracking import client, tracking_uri

REPRODUCED, NOT_REPRODUCED, NOT_RUN, UNCHECKED = "reproduced", "not reproduced", "not run", "no criterion"
INCONCLUSIVE = "inconclusive"  # its criterion holds, but a claim it requires was not reproduced
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN, UNCHECKED)
RunKey = tuple[str, str, str]  # (task, variant, seed)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
        return sorted({seed for (_, _, seed) in self.runs}, key=_seed_order)


def reproductions(mlflow_client, slug: str, preset: str | None = None) -> list[Reproduction]:
    """Every reproduction of a paper (at ``preset``, if given), the newest first."""
    experiment = mlflow_client.get_experiment_by_name(slug)
    if experiment is None:
        return []
    found: dict[str, Reproduction] = {}
    for run in mlflow_client.search_runs([experiment.experiment_id], max_results=50000,
                                         order_by=["attributes.start_time DESC"]):  # fmt: skip
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


# ---- claims --------------------------------------------------------------------------------
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


def measured(runs: dict[RunKey, Any], task: str, variant: str, metric: str, reduce: str) -> tuple[dict, list]:
    """({seed: value}, run ids) of one (task, variant); a glob metric is reduced with ``reduce``."""
    values, ids = {}, []
    for (t, v, seed), run in sorted(runs.items(), key=lambda item: _seed_order(item[0][2])):
        if t != task or v != variant:
            continue
        matches = [val for name, val in run.data.metrics.items() if fnmatch.fnmatchcase(name, metric)]
        if matches:
            values[seed] = {"min": min, "max": max, "mean": statistics.fmean}[reduce](matches)
            ids.append(run.info.run_id)
    return values, ids


def _seed_order(seed: str) -> tuple[int, str]:
    return len(seed), seed


def evaluate_claim(claim: Claim, runs: dict[RunKey, Any], preset: str) -> ClaimResult:
    m = claim.measure
    values, ids = measured(runs, m.task, m.variant, m.metric, m.reduce)
    if m.relative_to:
        base, base_ids = measured(runs, m.task, m.relative_to, m.metric, m.reduce)
        values = {seed: value - base[seed] for seed, value in values.items() if seed in base}
        ids += base_ids
    result = ClaimResult(claim, values, claim.criterion(preset), NOT_RUN, ids)
    if result.ours is not None:
        result.verdict = (
            UNCHECKED if result.criterion is None
            else REPRODUCED if result.criterion.holds(result.ours) else NOT_REPRODUCED
        )  # fmt: skip
    return result


def evaluate(claims: list[Claim], runs: dict[RunKey, Any], preset: str) -> list[ClaimResult]:
    results = [evaluate_claim(c, runs, preset) for c in claims]
    verdicts = {r.claim.id: r.verdict for r in results}
    for r in results:
        needed = r.claim.requires
        if needed and r.verdict == REPRODUCED and verdicts[needed] != REPRODUCED:
            r.verdict = f"{INCONCLUSIVE} ({needed}: {verdicts[needed]})"
    return results


def verdict_class(verdict: str) -> str:
    return INCONCLUSIVE if verdict.startswith(INCONCLUSIVE) else verdict


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


# ---- figures -------------------------------------------------------------------------------
def _length_of(name: str) -> float | None:
    match = re.search(r"L=?(\d+)$", name)
    return float(match.group(1)) if match else None


def claim_figure(result: ClaimResult, runs: dict[RunKey, Any], path: Path) -> None:
    plt = _pyplot()
    m = result.claim.measure
    variants = sorted({v for (t, v, _) in runs if t == m.task})
    fig, ax = plt.subplots(figsize=(6, 3.6))
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
        ax.set_xlabel("sequence length")
        ax.legend(fontsize=8)
    else:  # one bar per variant: the mean over seeds, the std as an error bar
        per_seed = [list(measured(runs, m.task, v, m.metric, "mean")[0].values()) for v in variants]
        means = [statistics.fmean(xs) if xs else 0 for xs in per_seed]
        stds = [statistics.stdev(xs) if len(xs) > 1 else 0 for xs in per_seed]
        colors = ["tab:orange" if v == m.variant else "tab:blue" for v in variants]
        ax.bar(variants, means, yerr=stds if any(stds) else None, color=colors)
        ax.tick_params(axis="x", rotation=20)
        if isinstance(result.claim.paper, (int, float)) and not m.relative_to:
            ax.axhline(result.claim.paper, color="black", linestyle=":", label="paper")
    if result.criterion and not m.relative_to:
        ax.axhline(result.criterion.threshold, color="tab:red", linestyle="--", label="pass threshold")
        ax.legend(fontsize=8)
    ax.set_ylabel(m.metric)
    ax.set_title(f"{result.claim.id}: {result.verdict}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves_figure(mlflow_client, runs: dict[RunKey, Any], task: str, path: Path) -> None:
    plt = _pyplot()
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
def _results_table(runs: dict[RunKey, Any]) -> list[str]:
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


def _run_metadata(runs: dict[RunKey, Any]) -> list[str]:
    lines = [
        "| run | MLflow run id | preset | commit | device | date | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for (task, variant, seed), run in sorted(runs.items()):
        tags, info = run.data.tags, run.info
        minutes = ((info.end_time or info.start_time) - info.start_time) / 60000
        commit = tags.get("git_commit", "?")[:10] + (" (dirty)" if tags.get("git_dirty") == "true" else "")
        lines.append(f"| {task}/{variant}/s{seed} | `{info.run_id}` | {tags.get('preset')} | {commit} | "
                     f"{tags.get('device_name', '?')} | {_date(info.start_time)} | {minutes:.1f} |")  # fmt: skip
    return lines


def _date(ms: float | None = None) -> str:
    when = (
        dt.datetime.now(dt.timezone.utc)
        if ms is None
        else dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    )
    return when.strftime("%Y-%m-%d %H:%M UTC")


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


@dataclass
class Report:
    """One paper's report: the reproduction it reads, the verdicts, and whether its files were written."""

    slug: str
    title: str
    out: Path
    reproduction: Reproduction | None
    results: list[ClaimResult]
    note: str = ""  # one line: where the report was written, or why not

    def totals(self) -> dict[str, int]:
        counts = dict.fromkeys(VERDICTS, 0)
        for r in self.results:
            counts[verdict_class(r.verdict)] += 1
        return counts

    def unmet(self) -> list[str]:
        """Claims that fail ``strict``: not reproduced, inconclusive, or not run without being opt-in."""
        return [r.claim.id for r in self.results if verdict_class(r.verdict) in (NOT_REPRODUCED, INCONCLUSIVE)
                or (r.verdict == NOT_RUN and not r.claim.opt_in)]  # fmt: skip

    def ours_header(self) -> str:
        n = len(self.reproduction.seeds) if self.reproduction else 0
        return f"ours (mean ± std of {n} seeds)" if n > 1 else "ours"

    def console(self) -> str:
        """The claims table in plain text (claim, paper, ours, verdict) and the totals."""
        rep = self.reproduction
        rows = [("claim", "paper", self.ours_header(), "verdict")]
        rows += [
            (r.claim.id, fmt(r.claim.paper, r.claim.format), shown_ours(r), r.verdict) for r in self.results
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = (
            [f"{self.title}: preset {rep.preset}, reproduction {rep.id}, {len(rep.runs)} runs"] if rep else []
        )
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3] for row in rows]
        totals = ", ".join(f"{n} {verdict}" for verdict, n in self.totals().items() if n)
        return "\n".join([*lines, f"{len(self.results)} claims: {totals}"])

    def results_json(self, commits: list[str], hardware: list[str]) -> dict[str, Any]:
        rep = self.reproduction
        return {
            "paper": self.slug, "title": self.title, "preset": rep.preset, "reproduction": rep.id,
            "complete": rep.complete, "runs": len(rep.runs), "planned_runs": rep.planned,
            "seeds": [int(s) if s.isdigit() else s for s in rep.seeds], "commits": commits, "hardware": hardware,
            "date": _date(),
            "claims": [
                {"id": r.claim.id, "paper": r.claim.paper, "format": r.claim.format, "metric": r.claim.measure.metric,
                 "ours": {"mean": r.ours, "std": r.std, "per_seed": r.per_seed},
                 "criterion": r.criterion.text if r.criterion else None, "verdict": r.verdict,
                 "opt_in": r.claim.opt_in, "run_ids": r.run_ids}
                for r in self.results
            ],
            "totals": self.totals(),
        }  # fmt: skip


def write_report(report: Report, mlflow_client) -> None:
    """README.md, figures/, results.json and the local report.html of ``report``."""
    meta, rep, out = read_meta(report.slug), report.reproduction, report.out
    runs = rep.runs
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for old in figures.glob("*.png"):
        old.unlink()
    authors = meta.get("authors", "")
    authors = ", ".join(authors) if isinstance(authors, list) else authors
    commits = sorted({r.data.tags.get("git_commit", "?")[:10] for r in runs.values()})
    devices = sorted({r.data.tags.get("device_name", "?") for r in runs.values()})
    several = len(rep.seeds) > 1
    done = (
        "" if rep.complete else f" (incomplete: {len(runs)} of {rep.planned or len(rep.keys)} runs finished)"
    )
    lines = [
        f"# {meta['title']}", "",
        f"{authors} ({meta.get('year', '?')}), arXiv [{meta.get('arxiv', '?')}](https://arxiv.org/abs/{meta.get('arxiv', '')}).",
        "",
        f"Preset **{rep.preset}** · hardware: {', '.join(devices) or '—'} · commit {', '.join(commits) or '—'} · "
        f"report written {_date()} from the MLflow store, reproduction `{rep.id}`{done}, {len(runs)} runs, "
        f"seeds {', '.join(rep.seeds)}.",
        "", "## Claims", "",
        f"| claim | statement | source | paper | {report.ours_header()} |{' per seed |' if several else ''} "
        "criterion | verdict |",
        "|---|---|---|---|---|" + ("---|" if several else "") + "---|---|",
    ]  # fmt: skip
    for r in report.results:
        kind, relative = r.claim.format, bool(r.claim.measure.relative_to)
        seeds = (
            " | " + ", ".join(f"s{s}: {fmt(v, kind, relative)}" for s, v in r.per_seed.items())
            if several
            else ""
        )
        verdict = f"**{r.verdict}**" + (
            f" (opt-in: {r.claim.opt_in})" if r.verdict == NOT_RUN and r.claim.opt_in else ""
        )
        lines.append(f"| {r.claim.id} | {' '.join(str(r.claim.statement).split())} | {r.claim.source} | "
                     f"{fmt(r.claim.paper, kind)} | {shown_ours(r)}{seeds} | "
                     f"{r.criterion.text if r.criterion else '—'} | {verdict} |")  # fmt: skip
    lines += ["", "## Figures", ""]
    for task in sorted({t for (t, _, _) in runs}):
        name = f"curves_{task}.png"
        curves_figure(mlflow_client, runs, task, figures / name)
        lines.append(f"![training loss, {task}](figures/{name})")
    for r in report.results:
        if r.ours is not None:
            name = f"claim_{r.claim.id}.png"
            claim_figure(r, runs, figures / name)
            lines.append(f"![{r.claim.id}](figures/{name})")
    lines += ["", "## All final metrics", "", *_results_table(runs), "## Runs", "", *_run_metadata(runs), ""]
    markdown = "\n".join(lines)
    (out / "README.md").write_text(markdown)
    (out / "results.json").write_text(json.dumps(report.results_json(commits, devices), indent=2) + "\n")
    (out / "report.html").write_text(markdown_to_html(meta["title"], markdown, figures))


def reported_runs(out: Path) -> int:
    """How many runs the report in ``out`` was built from (0: none there)."""
    if (out / "results.json").exists():
        return json.loads((out / "results.json").read_text())["runs"]
    # reports written before results.json existed: "... from the MLflow store, 5 runs." in the README
    match = (
        re.search(r"(\d+) runs\.", (out / "README.md").read_text()) if (out / "README.md").exists() else None
    )
    return int(match.group(1)) if match else 0


def build_report(
    slug: str, preset: str | None = None, reproduction: str | None = None, uri: str | None = None,
    out_root: Path | None = None, force: bool = False,
) -> Report:  # fmt: skip
    """Evaluate the claims on one reproduction and write the report, unless that would lose runs."""
    meta = read_meta(slug)
    claims = parse_claims(meta.get("claims", []), shown_path(PAPERS_DIR / slug / "paper.yaml"))
    root = out_root or reports_dir()
    report = Report(slug, meta["title"], root / slug, None, [])
    mlflow_client = client(uri or tracking_uri())
    found = reproductions(mlflow_client, slug, preset)
    at = f" at preset {preset}" if preset else ""
    if reproduction:
        chosen = next((r for r in found if r.id == reproduction), None)
        if chosen is None:
            raise PaperzooError(
                f"{slug}: no runs of reproduction '{reproduction}'{at} in {uri or tracking_uri()}"
            )
    else:
        chosen = next((r for r in found if r.complete), None)
    if chosen is None:
        report.note = (
            f"{slug}: no complete reproduction{at} (the latest, {found[0].id}, finished {len(found[0].runs)} of "
            f"{found[0].planned or len(found[0].keys)} runs; `--reproduction {found[0].id}` reports it anyway)"
            if found else f"{slug}: no runs{at} in the MLflow store; `nox -s reproduce-{session_name(slug)}` makes them"
        )  # fmt: skip
        return report
    report.reproduction = chosen
    report.results = evaluate(claims, chosen.runs, chosen.preset)
    before = reported_runs(report.out)
    if len(chosen.runs) < before and not force:
        report.note = (f"{shown_path(report.out / 'README.md')} kept: it reads {before} runs, reproduction "
                       f"{chosen.id} has {len(chosen.runs)}; `python -m common.report {slug} --reproduction "
                       f"{chosen.id} --force` replaces it")  # fmt: skip
        return report
    write_report(report, mlflow_client)
    write_index(root)
    report.note = f"report: {report.out / 'README.md'}"
    return report


def _legacy_counts(readme: Path) -> dict[str, int]:
    """Verdict counts of a report written before results.json existed (its README's bold verdicts)."""
    text = readme.read_text()
    return {v: text.count(f"**{v}") if v == INCONCLUSIVE else text.count(f"**{v}**") for v in VERDICTS}


def write_index(root: Path) -> Path:
    lines = ["# Reports", "", "Written by `nox -s reproduce-<paper>` / `nox -s report` from the runs in MLflow.", "",
             "| paper | report | preset | reproduced | not reproduced | inconclusive | not run | no criterion |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for slug in discover_papers():
        title, out = read_meta(slug)["title"], root / slug
        if (out / "results.json").exists():
            results = json.loads((out / "results.json").read_text())
            preset, counts = results["preset"], results["totals"]
        elif (out / "README.md").exists():
            match = re.search(r"Preset \*\*(\w+)\*\*", (out / "README.md").read_text())
            preset, counts = match.group(1) if match else "?", _legacy_counts(out / "README.md")
        else:
            lines.append(f"| {title} | — | | | | | | |")
            continue
        lines.append(f"| {title} | [{slug}]({slug}/README.md) | {preset} | "
                     + " | ".join(str(counts[v]) for v in VERDICTS) + " |")  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("\n".join(lines) + "\n")
    return root / "README.md"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other command of the lab
        raise PaperzooError(f"{message}; usage: python -m common.report [paper ...] [--reproduction ID] "
                            "[--preset P] [--force] [--strict]")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="python -m common.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("papers", nargs="*", help="slugs or session names (default: every paper)")
    parser.add_argument(
        "--reproduction", help="report this reproduction id instead of the latest complete one"
    )
    parser.add_argument("--preset", help="only reproductions at this preset (smoke, cpu, gpu)")
    parser.add_argument(
        "--force", action="store_true", help="replace a report even by one built from fewer runs"
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a claim is not reproduced")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        slugs = [resolve_slug(name) for name in args.papers] or discover_papers()
        if args.reproduction and not args.papers:
            mlflow_client = client(tracking_uri())
            slugs = [
                s for s in slugs if any(r.id == args.reproduction for r in reproductions(mlflow_client, s))
            ]
            if not slugs:
                raise PaperzooError(
                    f"no paper has runs of reproduction '{args.reproduction}' in {tracking_uri()}"
                )
        unmet = []
        for slug in slugs:
            report = build_report(slug, args.preset, args.reproduction, force=args.force)
            if report.reproduction is not None:
                print(report.console())
                unmet += [f"{slug}/{claim}" for claim in report.unmet()]
            print(report.note, flush=True)
    except PaperzooError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    if args.strict and unmet:
        print(f"--strict: {len(unmet)} claims not reproduced: {', '.join(unmet)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
