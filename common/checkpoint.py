"""Atomic checkpoints: write to a temporary file, fsync, then rename over the old one.

A checkpoint holds everything needed to continue a run exactly: model, optimizer, scheduler,
RNG states, the step (which is also the data position: batches are a pure function of
(seed, step)), the MLflow run id and whether the run finished. Loading uses
``torch.load(weights_only=True)``; a corrupt file is reported in one line and left untouched.

A run that starts from another run's weights and freezes part of them (LoRA, BitFit: ``base`` set,
some parameters ``requires_grad=False``) checkpoints only its trainable parameters plus a reference to
its base (``"base"``: the pinned ``common.runs.BaseRun`` as a dict: RunRef, MLflow run id, sha256 of the
base's weights); the model is rebuilt from exactly that base, then those tensors.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.errors import PaperzooError

REQUIRED_KEYS = ("model", "optimizer", "scheduler", "step", "rng")


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_python_rng(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_rng(state: Any) -> tuple:
    version, internal, gauss = state  # weights_only loading may turn tuples into lists
    return (version, tuple(internal), gauss)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise PaperzooError(f"no checkpoint at {path} to resume from; run without resume=true") from None
    except Exception as err:
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise PaperzooError(
            f"checkpoint {path} is corrupt or unreadable ({reason}); it was left untouched: "
            "move it away or run with resume=false"
        ) from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise PaperzooError(
            f"checkpoint {path} is incomplete (missing {', '.join(missing)}); it was left untouched: "
            "move it away or run with resume=false"
        )
    return state


def has_frozen_parameters(model: nn.Module) -> bool:
    return any(not p.requires_grad for p in model.parameters())


def model_weights(model: nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """The whole state dict, or only the parameters with ``requires_grad`` (a run on a frozen base)."""
    if trainable_only:
        return {name: p for name, p in model.named_parameters() if p.requires_grad}
    return model.state_dict()


def _tensor_names(model: nn.Module) -> dict[str, str]:
    """Every state-dict name of ``model`` -> the first name of the same tensor: tied weights (a language
    model's head and embedding) are one tensor under two names, which safetensors stores once."""
    first: dict[int, str] = {}
    return {name: first.setdefault(id(t), name) for name, t in model.state_dict(keep_vars=True).items()}


def _listed(names: set[str]) -> str:
    return ", ".join(sorted(names)[:3]) + (" ..." if len(names) > 3 else "")


def restore_weights(model: nn.Module, weights: dict[str, torch.Tensor], trainable_only: bool) -> None:
    """Load every tensor of ``model`` from ``weights`` or, ``trainable_only``, exactly its trainable tensors
    (those saved on top of its base); a tied tensor may come under either of its names. ValueError with a
    one-line reason when a tensor is missing or unknown, or a shape differs."""
    tensor_of = _tensor_names(model)
    unknown = set(weights) - set(tensor_of)
    if trainable_only:
        expected = {tensor_of[name] for name, p in model.named_parameters() if p.requires_grad}
    else:
        expected = set(tensor_of.values())
    missing = expected - {tensor_of[name] for name in weights if name in tensor_of}
    extra = {name for name in weights if name in tensor_of and tensor_of[name] not in expected}
    if missing or unknown or extra:
        reasons = [f"missing {_listed(missing)}"] if missing else []
        reasons += (
            [f"unexpected {_listed(unknown | extra)}{' (frozen here)' if extra else ''}"]
            if unknown or extra
            else []
        )
        raise ValueError(f"tensors {'; '.join(reasons)}")
    try:
        model.load_state_dict(weights, strict=False)
    except RuntimeError as err:
        raise ValueError(" ".join(str(err).split())[:200]) from None  # torch's message spans lines


def average_checkpoints(checkpoints: Sequence[dict | str | Path], key: str | None = None) -> dict:
    """Element-wise mean of model state dicts (Sec. 6.1), e.g. of the last N checkpoints.

    Each item is a state dict or a file written by ``torch.save``; ``key`` selects the state dict
    inside each file (``"model"`` for ``common.checkpoint`` files). Floating tensors are averaged
    in float64 and cast back; other tensors (integer buffers) must agree and are kept.
    """
    if not checkpoints:
        raise ValueError("average_checkpoints needs at least one checkpoint")
    states = []
    for item in checkpoints:
        state = item if isinstance(item, dict) else torch.load(item, map_location="cpu", weights_only=True)
        states.append(state[key] if key is not None else state)
    names = list(states[0])
    for state in states[1:]:
        if list(state) != names:
            raise ValueError("checkpoints to average hold different parameter names")
    averaged = {}
    for name in names:
        first = states[0][name]
        if first.is_floating_point():
            total = sum(state[name].double() for state in states)
            averaged[name] = (total / len(states)).to(first.dtype)
        else:
            if any(not torch.equal(state[name], first) for state in states[1:]):
                raise ValueError(f"non-floating tensor '{name}' differs between checkpoints")
            averaged[name] = first.clone()
    return averaged


class WeightSnapshots:
    """The model weights at a run's last ``keep`` checkpoints, for checkpoint averaging (Vaswani et al.
    2017, Sec. 6.1): files ``weights-<step>.pt`` beside the run's ``last.pt``, older ones deleted."""

    def __init__(self, ckpt_path: Path, keep: int):
        self.folder, self.keep = ckpt_path.parent, keep

    def steps(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("weights-*.pt"))

    def path(self, step: int) -> Path:
        return self.folder / f"weights-{step:08d}.pt"

    def discard_after(self, step: int) -> None:
        """Drop snapshots newer than ``step``: left by an earlier run, or by a kill before last.pt."""
        for later in (s for s in self.steps() if s > step):
            self.path(later).unlink()

    def save(self, step: int, weights: dict[str, torch.Tensor]) -> None:
        save_checkpoint(self.path(step), {name: tensor.detach().cpu() for name, tensor in weights.items()})
        for old in self.steps()[: -self.keep]:
            self.path(old).unlink()

    def average(self) -> dict[str, torch.Tensor]:
        return average_checkpoints([self.path(step) for step in self.steps()[-self.keep :]])


def remove_checkpoints(ckpt_path: Path) -> None:
    """Delete a run's checkpoint ``last.pt`` and its weight snapshots (a fresh run claims its folder)."""
    ckpt_path.unlink(missing_ok=True)
    WeightSnapshots(ckpt_path, keep=0).discard_after(-1)
