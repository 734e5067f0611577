"""Claims as data: read a paper's claims and its MLflow runs, write ``reports/<paper>/``.

The report reads ONE reproduction of the paper (``common.claims``: the runs ``common.reproduce``
tagged with one ``reproduction`` id): by default the latest COMPLETE one at the preset;
``--reproduction ID`` selects another. Each claim's value is the mean ± std over the reproduction's
seeds, judged by the claim's criterion at that preset. Never a typed number. Where paper.yaml gives a
claim's ``setting``, the claims table says how the preset is scaled down from the paper (``paper → ours``).

Outputs in ``reports/<paper>/``: ``README.md``, ``figures/*.png`` (``common.report_figures``, and a
paper's own: ``figures`` in its experiment.py),
``results.json`` (verdicts and numbers, machine-readable; the index ``reports/README.md`` is built
from these) and a local, self-contained ``report.html`` (figures embedded; not committed). A report
is never replaced, unless ``--force`` is given, by one of a lower preset (smoke < cpu < gpu) or by
one built from fewer runs; a paper without runs is skipped.

    python -m common.report [paper ...] [--reproduction ID] [--preset P] [--force] [--strict]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import importlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.claims import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_RUN,
    REPRODUCED,
    TRIALS,
    VERDICTS,
    ClaimResult,
    Reproduction,
    RunKey,
    evaluate,
    fmt,
    natural_key,
    reproductions,
    seed_order,
    shown_criterion,
    shown_ours,
    verdict_class,
    wilson,
)
from common.config import SCALES
from common.errors import PaperzooError
from common.experiment import (
    COMPARE,
    Claim,
    meta_path,
    parse_claims,
    read_meta,
    resolve_slug,
    shown_path,
    studies,
)
from common.paths import reports_dir, session_name
from common.report_figures import claim_figure, curves_figure
from common.tracking import client, tracking_uri


# ---- writing -------------------------------------------------------------------------------
def _metric_rows(runs: dict[RunKey, Any], keys: list[RunKey], names: list[str], cell) -> list[str]:
    """A table's header and one row per run (variant, seed): ``cell(metrics, name)`` for each of ``names``."""
    lines = ["| variant | seed | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for key in keys:
        metrics = runs[key].data.metrics
        lines.append(f"| {key[1]} | {key[2]} | " + " | ".join(cell(metrics, name) for name in names) + " |")
    return lines


def _results_table(runs: dict[RunKey, Any]) -> list[str]:
    lines = []
    for task in sorted({t for (t, _, _) in runs}):
        keys = sorted(k for k in runs if k[0] == task)
        names = sorted({n for k in keys for n in runs[k].data.metrics if not n.startswith(("lr", "train/", TRIALS))},
                       key=natural_key)  # fmt: skip
        names = [n for n in names if n not in ("tokens_per_s",)] + ["tokens_per_s"]
        lines += [f"### {task}", "", *_metric_rows(runs, keys, names, _value), ""]
    return lines


def _value(metrics: dict[str, float], name: str) -> str:
    return f"{metrics[name]:.4g}" if name in metrics else "—"


def _with_interval(metrics: dict[str, float], name: str) -> str:
    """``99.6% [97.8, 99.9] of 256``: an accuracy with its Wilson 95% interval, or — without its trials."""
    if name not in metrics or TRIALS + name not in metrics:
        return "—"
    trials = int(metrics[TRIALS + name])
    low, high = wilson(metrics[name], trials)
    return f"{100 * metrics[name]:.1f}% [{100 * low:.1f}, {100 * high:.1f}] of {trials}"


def _intervals_table(runs: dict[RunKey, Any]) -> list[str]:
    """Each accuracy logged with its number of trials (``n/<metric>``), with its Wilson 95% interval."""
    lines = []
    for task in sorted({t for (t, _, _) in runs}):
        keys = sorted(
            k for k in runs if k[0] == task and any(n.startswith(TRIALS) for n in runs[k].data.metrics)
        )
        names = sorted({n.removeprefix(TRIALS) for k in keys for n in runs[k].data.metrics if n.startswith(TRIALS)},
                       key=natural_key)  # fmt: skip
        if names:
            lines += ["", f"{task}: accuracy with its Wilson 95% interval (of n test sequences, each one trial):",
                      "", *_metric_rows(runs, keys, names, _with_interval)]  # fmt: skip
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
                     f"{hardware(tags)} | {_date(info.start_time)} | {minutes:.1f} |")  # fmt: skip
    return lines


def _date(ms: float | None = None) -> str:
    when = (
        dt.datetime.now(dt.timezone.utc)
        if ms is None
        else dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    )
    return when.strftime("%Y-%m-%d %H:%M UTC")


def hardware(tags: dict[str, str]) -> str:
    """The machine a run trained on: its device and, on a CPU, its thread count (tags of common.tracking)."""
    device, threads = tags.get("device_name", "?"), tags.get("threads")
    if not threads or tags.get("device", "cpu") != "cpu":
        return device
    return f"{device}, {threads} thread{'' if threads == '1' else 's'}"


def mixing_warning(devices: list[str], commits: list[str]) -> list[str]:
    """A line that says so when a reproduction's runs come from several machines or commits."""
    mixed = [f"{len(devices)} machines ({'; '.join(devices)})"] if len(devices) > 1 else []
    mixed += [f"{len(commits)} commits ({', '.join(commits)})"] if len(commits) > 1 else []
    if not mixed:
        return []
    return ["", f"**Mixed runs:** this reproduction's runs come from {' and '.join(mixed)}; floating-point "
            "arithmetic differs across CPUs, thread counts and code, so compare its numbers with care."]  # fmt: skip


def shown_setting(claim: Claim, preset: str) -> str:
    """How the preset differs from the paper: ``L=4096, 16 tokens → L=64, 4 tokens`` (``—``: not given)."""
    if not claim.setting:
        return "—"
    return f"{claim.setting.get('paper', '—')} → {claim.setting.get(preset, '—')}"


def markdown_to_html(title: str, markdown: str, figures: Path) -> str:
    """A tiny converter for the markdown this module writes: headings, tables (each in a box that
    scrolls sideways when wide; verdict cells coloured), runs of images (a grid) and paragraphs."""
    out, rows, images = [], [], []

    def close_blocks():
        if rows:
            out.append('<div class="scroll"><table>' + "".join(rows) + "</table></div>")
            rows.clear()
        if images:
            out.append('<div class="figures">' + "".join(images) + "</div>")
            images.clear()

    for line in markdown.splitlines():
        image = re.fullmatch(r"!\[(.*)\]\(figures/(.+)\)", line.strip())
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set("".join(cells)) <= set("-: "):
                rows.append("<tr>" + "".join(_cell("td" if rows else "th", c) for c in cells) + "</tr>")
        elif image:
            data = base64.b64encode((figures / image.group(2)).read_bytes()).decode()
            images.append(f'<img alt="{html.escape(image.group(1))}" src="data:image/png;base64,{data}">')
        else:
            close_blocks()
            if line.startswith("#"):
                level = len(line) - len(line.lstrip("#"))
                out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
            elif line.strip():
                out.append(f"<p>{_inline(line)}</p>")
    close_blocks()
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(out)}</body></html>")  # fmt: skip


_STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;}"
    "table{border-collapse:collapse;} td,th{border:1px solid #ccc;padding:4px 8px;font-size:14px;}"
    "th{background:#f6f8fa;}"
    ".scroll{overflow-x:auto;max-width:100%;margin:0.5em 0;}"
    ".figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:12px;}"
    ".figures img{width:100%;height:auto;}"
    "td.verdict{font-weight:bold;min-width:9em;} td.reproduced{color:#116329;background:#dafbe1;}"
    "td.not-reproduced{color:#a40e26;background:#ffebe9;} td.other{color:#57606a;background:#f3f4f6;}"
)
VERDICT_CSS = {REPRODUCED: "reproduced", NOT_REPRODUCED: "not-reproduced"}  # any other verdict: "other"


def arxiv_links(ids: str | list[str]) -> str:
    """paper.yaml's ``arxiv``: one id, or a list of ids (a paper and its sequel) -> markdown links."""
    return ", ".join(f"[{i}](https://arxiv.org/abs/{i})" for i in (ids if isinstance(ids, list) else [ids]))


def _cell(tag: str, text: str) -> str:
    """A table cell; a verdict cell (``**not run**`` …) gets the CSS classes that colour it."""
    verdict = re.match(r"\*\*([^*]+)\*\*", text)
    if tag == "td" and verdict and verdict_class(verdict.group(1)) in VERDICTS:
        css = VERDICT_CSS.get(verdict_class(verdict.group(1)), "other")
        return f'<td class="verdict {css}">{_inline(text)}</td>'
    return f"<{tag}>{_inline(text)}</{tag}>"


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
        seeds = {len(r.per_seed) for r in self.results if r.per_seed}
        if len(seeds) > 1:  # some runs train more seeds than others (seeds_by_run)
            return "ours (mean ± std over its seeds)"
        return f"ours (mean ± std of {seeds.pop()} seeds)" if seeds and max(seeds) > 1 else "ours"

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
                 "setting": {"paper": r.claim.setting.get("paper"), "ours": r.claim.setting.get(rep.preset)}
                 if r.claim.setting else None, "spread": r.claim.spread.get(rep.preset),
                 "opt_in": r.claim.opt_in, "run_ids": r.run_ids}
                for r in self.results
            ],
            "totals": self.totals(),
        }  # fmt: skip


def seeds_line(runs: dict[RunKey, Any]) -> str:
    """ "seeds 0, 1" when every (task, variant) trained the same seeds, else which trained which."""
    by_run: dict[str, list[str]] = {}
    for task, variant, seed in sorted(runs, key=lambda k: (k[0], k[1], seed_order(k[2]))):
        by_run.setdefault(f"{task}/{variant}", []).append(seed)
    groups: dict[tuple[str, ...], list[str]] = {}
    for key, seeds in by_run.items():
        groups.setdefault(tuple(seeds), []).append(key)
    if len(groups) <= 1:
        return f"seeds {', '.join(next(iter(groups), ()))}"
    ordered = sorted(groups.items(), key=lambda g: (-len(g[0]), g[1]))
    return "seeds " + "; ".join(f"{', '.join(seeds)} ({', '.join(keys)})" for seeds, keys in ordered)


def study_module(slug: str):
    """The module with a study's plan and its optional ``figures`` / ``tables`` (the comparison: common.compare)."""
    return importlib.import_module("common.compare" if slug == COMPARE else f"papers.{slug}.experiment")


def own_figures(slug: str, mlflow_client, runs: dict[RunKey, Any], folder: Path) -> list[str]:
    """The markdown lines of the paper's own figures (``figures`` in its experiment.py, if any); one that fails
    (e.g. an artifact missing from the store) is a one-line warning, and the rest of the report is written."""
    draw = getattr(study_module(slug), "figures", None)
    if draw is None:
        return []
    try:
        return [f"![{title}](figures/{name})" for title, name in draw(mlflow_client, runs, folder)]
    except Exception as err:  # a figure is not worth losing the report for
        print(f"warning: {slug}: its own figures were not drawn: {str(err).splitlines()[0]}", file=sys.stderr)
        return []


def own_tables(slug: str, mlflow_client, runs: dict[RunKey, Any]) -> list[str]:
    """The markdown lines of a study's own tables (``tables(mlflow_client, runs)``, e.g. the comparison's
    architecture x size tables), placed after its claims."""
    tables = getattr(study_module(slug), "tables", None)
    return tables(mlflow_client, runs) if tables is not None else []


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
    devices = sorted({hardware(r.data.tags) for r in runs.values()})
    several = len(rep.seeds) > 1
    settings = any(r.claim.setting for r in report.results)  # the column only where a paper.yaml fills it
    done = (
        "" if rep.complete else f" (incomplete: {len(runs)} of {rep.planned or len(rep.keys)} runs finished)"
    )
    lines = [
        f"# {meta['title']}", "",
        f"{authors} ({meta.get('year', '?')}), arXiv {arxiv_links(meta.get('arxiv', '?'))}.",
        "",
        f"Preset **{rep.preset}** · hardware: {', '.join(devices) or '—'} · commit {', '.join(commits) or '—'} · "
        f"report written {_date()} from the MLflow store, reproduction `{rep.id}`{done}, {len(runs)} runs, "
        f"{seeds_line(runs)}.",
        *mixing_warning(devices, commits),
        "", "## Claims", "",
        f"| claim | statement | source |{' setting (paper → ours) |' if settings else ''} paper | "
        f"{report.ours_header()} |{' per seed |' if several else ''} criterion | verdict |",
        "|---|---|---|---|---|" + ("---|" if settings else "") + ("---|" if several else "") + "---|---|",
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
        setting = f"{shown_setting(r.claim, rep.preset)} | " if settings else ""
        lines.append(f"| {r.claim.id} | {' '.join(str(r.claim.statement).split())} | {r.claim.source} | "
                     f"{setting}{fmt(r.claim.paper, kind)} | {shown_ours(r)}{seeds} | "
                     f"{shown_criterion(r.claim, r.criterion)} | {verdict} |")  # fmt: skip
    spreads = [
        (r.claim.id, r.claim.spread[rep.preset]) for r in report.results if rep.preset in r.claim.spread
    ]
    if spreads:
        lines += ["", "Run-to-run spread measured before judging (paper.yaml):", ""]
        lines += [f"- {claim}: {text}" for claim, text in spreads]
    lines += _intervals_table(runs)
    lines += own_tables(report.slug, mlflow_client, runs)
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
    lines += own_figures(report.slug, mlflow_client, runs, figures)
    lines += ["", "## All final metrics", "", *_results_table(runs), "## Runs", "", *_run_metadata(runs), ""]
    markdown = "\n".join(lines)
    (out / "README.md").write_text(markdown)
    (out / "results.json").write_text(json.dumps(report.results_json(commits, devices), indent=2) + "\n")
    (out / "report.html").write_text(markdown_to_html(meta["title"], markdown, figures))


def existing_report(out: Path) -> dict[str, Any] | None:
    """The preset, run count and verdict totals of the report in ``out`` (None: no report there)."""
    if (out / "results.json").exists():
        return json.loads((out / "results.json").read_text())
    return None


def preset_rank(preset: str) -> int:
    """smoke < cpu < gpu; an unknown preset (runs logged without the tag) ranks below them all."""
    return SCALES.index(preset) if preset in SCALES else -1


def why_kept(before: dict[str, Any] | None, chosen: Reproduction) -> str:
    """Why the existing report ``before`` must stay rather than be replaced by one of ``chosen``: it
    is of a higher preset (smoke < cpu < gpu) or built from more runs; '' when it may be replaced."""
    if before is None:
        return ""
    if preset_rank(before["preset"]) > preset_rank(chosen.preset):
        return f"it is a {before['preset']} report, reproduction {chosen.id} is at preset {chosen.preset}"
    if len(chosen.runs) < before["runs"]:
        return f"it reads {before['runs']} runs, reproduction {chosen.id} has {len(chosen.runs)}"
    return ""


def build_report(
    slug: str, preset: str | None = None, reproduction: str | None = None, uri: str | None = None,
    out_root: Path | None = None, force: bool = False,
) -> Report:  # fmt: skip
    """Evaluate the claims on one reproduction and write the report, unless (without ``force``) that
    would replace a report of a higher preset or one built from more runs."""
    meta = read_meta(slug)
    claims = parse_claims(meta.get("claims", []), shown_path(meta_path(slug)))
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
            if found else f"{slug}: no runs{at} in the MLflow store; `{'nox -s compare' if slug == COMPARE else f'nox -s reproduce-{session_name(slug)}'}` makes them"
        )  # fmt: skip
        return report
    report.reproduction = chosen
    report.results = evaluate(claims, chosen.runs, chosen.preset)
    kept = "" if force else why_kept(existing_report(report.out), chosen)
    if kept:
        report.note = (f"{shown_path(report.out / 'README.md')} kept: {kept}; `python -m common.report {slug} "
                       f"--reproduction {chosen.id} --force` replaces it")  # fmt: skip
        return report
    write_report(report, mlflow_client)
    write_index(root)
    report.note = f"report: {report.out / 'README.md'}"
    return report


def write_index(root: Path) -> Path:
    lines = ["# Reports", "", "Written by `nox -s compare` (the comparison of architectures, first), `nox -s reproduce-<paper>` "
             "and `nox -s report` from the runs in MLflow.", "",
             "| study | report | preset | reproduced | not reproduced | inconclusive | not run | no criterion |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for slug in studies():  # the comparison first: the lab's front page
        title, summary = read_meta(slug)["title"], existing_report(root / slug)
        if summary is None:
            lines.append(f"| {title} | — | | | | | | |")
            continue
        lines.append(f"| {title} | [{slug}]({slug}/README.md) | {summary['preset']} | "
                     + " | ".join(str(summary["totals"][v]) for v in VERDICTS) + " |")  # fmt: skip
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
        "--force",
        action="store_true",
        help="replace a report even by one of a lower preset or from fewer runs",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a claim is not reproduced")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        slugs = [resolve_slug(name) for name in args.papers] or studies()
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
