"""``nox -s compare``: every architecture of the zoo on the same tasks, token budgets and parameter budgets.

The comparison is declared in one file, ``comparisons/architectures.yaml``: its title and claims (parsed as a
paper's, ``common.experiment``), ``base`` (every preset) and ``presets`` (smoke / cpu / gpu), which give

    architectures   zoo name -> its fixed config fields; ``head_dim: 32`` sets n_heads = d_model / 32 (or
                    head_size = 32) at every size
    sizes           name -> {params: target non-embedding parameters, n_layers}; each architecture takes the
                    d_model (a multiple of ``d_model_multiple``) whose non-embedding parameter count (embedding
                    tables and the output head excluded, as Kaplan et al. 2020 count) is nearest the target
    tasks           name -> {kind, options, sizes, architectures, lr_from, metrics, train} (common.compare_tasks)
    lr_grid         the learning rates each architecture searches, per task, at the task's smallest size
    seeds           the seeds of every compared run; the search trains ``lr_search_seed``, a seed of its own,
                    so that no reported run is the one its learning rate was picked on

A run is ``<task>/<architecture>_<size>`` (a search run: ``..._lr<lr>``) and trains max_steps x batch_size x
train_len tokens, the same for every architecture of the task. It is tagged ``architecture``, ``size``,
``n_params``, ``tokens``, ``lr`` and ``task``, in the one MLflow experiment ``compare``.

It runs in two stages of one reproduction (``common.reproduce``: workers, resume=true, the report):
1. the learning-rate search: for each task and architecture, every lr of the grid at the smallest size; a
   search run that diverges is a result (``Run.may_diverge``);
2. the comparison: every size, each architecture at the lr of its lowest ``val/loss`` in the search
   (``lr_chosen``, passed as an override so that every worker plans the same runs). A task with
   ``lr_from: <task>`` reuses that task's choice; the inference task trains nothing.

``resume=true`` continues a partial comparison: finished runs are skipped, the choice is read again.
"""

from __future__ import annotations

import functools
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from common import config as common_config
from common.compare_tasks import build_task, lengths
from common.config import BaseConfig, TrainConfig, to_plain, train_config
from common.errors import PaperzooError
from common.experiment import COMPARE, COMPARISON_FILE, LazyTask, Run, load_paper, shown_path, validate
from common.models import zoo
from common.tracking import newest_runs

FILE = shown_path(COMPARISON_FILE)
D_MODELS = range(1, 129)  # multiples of d_model_multiple tried when sizing a model


@dataclass
class SizeConfig:
    params: int = 1_000_000  # the target of non-embedding parameters
    n_layers: int = 4


@dataclass
class TaskConfig:
    kind: str = "lm"  # common.compare_tasks.KINDS
    options: dict[str, Any] = field(default_factory=dict)  # the kind's class's arguments
    sizes: list[str] = field(default_factory=list)  # [] = every size
    architectures: list[str] = field(default_factory=list)  # [] = every architecture
    lr_from: str = ""  # another task whose chosen lr each architecture reuses ("" = a search of its own)
    metrics: list[str] = field(default_factory=lambda: ["val/loss"])  # the report's table shows these
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class Config(BaseConfig):
    architectures: dict[str, dict[str, Any]] = field(default_factory=dict)
    sizes: dict[str, SizeConfig] = field(default_factory=dict)
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    lr_grid: list[float] = field(default_factory=list)
    lr_search_seed: int = 100
    min_lr_ratio: float = 0.1  # each run's cosine schedule ends at lr x this
    d_model_multiple: int = 32
    lr_chosen: dict[str, float] = field(default_factory=dict)  # "<task>/<arch>" -> lr, set by the search


# ---- the declaration ---------------------------------------------------------------------------------
def load_config(overrides: list[str] | None = None):
    """The comparison's config: the schema, the file's ``base``, its preset, then ``overrides``; checked."""
    try:
        raw = yaml.safe_load(COMPARISON_FILE.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise PaperzooError(f"cannot read {FILE}: {str(err).splitlines()[0]}") from None
    presets = {"base": raw.get("base"), **(raw.get("presets") or {})}
    cfg = common_config.load_config(Config, Path(FILE), overrides, presets)
    check(cfg)
    return cfg


def check(cfg) -> None:
    """What a declaration can get wrong, in one line: unknown architectures, sizes, tasks or kinds, options
    the task's class does not take, an lr_from naming no searched task, an empty grid."""
    known = zoo.names()
    for arch in cfg.architectures:
        if arch not in known:
            raise PaperzooError(f"{FILE}: unknown architecture '{arch}'; the zoo has: {', '.join(known)}")
    if not cfg.architectures or not cfg.sizes or not cfg.tasks:
        raise PaperzooError(f"{FILE}, preset {cfg.scale}: declare architectures, sizes and tasks")
    if not cfg.lr_grid or any(lr <= 0 for lr in cfg.lr_grid):
        raise PaperzooError(f"{FILE}: lr_grid must list positive learning rates; got {list(cfg.lr_grid)}")
    for name, task in cfg.tasks.items():
        where = f"{FILE}, task '{name}'"
        lengths(task.kind, to_plain(task.options), where)  # the kind and its options
        for what, given, declared in (("size", task.sizes, cfg.sizes), ("architecture", task.architectures,
                                                                         cfg.architectures)):  # fmt: skip
            for item in given:
                if item not in declared:
                    raise PaperzooError(f"{where}: unknown {what} '{item}'; declared: {', '.join(declared)}")
        source = cfg.tasks.get(task.lr_from) if task.lr_from else None
        if task.lr_from and (source is None or source.lr_from or source.kind == "inference"):
            raise PaperzooError(
                f"{where}: lr_from '{task.lr_from}' must name a task with a search of its own"
            )


def sizes_of(cfg, task: TaskConfig) -> list[str]:
    """The task's sizes, smallest first (the search runs at the first)."""
    return sorted(task.sizes or list(cfg.sizes), key=lambda s: cfg.sizes[s].params)


def searches(task: TaskConfig) -> bool:
    return task.kind != "inference" and not task.lr_from


# ---- sizing ---------------------------------------------------------------------------------------------
def non_embedding_parameters(model: nn.Module) -> int:
    """Parameters outside the embedding tables and the output head (tied or not)."""
    excluded = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    head = getattr(model, "head", None)
    excluded |= {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)


def _with_width(arch: str, fixed: dict[str, Any], d_model: int, n_layers: int) -> dict[str, Any]:
    """The architecture's config at this width: ``head_dim`` becomes n_heads (or head_size)."""
    config = {k: v for k, v in fixed.items() if k != "head_dim"}
    if "head_dim" in fixed:
        heads = "n_heads" in _field_names(arch)
        config["n_heads" if heads else "head_size"] = (
            d_model // fixed["head_dim"] if heads else fixed["head_dim"]
        )
    return {**config, "d_model": d_model, "n_layers": n_layers}


@functools.cache
def _sized(arch: str, fixed_items: tuple, target: int, n_layers: int, multiple: int) -> tuple[int, int]:
    """(d_model, non-embedding parameters) nearest ``target`` on a log scale."""
    fixed, best = dict(fixed_items), None
    step = max(multiple, fixed.get("head_dim", 1))
    for d_model in (step * i for i in D_MODELS):
        with torch.device("meta"):
            model = zoo.build(arch, _with_width(arch, fixed, d_model, n_layers), vocab_size=2,
                              **({"block_size": 8} if "block_size" in _field_names(arch) else {}))  # fmt: skip
        n = non_embedding_parameters(model)
        if best is None or abs(math.log(n / target)) < abs(math.log(best[1] / target)):
            best = (d_model, n)
        if n > 2 * target:
            break
    return best


@functools.cache
def _field_names(arch: str) -> frozenset[str]:
    return frozenset(f.name for f in fields(zoo.config_class(arch)))


def model_config(cfg, arch: str, size: str) -> tuple[dict[str, Any], int]:
    """(the architecture's config at ``size`` without the task's fields, its non-embedding parameters)."""
    fixed = to_plain(cfg.architectures[arch]) or {}
    spec = cfg.sizes[size]
    d_model, n = _sized(arch, tuple(sorted(fixed.items())), spec.params, spec.n_layers, cfg.d_model_multiple)
    return _with_width(arch, fixed, d_model, spec.n_layers), n


# ---- the plan ------------------------------------------------------------------------------------------
def _build(arch: str, config: dict[str, Any], max_len: int, data: LazyTask) -> nn.Module:
    extra = {"block_size": max_len} if "block_size" in _field_names(arch) else {}
    return zoo.build(arch, {**config, **extra}, vocab_size=data.task.vocab_size)


def chosen_key(cfg, task_name: str, arch: str) -> str:
    """The ``lr_chosen`` key of a task's architecture: its own search's, or its lr_from task's."""
    return f"{cfg.tasks[task_name].lr_from or task_name}/{arch}"


def plan(cfg) -> list[Run]:
    """The search runs, then every task's runs at each size (the largest first: workers then pack better)."""
    search, compared = [], []
    for name, task in cfg.tasks.items():
        options = to_plain(task.options)
        max_len, train_len = lengths(task.kind, options, name)
        data = LazyTask(functools.partial(build_task, task.kind, options))
        sizes = sizes_of(cfg, task)
        for arch in task.architectures or list(cfg.architectures):
            grid = cfg.lr_grid if searches(task) else []
            lr = cfg.lr_chosen.get(chosen_key(cfg, name, arch), math.nan) if task.kind != "inference" else 0.0
            for size, lr_, is_search in [(sizes[0], g, True) for g in grid] + [
                (s, lr, False) for s in sizes[::-1]
            ]:
                train = train_config(task.train)
                train.lr, train.min_lr = lr_, lr_ * cfg.min_lr_ratio
                config, n = model_config(cfg, arch, size)
                tokens = train.max_steps * train.batch_size * train.grad_accum * train_len
                variant = f"{arch}_{size}" + (f"_lr{lr_:g}" if is_search else "")
                tags = {"architecture": arch, "size": size, "n_params_non_embedding": str(n), "tokens": str(tokens),
                        "lr": f"{lr_:g}", "lr_search": str(is_search).lower(), "kind": task.kind}  # fmt: skip
                run = Run(name, variant, functools.partial(_build, arch, config, max_len, data), data, train,
                          params={"architecture": arch, "size": size, "lr_search": is_search}, section=f"tasks.{name}",
                          seeds=(cfg.lr_search_seed,) if is_search else None, tags=tags, may_diverge=is_search)  # fmt: skip
                (search if is_search else compared).append(run)
    return search + compared


def choose_lrs(mlflow_client, reproduction: str) -> dict[str, float]:
    """``{"<task>/<arch>": lr}``: per searched task and architecture, the lr of the lowest final val/loss (the
    mean over search seeds) among the reproduction's search runs; a diverged run has none, never chosen."""
    found: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    query = (
        f"tags.reproduction = '{reproduction}' and tags.lr_search = 'true' and attributes.status = 'FINISHED'"
    )
    for run in newest_runs(mlflow_client, COMPARE, query):
        tags, loss = run.data.tags, run.data.metrics.get("val/loss")
        if loss is not None and math.isfinite(loss):
            found[f"{tags['task']}/{tags['architecture']}"][float(tags["lr"])].append(loss)
    return {key: min(by_lr, key=lambda lr: statistics.fmean(by_lr[lr])) for key, by_lr in found.items()}


def reproduce(overrides: list[str]) -> int:
    """What ``python -m common.reproduce compare`` (``nox -s compare``) runs: stage 1 (the search), the
    choice, stage 2 (the comparison), the report; the exit status. ``only=[...]`` keeps the searches its runs
    need; an lr given in ``lr_chosen`` skips that search."""
    from common.reproduce import begin, finish, jobs_of, selected, train_jobs

    paper = load_paper(COMPARE)
    cfg = paper.config(overrides)
    planned = paper.plan(cfg)
    validate(paper, cfg, planned)
    compared = [r for r in selected(cfg, planned) if r.tags["lr_search"] == "false"]
    needed = {
        chosen_key(cfg, r.task, r.tags["architecture"]) for r in compared if r.tags["kind"] != "inference"
    }
    search = [r for r in planned if r.tags["lr_search"] == "true" and f"{r.task}/{r.tags['architecture']}" in
              needed - set(cfg.lr_chosen)]  # fmt: skip
    jobs = jobs_of(cfg, search + compared)
    tracker, reproduction = begin(paper, cfg, jobs)
    if tracker is None:
        raise PaperzooError("nox -s compare runs in one process (workers=N), not under torchrun")
    train_jobs(COMPARE, overrides, paper, cfg, jobs_of(cfg, search), tracker, reproduction, len(jobs))
    chosen = {**choose_lrs(tracker.client, reproduction), **to_plain(cfg.lr_chosen)}
    missing = sorted(needed - set(chosen))
    if missing:
        raise PaperzooError(f"no lr for {', '.join(missing)}: every lr of its search diverged or it was not run; "
                            "widen lr_grid downwards, or give lr_chosen={'<task>/<arch>': lr}")  # fmt: skip
    shown = ", ".join(f"{key} {chosen[key]:g}" for key in sorted(needed))
    print(f"learning rates chosen on val/loss: {shown}", flush=True)
    overrides = [*overrides, "lr_chosen={" + ", ".join(f"'{k}': {v!r}" for k, v in chosen.items()) + "}"]
    cfg = paper.config(overrides)
    compared = [r for r in selected(cfg, paper.plan(cfg)) if r.tags["lr_search"] == "false"]
    train_jobs(COMPARE, overrides, paper, cfg, jobs_of(cfg, compared), tracker, reproduction, len(jobs))
    return finish(paper, cfg, reproduction)


def figures(mlflow_client, runs, folder) -> list[tuple[str, str]]:
    from common.compare_report import draw

    return draw(mlflow_client, runs, folder, load_paper(COMPARE).config(["scale=" + _preset(runs)]))


def tables(mlflow_client, runs) -> list[str]:
    from common.compare_report import markdown_tables

    return markdown_tables(mlflow_client, runs, load_paper(COMPARE).config(["scale=" + _preset(runs)]))


def _preset(runs) -> str:
    return next(iter(runs.values())).data.tags.get("preset", "cpu")


if __name__ == "__main__":
    from common.reproduce import main

    sys.exit(main([COMPARE, *sys.argv[1:]]))
