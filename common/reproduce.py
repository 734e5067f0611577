"""``python -m common.reproduce <paper> [key=value ...]``: train every run of a paper, log it, report.

What ``nox -s reproduce-<paper>`` calls. For each (task, variant, seed) of the paper's plan (the seeds
of ``Run.trained_seeds``): one MLflow run, one checkpoint folder
``runs/<paper>/<preset>/<task>-<variant>-s<seed>/``. With
``resume=true`` finished runs are skipped and an interrupted one continues from its checkpoint in
the same MLflow run. Before any training, ``common.experiment.validate`` checks the claims against
the plan; ``only=[...]`` then keeps some runs, and no other run's data is built.

Every run is tagged with its ``reproduction`` (one id per invocation; ``resume=true`` continues the
latest reproduction of the preset in the store, and only checkpoints of its own MLflow runs: a fresh
reproduction first clears its runs' checkpoint folders, and a run a SIGKILL left RUNNING is either
continued or marked KILLED) and ``reproduction_size`` (how many runs it planned): the report reads
the latest complete reproduction. A run's MLflow params hold each value once (``run_params``): the
top-level fields of BaseConfig, its own config section (``Run.section``; the whole config when it has
none), the model as built (its zoo spec), its TrainConfig and the variant's change.

With ``workers=N`` (common.workers) N runs train at once, each in its own process with 1/N of the
threads, handed out in plan order (a run waits for the run it starts from); a run's numbers are those
of the serial loop at the same thread count.

Ends by writing ``reports/<paper>/`` and printing the claims table; exit 0 once the runs finished,
whatever the verdicts; with ``strict=true``, exit 1 when a claim is not reproduced. Under
``torchrun`` every rank trains; only rank 0 talks to MLflow and writes the report.
"""

from __future__ import annotations

import contextlib
import functools
import json
import signal
import sys
import time
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from common import report
from common.checkpoint import load_checkpoint, remove_checkpoints, restore_weights
from common.claims import TRIALS
from common.config import BaseConfig, flatten, to_plain
from common.errors import PaperzooError, TrainingDiverged
from common.experiment import Paper, Run, load_paper, validate
from common.models import zoo
from common.models.zoo import spec_of
from common.paths import discover_papers, runs_dir
from common.runs import (
    BaseRun,
    RunRef,
    count_parameters,
    has_final_weights,
    load_run_weights,
    reproduction_order,
    require_finished,
    run_dir,
    save_final,
)
from common.tracking import Tracker, git_info, newest_runs, system_info, tracking_uri
from common.train import TrainResult, distributed_context, pick_device, run_evaluation, train
from common.workers import Job, run_jobs


def claim_ids(paper: Paper, run: Run) -> list[str]:
    return [claim.id for claim in paper.claims if claim.measures(run.task, run.variant)]


def checkpoint_path(paper: Paper, cfg, run: Run, seed: int) -> Path:
    return run_dir(RunRef(paper.slug, cfg.scale, run.task, run.variant, seed)) / "last.pt"


def _is_model_config(node, config_fields: list[set[str]]) -> bool:
    return isinstance(node, dict) and set(node) in config_fields


def run_params(cfg, run: Run, seed: int, model) -> dict:
    """The run's MLflow params, each value once: BaseConfig's fields; its config section's own settings
    (``Run.section``, the whole config when ""); the model as built (``model.*``, from its zoo spec); its
    TrainConfig (``train.*``); the variant's change (``run.*``) and the run's name."""
    plain = to_plain(cfg)
    node = plain
    for part in run.section.split(".") if run.section else []:
        node = node[part]
    spec = spec_of(model)
    config_fields = [{f.name for f in fields(zoo.config_class(name))} for name in zoo.names()]
    settings = {
        k: v for k, v in node.items() if k != "train" and not (spec and _is_model_config(v, config_fields))
    }
    params = {**flatten({f.name: plain[f.name] for f in fields(BaseConfig)}),
              **flatten(settings, f"{run.section}." if run.section else "")}  # fmt: skip
    if spec is not None:
        params.update(flatten({"arch": spec["arch"], **spec["config"]}, "model."))
    else:  # a model outside the zoo: its config node as written, with the variant's change applied
        model_prefix = f"{run.section}.model." if run.section else "model."
        params.update({model_prefix + k: v for k, v in run.params.items() if model_prefix + k in params})
    params.update(flatten(to_plain(run.train), "train."))
    params.update({f"run.{k}": v for k, v in run.params.items()})
    params.update({"run.task": run.task, "run.variant": run.variant, "run.seed": seed})
    return params


def _mark_killed_if_running(tracker: Tracker | None, run_id: str | None) -> None:
    if tracker is None or not run_id:
        return
    try:
        status = tracker.client.get_run(run_id).info.status
    except Exception:  # not in this store
        return
    if status == "RUNNING":
        tracker.client.set_terminated(run_id, status="KILLED")


def _marker(paper: Paper, cfg) -> Path:
    """``runs/<paper>/<preset>/reproduction.json``: the id of the newest fresh reproduction there."""
    return runs_dir() / paper.slug / cfg.scale / "reproduction.json"


def claim_folders(
    paper: Paper, cfg, jobs: list[tuple[Run, int]], tracker: Tracker | None, reproduction: str
) -> None:
    """A fresh reproduction owns its runs' checkpoint folders: it first records its id (so that a resume after
    a kill, even before its first MLflow run, continues it), then removes an older checkpoint there (its
    MLflow run, if a SIGKILL left it RUNNING, is marked KILLED), so no later resume=true continues that one."""
    marker = _marker(paper, cfg)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"reproduction": reproduction, "runs": len(jobs)}) + "\n")
    for run, seed in jobs:
        ckpt = checkpoint_path(paper, cfg, run, seed)
        if ckpt.exists():
            with contextlib.suppress(PaperzooError):  # unreadable: nothing to mark, removed all the same
                _mark_killed_if_running(tracker, load_checkpoint(ckpt).get("run_id"))
        remove_checkpoints(ckpt)


def reproduction_to_resume(paper: Paper, cfg, tracker: Tracker) -> str:
    """resume=true continues the newest fresh reproduction of the paper at this preset: the one the runs
    folder names, else the latest in the store."""
    marker = _marker(paper, cfg)
    with contextlib.suppress(OSError, ValueError, KeyError):
        return json.loads(marker.read_text())["reproduction"]
    latest = newest_runs(tracker.client, paper.slug, f"tags.preset = '{cfg.scale}'", max_results=1)
    if not latest or not latest[0].data.tags.get("reproduction"):
        raise PaperzooError(
            f"resume=true: neither {marker} nor the MLflow store {tracking_uri()} names a reproduction of "
            f"{paper.slug} at preset '{cfg.scale}' to continue; run without resume=true"
        )
    return latest[0].data.tags["reproduction"]


def check_resumable(ckpt: Path, run_id: str | None, tracker: Tracker, reproduction: str) -> None:
    """A checkpoint is continued only when its MLflow run is in this store and in the resumed reproduction."""
    try:
        found = tracker.client.get_run(run_id).data.tags.get("reproduction") if run_id else None
    except Exception:
        found = None
    if found is None:
        raise PaperzooError(
            f"resume=true: checkpoint {ckpt} belongs to MLflow run {run_id}, which is not in the store "
            f"{tracking_uri()}; point MLFLOW_TRACKING_URI at its store, or run without resume=true"
        )
    if found != reproduction:
        raise PaperzooError(
            f"resume=true: checkpoint {ckpt} belongs to reproduction {found}, not to {reproduction} (the "
            "latest, which is being resumed); run without resume=true to start afresh"
        )


def prepare_model(run: Run, seed: int, base: BaseRun | None = None) -> tuple[nn.Module, BaseRun | None]:
    """The run's model as training starts (common.reproduce and common.golden): ``torch.manual_seed(seed)``,
    built, then the final weights of ``run.init_from`` loaded, or exactly those of ``base`` (the pinned
    base a checkpoint recorded). Returns the model and the run its weights came from, pinned."""
    torch.manual_seed(seed)
    model = run.build_model()
    source = base or run.init_from
    return model, load_run_weights(model, source) if source is not None else None


def final_step_logged(tracker: Tracker, run_id: str | None) -> bool:
    """Whether the MLflow run of a finished checkpoint ended FINISHED with its final weights: a kill after
    training but before ``log_final`` leaves neither (resume=true then redoes that step)."""
    return tracker.client.get_run(run_id).info.status == "FINISHED" and has_final_weights(
        tracker.client, run_id
    )


def evaluate_finished(model: nn.Module, run: Run, ckpt: Path, state: dict) -> TrainResult:
    """The result of a run whose training finished (``state``: its finished checkpoint): the checkpoint's
    weights loaded into ``model`` (on its base, if any), the final evaluation run again."""
    try:
        restore_weights(model, state["model"], trainable_only=state.get("base") is not None)
    except ValueError as err:
        raise PaperzooError(
            f"checkpoint {ckpt} does not match this model/config ({err}); it was left untouched: "
            "move it away or run with resume=false"
        ) from None
    device = pick_device(run.train.device)
    metrics = run_evaluation(model.to(device), run.data, device, run.train.precision)
    return TrainResult(float(state["loss"]), int(state["step"]), metrics)


def log_final(
    cfg, name: str, model: nn.Module, folder: Path, base: BaseRun | None, result: TrainResult,
    tracker: Tracker | None, started: float,
) -> dict:  # fmt: skip
    """The end of a run: its final metrics, config and final weights (common.runs: what later runs start
    from, written into ``folder``) logged, the MLflow run ended FINISHED; returns the final metrics."""
    n_params, n_trainable = count_parameters(model)
    final = {"final/train_loss": result.final_loss, **result.metrics, "model/n_params": float(n_params),
             "model/n_trainable": float(n_trainable)}  # fmt: skip
    if tracker is not None:
        tracker.log_metrics(final, result.steps)
        tracker.log_json(
            {**final, "steps": result.steps, "seconds": time.time() - started}, "final_metrics.json"
        )
        tracker.log_text(OmegaConf.to_yaml(cfg), "config.yaml")
        for path in save_final(model, folder, base):
            tracker.log_artifact(path, "model")
        tracker.end("FINISHED")
    shown = ", ".join(
        f"{k}={v:.4g}" for k, v in result.metrics.items() if not k.startswith(("model/", TRIALS))
    )
    print(f"  {name}: done in {time.time() - started:.0f}s; {shown}", flush=True)
    return final


def run_one(
    paper: Paper, cfg, run: Run, seed: int, tracker: Tracker | None, reproduction: str, size: int
) -> dict:
    name = f"{run.task}/{run.variant}/s{seed}"
    ckpt = checkpoint_path(paper, cfg, run, seed)
    run_id, resuming = None, False
    if cfg.resume and ckpt.exists():
        state = load_checkpoint(ckpt)
        run_id, resuming = state.get("run_id"), True
        if tracker is not None:
            check_resumable(ckpt, run_id, tracker, reproduction)
        if state.get("finished") and (tracker is None or final_step_logged(tracker, run_id)):
            print(f"  {name}: already finished (step {state['step']}), skipped", flush=True)
            return {}
    elif cfg.resume and tracker is not None:  # never checkpointed: a run a SIGKILL left RUNNING is ended
        query = (f"tags.reproduction = '{reproduction}' and tags.task = '{run.task}' and "
                 f"tags.variant = '{run.variant}' and tags.seed = '{seed}' and attributes.status = 'RUNNING'")  # fmt: skip
        for stale in newest_runs(tracker.client, paper.slug, query):
            _mark_killed_if_running(tracker, stale.info.run_id)
    finishing = resuming and state.get("finished")  # killed after training, before its final step
    pinned = BaseRun.from_dict(state["base"]) if resuming and state.get("base") else None
    model, base = prepare_model(run, seed, pinned)
    n_params, n_trainable = count_parameters(model)
    if tracker is not None:
        tags = {
            "paper": paper.slug, "task": run.task, "variant": run.variant, "seed": str(seed),
            "preset": cfg.scale, "claims": ",".join(claim_ids(paper, run)), "reproduction": reproduction,
            "reproduction_size": str(size), "n_params": str(n_params), **git_info(), **system_info(), **run.tags,
        }  # fmt: skip
        params = {
            **run_params(cfg, run, seed, model),
            "model.n_params": n_params,
            "model.n_trainable": n_trainable,
        }
        run_id = tracker.start(name, tags, params, run_id=run_id if resuming else None)
    note = " (trained; redoing its final step)" if finishing else " (resuming)" if resuming else ""
    print(f"  {name}: {n_params:,} parameters{note}", flush=True)
    started = time.time()
    try:
        if finishing:
            result = evaluate_finished(model, run, ckpt, state)
        else:
            result = train(
                model, run.data, run.train, seed=seed, ckpt_path=ckpt, resume=resuming, tracker=tracker,
                run_id=run_id, progress=cfg.progress, desc=name, base=base,
            )  # fmt: skip
        return log_final(cfg, name, model, ckpt.parent, base, result, tracker, started)
    except TrainingDiverged as err:
        if not run.may_diverge:
            if tracker is not None:
                tracker.end("FAILED")
            raise
        print(f"  {name}: diverged ({err}); a result of this run, the others go on", flush=True)
        if tracker is not None:  # FINISHED without final metrics: the run ended, its result is the divergence
            tracker.client.set_tag(run_id, "diverged", str(err))
            tracker.end("FINISHED")
        return {}
    except BaseException:
        if tracker is not None:
            tracker.end("KILLED")
        raise


@functools.cache
def _worker_plan(name: str, overrides: tuple[str, ...]) -> tuple[Paper, Any, dict[str, Run], Tracker]:
    paper = load_paper(name)
    cfg = paper.config(list(overrides))
    return paper, cfg, {run.key: run for run in paper.plan(cfg)}, Tracker(paper.slug, tracking_uri())


def train_in_worker(
    name: str, overrides: tuple[str, ...], key: str, seed: int, reproduction: str, size: int
) -> dict:  # fmt: skip
    """One run of the plan, in a worker process of ``common.workers`` (the plan and the tracker made once per
    worker, as the serial loop makes them once)."""
    paper, cfg, runs, tracker = _worker_plan(name, overrides)
    return run_one(paper, cfg, runs[key], seed, tracker, reproduction, size)


def run_in_workers(name: str, overrides: list[str], paper: Paper, cfg, jobs: list[tuple[Run, int]],
                   reproduction: str, size: int) -> None:  # fmt: skip
    """``workers=N``: the jobs, N at a time, each worker with its share of this process's threads; a run
    that starts from another run of the plan waits for it."""
    threads = max(1, torch.get_num_threads() // cfg.workers)
    print(f"  {cfg.workers} runs at a time, {threads} thread{'s' * (threads > 1)} each", flush=True)
    index = {
        RunRef(paper.slug, cfg.scale, run.task, run.variant, seed): i for i, (run, seed) in enumerate(jobs)
    }
    work = []
    for run, seed in jobs:
        args = (name, tuple(overrides), run.key, seed, reproduction, size)
        after = {index[run.init_from]} if run.init_from in index else set()  # a base of this reproduction
        work.append(Job(f"{run.key} seed {seed}", args, after))
    run_jobs(train_in_worker, work, cfg.workers, threads)


def selected(cfg, planned: list[Run]) -> list[Run]:
    """The runs ``only=[...]`` keeps (all without it)."""
    runs = [r for r in planned if r.task in cfg.only or r.key in cfg.only] if cfg.only else planned
    if not runs:
        raise PaperzooError(
            f"only={list(cfg.only)} matches no run; runs are: {', '.join(r.key for r in planned)}"
        )
    return runs


def jobs_of(cfg, runs: list[Run]) -> list[tuple[Run, int]]:
    return [(run, seed) for run in runs for seed in run.trained_seeds(cfg.seeds)]


def begin(paper: Paper, cfg, jobs: list[tuple[Run, int]]) -> tuple[Tracker | None, str]:
    """Before any training: the tracker (rank 0 only), the bases the jobs start from checked, and the
    reproduction id (a fresh one that claims its runs' folders, or the one ``resume=true`` continues)."""
    rank, world = distributed_context()
    if cfg.workers > 1 and world > 1:
        raise PaperzooError(f"workers={cfg.workers} and torchrun (world size {world}) do not mix; drop one")
    tracker = Tracker(paper.slug, tracking_uri()) if rank == 0 else None
    planned_refs = {RunRef(paper.slug, cfg.scale, run.task, run.variant, seed) for run, seed in jobs}
    for base in {run.init_from for run, _ in jobs if run.init_from is not None} - planned_refs:
        require_finished(base)  # common.runs: before any training
    if cfg.resume:
        reproduction = reproduction_to_resume(paper, cfg, tracker) if tracker is not None else "resumed"
    else:
        reproduction = uuid.uuid4().hex[:12]
        if rank == 0:
            claim_folders(paper, cfg, jobs, tracker, reproduction)
    if rank == 0:
        print(
            f"{paper.title}: {len(jobs)} runs at preset '{cfg.scale}' -> MLflow {tracking_uri()}", flush=True
        )
    return tracker, reproduction


def train_jobs(name: str, overrides: list[str], paper: Paper, cfg, jobs: list[tuple[Run, int]],
               tracker: Tracker | None, reproduction: str, size: int) -> None:  # fmt: skip
    """Train ``jobs`` of a reproduction of ``size`` runs: in workers, or one after the other."""
    if cfg.workers > 1 and len(jobs) > 1:
        run_in_workers(name, overrides, paper, cfg, jobs, reproduction, size)
        return
    for i, (run, seed) in enumerate(jobs, 1):
        if tracker is not None:
            print(f"[{i}/{len(jobs)}] {run.key} seed {seed}", flush=True)
        run_one(paper, cfg, run, seed, tracker, reproduction, size)


def finish(paper: Paper, cfg, reproduction: str) -> int:
    """The report of the reproduction and the claims table (rank 0); the exit status."""
    if distributed_context()[0] != 0:
        return 0
    written = report.build_report(paper.slug, preset=cfg.scale, reproduction=reproduction)
    print(f"\n{written.console()}\n{written.note}", flush=True)
    unmet = written.unmet()
    if cfg.strict and unmet:
        print(f"strict=true: {len(unmet)} claims not reproduced: {', '.join(unmet)}", file=sys.stderr)
        return 1
    return 0


def reproduce(name: str, overrides: list[str]) -> int:
    """Train, log, report; the exit status."""
    paper = load_paper(name)
    own = getattr(paper.module, "reproduce", None)  # a study whose runs come in stages (common.compare)
    if own is not None:
        return own(overrides)
    cfg = paper.config(overrides)
    planned = paper.plan(cfg)
    validate(paper, cfg, planned)
    jobs = jobs_of(cfg, selected(cfg, planned))
    tracker, reproduction = begin(paper, cfg, jobs)
    train_jobs(name, overrides, paper, cfg, jobs, tracker, reproduction, len(jobs))
    return finish(paper, cfg, reproduction)


def reproduce_all(overrides: list[str]) -> int:
    """Every paper but the template, each after those it starts from (common.runs); one paper's error is
    reported in one line and the others still run. The exit status is the worst one."""
    status = 0
    for name in reproduction_order([slug for slug in discover_papers() if not slug.startswith("_")]):
        try:
            status = max(status, reproduce(name, overrides))
        except PaperzooError as err:
            print(f"error: {name}: {err}", file=sys.stderr)
            status = max(status, err.exit_code)
    return status


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM: end the MLflow run as KILLED, keep the last checkpoint


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] != "--all"):
        print("usage: python -m common.reproduce <paper> | compare | --all [key=value ...]", file=sys.stderr)
        return 2
    try:
        if argv[0] == "--all":  # every paper but the template, each after those it starts from (common.runs)
            return reproduce_all(argv[1:])
        return reproduce(argv[0], argv[1:])
    except PaperzooError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted; rerun with resume=true to continue from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
