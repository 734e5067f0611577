"""Finished runs as artifacts that other runs start from.

``RunRef(paper, preset, task, variant, seed)`` names a run of a reproduction. Its folder,
``runs/<paper>/<preset>/<task>-<variant>-s<seed>/``, holds the checkpoint ``last.pt`` and, once the run
finished, its final weights and what rebuilds the model; both also go to the run's MLflow artifacts:

    model/model.safetensors   every tensor (tied ones once), or only the trainable ones of a run on a
                              frozen base
    model/model.json          {"class", "n_params", "n_trainable", "spec" (common.models.zoo.spec_of,
                              null for a model not built through the zoo), "weights": "all" | "trainable",
                              "init_from": the pinned base (``BaseRun``: {"ref", "run_id", "sha256"})
                              of a "trainable" run, else null}

A ``Run`` with ``init_from`` starts from those weights (``load_run_weights``): found in MLflow first (the
latest FINISHED run with the tags paper/preset/task/variant/seed, so a shared tracking server works),
else in the runs folder. The run found is pinned (``BaseRun``: MLflow run id and the sha256 of its
weights file); a run on a frozen base records that pin in its checkpoint and ``model.json``, and is
resumed or rebuilt from exactly that base. ``reproduction_order`` puts a paper after the papers its
runs start from.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save_file, save_model
from torch import nn

from common.checkpoint import has_frozen_parameters, model_weights, restore_weights
from common.errors import PaperzooError
from common.paths import runs_dir, session_name

WEIGHTS, MODEL_JSON, ARTIFACT_DIR = "model.safetensors", "model.json", "model"


@dataclass(frozen=True)
class RunRef:
    paper: str  # slug, e.g. "transformer"
    preset: str  # smoke | cpu | gpu
    task: str
    variant: str
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.paper}:{self.preset}:{self.task}/{self.variant}/s{self.seed}"

    @property
    def command(self) -> str:
        return f"nox -s reproduce-{session_name(self.paper)} -- scale={self.preset}"


@dataclass(frozen=True)
class BaseRun:
    """The finished run whose weights a run started from, pinned: its MLflow run id (None when its files
    were read from the runs folder) and the sha256 of its ``model.safetensors``. A run on a frozen base
    records it, so a resume or rebuild loads exactly that run and refuses weights that changed since."""

    ref: RunRef
    run_id: str | None
    sha256: str

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BaseRun:
        if not {"ref", "run_id", "sha256"} <= set(raw):  # written before bases were pinned
            raise PaperzooError(f"a base run recorded as {raw} is not pinned (no run id and sha256): written by "
                                "an older paperzoo; rerun the fine-tune without resume=true")  # fmt: skip
        return cls(RunRef(**raw["ref"]), raw["run_id"], raw["sha256"])

    @property
    def where(self) -> str:
        found = f"MLflow run {self.run_id}" if self.run_id else f"the folder {run_dir(self.ref)}"
        return f"{self.ref.name} ({found}, sha256 {self.sha256[:12]})"


def run_dir(ref: RunRef) -> Path:
    """The run's folder: ``last.pt`` and, once finished, ``model.safetensors`` and ``model.json``."""
    return runs_dir() / ref.paper / ref.preset / f"{ref.task}-{ref.variant}-s{ref.seed}"


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, those with requires_grad)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


# ---- writing ---------------------------------------------------------------------------------------
def save_final(model: nn.Module, folder: Path, init_from: BaseRun | None = None) -> list[Path]:
    """Write the final weights and ``model.json`` into ``folder``; returns both paths (to log to MLflow).
    ``init_from``: the base the model was loaded from (``load_run_weights``)."""
    from common.models.zoo import spec_of

    folder.mkdir(parents=True, exist_ok=True)
    trainable_only = init_from is not None and has_frozen_parameters(model)
    weights, meta = folder / WEIGHTS, folder / MODEL_JSON
    if trainable_only:
        save_file({k: v.detach().cpu().contiguous() for k, v in model_weights(model, True).items()}, weights)
    else:
        save_model(model, str(weights))  # tied tensors (GPT's lm_head and wte) are stored once
    n_params, n_trainable = count_parameters(model)
    meta.write_text(json.dumps({
        "class": type(model).__name__, "n_params": n_params, "n_trainable": n_trainable,
        "spec": spec_of(model), "weights": "trainable" if trainable_only else "all",
        "init_from": asdict(init_from) if trainable_only else None,
    }, indent=2) + "\n")  # fmt: skip
    return [weights, meta]


# ---- finding and loading ---------------------------------------------------------------------------
def has_final_weights(mlflow_client, run_id: str) -> bool:
    """Whether the MLflow run ``run_id`` holds the final weights artifact (False for a run id the store lacks)."""
    try:
        return any(f.path.endswith(WEIGHTS) for f in mlflow_client.list_artifacts(run_id, ARTIFACT_DIR))
    except Exception:  # a run id this store does not hold
        return False


def _from_mlflow(ref: RunRef, dst: Path, run_id: str | None = None) -> tuple[Path, str] | None:
    """Download the model artifacts of the MLflow run ``run_id`` (default: the latest FINISHED run of
    ``ref``) into ``dst``: (the folder, the run id), or None when that run or its weights are missing."""
    from mlflow.artifacts import download_artifacts

    from common.tracking import client, newest_runs

    mlflow_client = client()
    if run_id is None:
        tags = {"paper": ref.paper, "preset": ref.preset, "task": ref.task, "variant": ref.variant,
                "seed": ref.seed}  # fmt: skip
        query = (
            " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items()) + " and attributes.status = 'FINISHED'"
        )
        found = newest_runs(mlflow_client, ref.paper, query, max_results=1)
        if not found:
            return None
        run_id = found[0].info.run_id
    if not has_final_weights(mlflow_client, run_id):
        return None
    download_artifacts(
        run_id=run_id, artifact_path=ARTIFACT_DIR, dst_path=str(dst), tracking_uri=mlflow_client.tracking_uri
    )
    return dst / ARTIFACT_DIR, run_id


def _from_folder(ref: RunRef) -> Path | None:
    """The run folder, when its final weights are newer than its checkpoint (a rerun may be under way)."""
    folder = run_dir(ref)
    weights, ckpt = folder / WEIGHTS, folder / "last.pt"
    if not (weights.exists() and (folder / MODEL_JSON).exists()):
        return None
    return folder if not ckpt.exists() or weights.stat().st_mtime >= ckpt.stat().st_mtime else None


def _locate(source: RunRef | BaseRun, tmp: Path) -> tuple[Path, str | None]:
    """(the folder holding the final files of ``source``, its MLflow run id or None): downloaded into
    ``tmp`` from MLflow, else its run folder. A pinned ``BaseRun`` is looked up by its run id only."""
    ref = source.ref if isinstance(source, BaseRun) else source
    run_id = source.run_id if isinstance(source, BaseRun) else None
    found = None if isinstance(source, BaseRun) and run_id is None else _from_mlflow(ref, tmp, run_id)
    if found is None and (folder := _from_folder(ref)) is not None:
        found = folder, None
    if found is None:
        raise PaperzooError(
            f"run {ref.name} has not finished (no final weights in MLflow or in {run_dir(ref)}); "
            f"run `{ref.command}` first"
        )
    return found


def require_finished(ref: RunRef) -> None:
    """Fail in one line, before any training, when ``ref`` has no final weights to start from."""
    with tempfile.TemporaryDirectory() as tmp:
        _locate(ref, Path(tmp))


def _final_files(source: RunRef | BaseRun) -> tuple[dict[str, Any], dict[str, torch.Tensor], BaseRun]:
    """(model.json, the weights, the run they came from) of ``source``; a pinned ``BaseRun`` whose weights
    changed since (the base was retrained) is refused in one line."""
    with tempfile.TemporaryDirectory() as tmp:
        folder, run_id = _locate(source, Path(tmp))
        data = (folder / WEIGHTS).read_bytes()
        meta = json.loads((folder / MODEL_JSON).read_text())
    ref = source.ref if isinstance(source, BaseRun) else source
    found = BaseRun(ref, run_id, hashlib.sha256(data).hexdigest())
    if isinstance(source, BaseRun) and found.sha256 != source.sha256:
        raise PaperzooError(
            f"the weights of {ref.name} changed: this run started from {source.where}, but {found.where} "
            "holds other weights; restore that run, or retrain this one (resume=false)"
        )
    return meta, load(data), found


def _restore(
    model: nn.Module, meta: dict[str, Any], weights: dict[str, torch.Tensor], found: BaseRun
) -> None:
    """Load ``weights`` (of the run ``found``, described by ``meta``) strictly; a run saved on a frozen base
    loads that base first, then its tensors over it (the model need not freeze the same parameters)."""
    if meta["weights"] == "trainable":
        load_run_weights(model, BaseRun.from_dict(meta["init_from"]))
        weights = {**model.state_dict(), **weights}
    try:
        restore_weights(model, weights, trainable_only=False)
    except ValueError as err:
        raise PaperzooError(
            f"the final weights of {found.ref.name} do not fit this {type(model).__name__}: {err}"
        ) from None


def load_run_weights(model: nn.Module, source: RunRef | BaseRun) -> BaseRun:
    """Load the final weights of ``source`` into ``model`` (built by the new run), strictly; returns the run
    they came from, pinned (what a run started from them records). A run saved on a frozen base is
    rebuilt from exactly its base first, then its trainable tensors."""
    meta, weights, found = _final_files(source)
    _restore(model, meta, weights, found)
    return found


def build_from_run(source: RunRef | BaseRun) -> nn.Module:
    """The model of ``source`` rebuilt from its zoo spec, with its final weights (e.g. a part trained elsewhere)."""
    from common.models.zoo import from_spec

    meta, weights, found = _final_files(source)
    if meta["spec"] is None:
        raise PaperzooError(
            f"run {found.ref.name} trained a {meta['class']} not built through common.models.zoo, so it "
            "cannot be rebuilt: build the model yourself and load its weights with load_run_weights"
        )
    model = from_spec(meta["spec"])
    _restore(model, meta, weights, found)
    return model


# ---- order of reproductions ------------------------------------------------------------------------
def reproduction_order(slugs: list[str]) -> list[str]:
    """``slugs`` ordered so that a paper comes after every paper its runs start from (``Run.init_from``),
    alphabetically otherwise. Plans are read at the cpu preset (planning builds no data)."""
    from common.config import load_config
    from common.experiment import load_paper

    needs: dict[str, set[str]] = {}
    for slug in slugs:
        paper = load_paper(slug)
        runs = paper.plan(load_config(paper.schema, paper.path / "configs", ["scale=cpu"]))
        needs[slug] = {r.init_from.paper for r in runs if r.init_from is not None} - {slug}
    order: list[str] = []
    while len(order) < len(slugs):
        ready = [
            s for s in sorted(slugs) if s not in order and needs[s] <= set(order) | (needs[s] - set(slugs))
        ]
        if not ready:
            cycle = sorted(s for s in slugs if s not in order)
            raise PaperzooError(
                f"papers {', '.join(cycle)} start from each other's runs: no order can reproduce them"
            )
        order.append(ready[0])
    return order
