"""``python -m common.reproduce <paper> [key=value ...]``: train every run of a paper, log it, report.

What ``nox -s reproduce-<paper>`` calls. For each (task, variant, seed) of the paper's plan: one
MLflow run, one checkpoint folder ``runs/<paper>/<preset>/<task>-<variant>-s<seed>/``. With
``resume=true`` finished runs are skipped and an interrupted one continues from its checkpoint in
the same MLflow run. Ends by writing ``reports/<paper>/``. Under ``torchrun`` every rank trains;
only rank 0 talks to MLflow and writes the report.
"""

from __future__ import annotations

import signal
import sys
import time
import uuid
from pathlib import Path

import torch
from omegaconf import OmegaConf

from common import report
from common.checkpoint import load_checkpoint
from common.config import flatten, load_config, to_plain
from common.errors import PaperzooError, TrainingDiverged
from common.experiment import Paper, Run, load_paper
from common.paths import runs_dir
from common.tracking import Tracker, git_info, system_info, tracking_uri
from common.train import distributed_context, train


def claim_ids(paper: Paper, run: Run) -> list[str]:
    ids = []
    for claim in paper.meta.get("claims", []):
        measure = claim.get("measure", {})
        variants = {measure.get("variant"), measure.get("relative_to")}
        if measure.get("task") == run.task and run.variant in variants:
            ids.append(claim["id"])
    return ids


def run_one(paper: Paper, cfg, run: Run, seed: int, tracker: Tracker | None, reproduction: str) -> dict:
    name = f"{run.task}/{run.variant}/s{seed}"
    ckpt = runs_dir() / paper.slug / cfg.scale / f"{run.task}-{run.variant}-s{seed}" / "last.pt"
    run_id, resuming = None, False
    if cfg.resume and ckpt.exists():
        state = load_checkpoint(ckpt)
        run_id, resuming = state.get("run_id"), True
        if state.get("finished"):
            print(f"  {name}: already finished (step {state['step']}), skipped", flush=True)
            return {}
    torch.manual_seed(seed)
    model = run.build_model()
    n_params = sum(p.numel() for p in model.parameters())
    if tracker is not None:
        tags = {
            "paper": paper.slug, "task": run.task, "variant": run.variant, "seed": str(seed),
            "preset": cfg.scale, "claims": ",".join(claim_ids(paper, run)), "reproduction": reproduction,
            **git_info(), **system_info(),
        }  # fmt: skip
        params = {**flatten(to_plain(cfg)), **{f"run.{k}": v for k, v in run.params.items()},
                  "run.task": run.task, "run.variant": run.variant, "run.seed": seed, "model.n_params": n_params,
                  **{f"train.{k}": v for k, v in flatten(to_plain(run.train)).items()}}  # fmt: skip
        run_id = tracker.start(name, tags, params, run_id=run_id if resuming else None)
    print(f"  {name}: {n_params:,} parameters{' (resuming)' if resuming else ''}", flush=True)
    started = time.time()
    try:
        result = train(
            model, run.data, run.train, seed=seed, ckpt_path=ckpt, resume=resuming, tracker=tracker,
            run_id=run_id, progress=cfg.progress, desc=name,
        )  # fmt: skip
    except TrainingDiverged:
        if tracker is not None:
            tracker.end("FAILED")
        raise
    except BaseException:
        if tracker is not None:
            tracker.end("KILLED")
        raise
    final = {"final/train_loss": result.final_loss, **result.metrics, "model/n_params": float(n_params)}
    if tracker is not None:
        tracker.log_metrics(final, result.steps)
        tracker.log_json(
            {**final, "steps": result.steps, "seconds": time.time() - started}, "final_metrics.json"
        )
        tracker.log_text(OmegaConf.to_yaml(cfg), "config.yaml")
        tracker.end("FINISHED")
    shown = ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items() if not k.startswith("model/"))
    print(f"  {name}: done in {time.time() - started:.0f}s; {shown}", flush=True)
    return final


def reproduce(name: str, overrides: list[str]) -> Path | None:
    paper = load_paper(name)
    cfg = load_config(paper.schema, paper.path / "configs", overrides)
    rank, _ = distributed_context()
    tracker = Tracker(paper.slug, tracking_uri()) if rank == 0 else None
    runs = paper.plan(cfg)
    if cfg.only:
        runs = [r for r in runs if r.task in cfg.only or r.key in cfg.only]
        if not runs:
            raise PaperzooError(
                f"only={list(cfg.only)} matches no run; runs are: {', '.join(r.key for r in paper.plan(cfg))}"
            )
    reproduction = uuid.uuid4().hex[:12]
    jobs = [(run, seed) for run in runs for seed in cfg.seeds]
    if rank == 0:
        print(
            f"{paper.title}: {len(jobs)} runs at preset '{cfg.scale}' -> MLflow {tracking_uri()}", flush=True
        )
    for i, (run, seed) in enumerate(jobs, 1):
        if rank == 0:
            print(f"[{i}/{len(jobs)}] {run.key} seed {seed}", flush=True)
        run_one(paper, cfg, run, seed, tracker, reproduction)
    if rank != 0:
        return None
    out = report.build_report(paper.slug, preset=cfg.scale)
    print(f"report: {out / 'README.md'}", flush=True)
    return out


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM: end the MLflow run as KILLED, keep the last checkpoint


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print("usage: python -m common.reproduce <paper> [key=value ...]", file=sys.stderr)
        return 2
    try:
        reproduce(argv[0], argv[1:])
    except PaperzooError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted; rerun with resume=true to continue from the last checkpoint", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
