"""Golden training curves: each paper's smoke preset, loss per step, committed under tests/golden/.

``python -m common.golden [paper ...]`` (``nox -s golden``) trains every run of a paper's smoke
preset exactly as ``common.reproduce`` does (the same plan, seeds, model set-up
``common.reproduce.prepare_model``: seeded, built, started from its ``init_from`` run; the shared
loop), on the CPU, logging its losses in memory rather than to MLflow, and writes

    tests/golden/<paper>.json = {"paper", "preset", "commit", "dirty", "torch", "threads", "steps",
                                 "runs": {"<task>/<variant>/s<seed>": [[step, loss], ...]}}

``train.log_every`` is set to 1 (logging only: the numerics do not change) so the curve has every
step, and the final evaluation is skipped (it comes after the last step; a run of 0 steps, an
evaluation only, has an empty curve). A run that starts from
another run of the same plan starts from the weights this module trained for it (saved, pinned, in a
private runs folder: never a reproduction's in the MLflow store or ``runs/``, which would make the
curve depend on what was run before); one that starts from another paper's run finds it there, as
``common.reproduce`` does. ``steps`` caps how many
steps of each run are recorded and compared (``write_golden(slug, steps)``, for a paper whose smoke
preset is slow: the schedule still sees the full ``max_steps``; training just stops early). tests/test_golden.py reruns the same and compares step by step, so a
change that silently alters training (initialisation, data order, schedule) fails there with both
curves side by side; regenerate the files on purpose with ``nox -s golden``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from common.config import load_config
from common.errors import PaperzooError
from common.experiment import load_paper
from common.paths import REPO_ROOT, discover_papers, env_vars
from common.reproduce import prepare_model
from common.runs import BaseRun, RunRef, run_dir, save_final
from common.tracking import git_info
from common.train import train

GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
PRESET = "smoke"

Curve = list[tuple[int, float]]


class _Enough(Exception):
    """Raised by the recorder to leave the loop after the last compared step."""


class _LossRecorder:
    """A common.train MetricSink that keeps ``train/loss`` per step and stops training after ``last``."""

    def __init__(self, last: int):
        self.last, self.curve = last, []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if "train/loss" in metrics:
            self.curve.append((step, metrics["train/loss"]))
            if step >= self.last:
                raise _Enough


def curves(slug: str, steps: int | None = None, overrides: Sequence[str] = ()) -> dict[str, Curve]:
    """``{"<task>/<variant>/s<seed>": [(step, loss), ...]}`` of the smoke preset (+ ``overrides``), first ``steps``."""
    paper = load_paper(slug)
    cfg = load_config(paper.schema, paper.path / "configs", [f"scale={PRESET}", *overrides])
    runs, out = paper.plan(cfg), {}
    bases = {run.init_from for run in runs if run.init_from is not None}
    trained: dict[RunRef, BaseRun] = {}  # the runs of this plan that others start from, pinned
    with tempfile.TemporaryDirectory(prefix="paperzoo-golden-") as tmp:
        private = Path(tmp) / "runs"
        for run in runs:
            for seed in run.trained_seeds(cfg.seeds):
                name = f"{run.task}/{run.variant}/s{seed}"
                train_cfg = replace(run.train, log_every=1, device="cpu")
                recorder = _LossRecorder(min(steps or train_cfg.max_steps, train_cfg.max_steps))
                with (
                    env_vars({"PAPERZOO_RUNS": str(private)})
                    if run.init_from in trained
                    else contextlib.nullcontext()
                ):
                    model, base = prepare_model(run, seed, trained.get(run.init_from))  # as common.reproduce
                ckpt = Path(tmp) / name.replace("/", "-") / "last.pt"
                with contextlib.suppress(_Enough):
                    if train_cfg.max_steps == 0:  # an evaluation only: no curve
                        raise _Enough
                    train(model, run.data, train_cfg, seed=seed, ckpt_path=ckpt, tracker=recorder,
                          progress=False, desc=name, base=base)  # fmt: skip
                out[name] = recorder.curve
                if (ref := RunRef(paper.slug, PRESET, run.task, run.variant, seed)) in bases:
                    with env_vars({"PAPERZOO_RUNS": str(private)}):
                        weights, _ = save_final(model, run_dir(ref), base)
                    trained[ref] = BaseRun(ref, None, hashlib.sha256(weights.read_bytes()).hexdigest())
    return out


def golden_path(slug: str) -> Path:
    return GOLDEN_DIR / f"{slug}.json"


def write_golden(slug: str, steps: int | None = None) -> Path:
    info = git_info()
    record = {
        "paper": slug, "preset": PRESET, "commit": info["git_commit"], "dirty": info["git_dirty"] == "true",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "steps": steps,
        "runs": {name: [[s, loss] for s, loss in curve] for name, curve in curves(slug, steps).items()},
    }  # fmt: skip
    path = golden_path(slug)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = re.sub(r"\[\s+(\d+),\s+(\S+)\s+\]", r"[\1, \2]", json.dumps(record, indent=1))  # a point a line
    path.write_text(text + "\n")
    return path


def read_golden(slug: str) -> dict:
    path = golden_path(slug)
    if not path.is_file():
        raise PaperzooError(f"no golden curve {path}; create it with `nox -s golden -- {slug}`")
    return json.loads(path.read_text())


def compare(golden: dict[str, Curve], now: dict[str, Curve], tolerance: float) -> str:
    """'' when every run has the same steps and |loss - golden| <= tolerance at each; else a report.

    The report names each differing run and shows both curves as a table (step, golden, now, diff).
    """
    problems = []
    for name in sorted(set(golden) | set(now)):
        if name not in now or name not in golden:
            problems.append(f"{name}: {'missing now' if name not in now else 'not in the golden file'}")
            continue
        old, new = dict(golden[name]), dict(now[name])
        if list(old) == list(new) and all(abs(new[s] - old[s]) <= tolerance for s in old):
            continue
        rows = [f"{name}: the loss differs from the golden curve by more than {tolerance:g}",
                f"  {'step':>5} {'golden':>10} {'now':>10} {'diff':>10}"]  # fmt: skip
        for step in sorted(set(old) | set(new)):
            g, n = old.get(step), new.get(step)
            diff = f"{n - g:+10.2e}" if g is not None and n is not None else f"{'':>10}"
            mark = "  <-" if g is None or n is None or abs(n - g) > tolerance else ""
            rows.append(f"  {step:>5} {_num(g)} {_num(n)} {diff}{mark}")
        problems.append("\n".join(rows))
    return "\n".join(problems)


def _num(value: float | None) -> str:
    return f"{value:10.6f}" if value is not None else f"{'-':>10}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.golden", description=__doc__.splitlines()[0])
    parser.add_argument("papers", nargs="*", help="papers to regenerate (default: all)")
    args = parser.parse_args(argv)
    try:
        slugs = [load_paper(name).slug for name in args.papers] or discover_papers()
        for slug in slugs:
            print(f"{slug}: training the {PRESET} preset ...", flush=True)
            print(f"  wrote {write_golden(slug).relative_to(REPO_ROOT)}", flush=True)
    except PaperzooError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
