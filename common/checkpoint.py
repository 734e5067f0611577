"""Atomic checkpoints: write to a temporary file, fsync, then rename over the old one.

A checkpoint holds everything needed to continue a run exactly: model, optimizer, scheduler,
RNG states, the step (which is also the data position: batches are a pure function of
(seed, step)), the MLflow run id and whether the run finished. Loading uses
``torch.load(weights_only=True)``; a corrupt file is reported in one line and left untouched.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

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
