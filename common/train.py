"""The one training loop every paper uses (in the spirit of nanoGPT's train.py).

Contracts
    model(batch) -> loss  or  (loss, {name: scalar})          a paper's nn.Module
    task.batch(split, index, batch_size, seed) -> {name: (B, ...) tensor}
        deterministic in (seed, index): the data position of a run is just its step
    task.evaluate(model, device) -> {metric: float}            e.g. {"val/loss": 1.9, "acc/L1024": 1.0}
        an accuracy over independent trials may come with its count "n/<metric>" (common.claims.TRIALS),
        e.g. {"n/acc/L1024": 64}: the report shows its Wilson interval

Features: device auto (cuda > mps > cpu), bf16 autocast on CUDA, optional torch.compile, AdamW
with decay/no-decay groups, warmup + cosine / constant / noam schedules (LambdaLR), gradient
accumulation and clipping, periodic evaluation, progress (common.progress: a bar on a terminal,
plain lines in a log file),
atomic checkpoints with exact resume, checkpoint averaging (``average_last``: the final evaluation
and the finished checkpoint use the mean weights of the last N checkpoints), NaN/inf stop, and DDP under torchrun (gloo on CPU, NCCL on
GPU; each rank takes its slice of the global batch; only rank 0 logs and checkpoints).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import nn

from common.checkpoint import (
    WeightSnapshots,
    has_frozen_parameters,
    load_checkpoint,
    model_weights,
    restore_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from common.config import Optimizer, Schedule, TrainConfig
from common.errors import PaperzooError, TrainingDiverged
from common.progress import Progress
from common.runs import BaseRun


@runtime_checkable
class Task(Protocol):
    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]: ...

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]: ...

    # optional: ``target_tokens(batch) -> int`` where the batch's targets are not ``batch["targets"]``


def target_tokens(batch: dict[str, torch.Tensor]) -> int:
    """The target tokens of a training batch, which ``tokens_per_s`` counts.

    The convention: ``batch["targets"]`` with -100 ignored (language modelling, the synthetic tasks);
    without ``"targets"``, one target per example (a classifier's label). A task whose targets are
    named otherwise (translation: ``tgt_out`` without padding) defines ``target_tokens(batch)`` itself.
    """
    if "targets" in batch:
        return int((batch["targets"] != -100).sum())
    return next(iter(batch.values())).shape[0]


class MetricSink(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


@dataclass
class TrainResult:
    final_loss: float
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None
    tokens_per_s: float = 0.0


# ---- environment ---------------------------------------------------------------------------
def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def distributed_context() -> tuple[int, int]:
    """(rank, world_size); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def autocast_context(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if precision not in ("auto", "fp32", "bf16"):
        raise PaperzooError(f"bad value for train.precision: '{precision}'; choose auto, fp32 or bf16")
    if use_bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- optimisation --------------------------------------------------------------------------
def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """Matrices decay; biases, norms and parameters flagged ``_no_weight_decay`` do not. A parameter with an
    ``_lr_scale`` attribute trains at that multiple of the learning rate (e.g. a pretrained encoder fine-tuned
    beside a model trained from scratch)."""
    grouped: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        decays = not (p.dim() < 2 or getattr(p, "_no_weight_decay", False))
        grouped.setdefault((decays, getattr(p, "_lr_scale", 1.0)), []).append(p)
    groups = [{"params": grouped.get((True, 1.0), []), "weight_decay": cfg.weight_decay},
              {"params": grouped.get((False, 1.0), []), "weight_decay": 0.0}]  # fmt: skip
    groups += [{"params": params, "weight_decay": cfg.weight_decay if decays else 0.0, "lr": cfg.lr * scale}
               for (decays, scale), params in grouped.items() if scale != 1.0]  # fmt: skip
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    if device.type == "cuda":
        kwargs["fused"] = True
    if cfg.optimizer == Optimizer.adam:
        return torch.optim.Adam(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def lr_multiplier(cfg: TrainConfig, step: int) -> float:
    """Factor on cfg.lr at optimizer step ``step`` (0-based)."""
    s = step + 1
    if cfg.schedule == Schedule.noam:
        return cfg.noam_d_model**-0.5 * min(s**-0.5, s * max(cfg.warmup_steps, 1) ** -1.5)
    if s <= cfg.warmup_steps:
        return s / cfg.warmup_steps
    if cfg.schedule == Schedule.constant:
        return 1.0
    progress = min(1.0, (s - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    floor = cfg.min_lr / cfg.lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate ``cfg.lr * lr_multiplier(cfg, step)``, stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(cfg, step))


def split_loss(out: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, extras) of a model's output: ``loss`` or ``(loss, {name: scalar})`` (the contract above)."""
    return (out[0], dict(out[1])) if isinstance(out, tuple) else (out, {})


def _rank_slice(batch: dict[str, torch.Tensor], rank: int, world: int, device: torch.device) -> dict:
    out = {}
    for name, value in batch.items():
        if value.shape[0] % world:
            raise PaperzooError(f"batch size {value.shape[0]} does not divide across {world} processes")
        part = value.shape[0] // world
        out[name] = value[rank * part : (rank + 1) * part].to(device, non_blocking=True)
    return out


@torch.no_grad()
def run_evaluation(model: nn.Module, task: Task, device: torch.device, precision: str) -> dict[str, float]:
    was_training = model.training
    model.eval()
    with autocast_context(device, precision):
        metrics = task.evaluate(model, device)
    model.train(was_training)
    return {k: float(v) for k, v in metrics.items()}


# ---- the loop ------------------------------------------------------------------------------
def train(
    model: nn.Module,
    task: Task,
    cfg: TrainConfig,
    *,
    seed: int = 0,
    ckpt_path: Path | None = None,
    resume: bool = False,
    tracker: MetricSink | None = None,
    run_id: str | None = None,
    progress: bool = True,
    desc: str = "train",
    base: BaseRun | None = None,
) -> TrainResult:
    """Train ``model`` on ``task``; ``base``: the finished run the model's weights were loaded from
    (``common.runs.load_run_weights``), which makes a model with frozen parameters checkpoint only its
    trainable ones and that base (common.checkpoint); a resume refuses a checkpoint of another base."""
    rank, world = distributed_context()
    device = pick_device(cfg.device)
    model.to(device)
    raw_model = model
    optimizer = build_optimizer(raw_model, cfg, device)
    scheduler = build_scheduler(optimizer, cfg)
    count_tokens = getattr(task, "target_tokens", target_tokens)
    trainable_only = base is not None and has_frozen_parameters(raw_model)

    start, resumed_from = 0, None
    if resume and ckpt_path is not None and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        recorded_base = state.get("base") or {}
        if trainable_only and (recorded_base.get("ref"), recorded_base.get("sha256")) != (
            asdict(base.ref),
            base.sha256,
        ):
            recorded = BaseRun.from_dict(state["base"]).where if state.get("base") else "no base"
            raise PaperzooError(
                f"checkpoint {ckpt_path} continues {recorded}, but the model was loaded from {base.where}; "
                "load that base, or run with resume=false"
            )
        try:
            restore_weights(raw_model, state["model"], trainable_only)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise PaperzooError(
                f"checkpoint {ckpt_path} does not match this model/config ({str(err).splitlines()[0][:100]}); "
                "it was left untouched: move it away or run with resume=false"
            ) from None
        set_rng_state(state["rng"])
        start = resumed_from = int(state["step"])
        resumed_loss = float(state.get("loss", float("nan")))
    else:
        resumed_loss = float("nan")
        torch.manual_seed(seed + rank)

    if cfg.compile:
        model = torch.compile(model)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    snapshots = None
    if cfg.average_last > 1:
        if ckpt_path is None:
            raise PaperzooError("train.average_last needs checkpoints: run through a paper's reproduction")
        snapshots = WeightSnapshots(ckpt_path, cfg.average_last)
        if rank == 0:
            snapshots.discard_after(start)

    def checkpoint(step: int, loss: float, finished: bool = False) -> None:
        if rank == 0 and ckpt_path is not None:
            if snapshots is not None and not finished:
                snapshots.save(step, raw_model.state_dict())
            save_checkpoint(ckpt_path, {
                "model": model_weights(raw_model, trainable_only), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng_state(), "step": step,
                "run_id": run_id, "finished": finished, "loss": loss,
                "base": asdict(base) if trainable_only else None,
            })  # fmt: skip

    def log(metrics: dict[str, float], step: int) -> None:
        if rank == 0 and tracker is not None:
            tracker.log_metrics(metrics, step)

    model.train()
    bar = Progress(cfg.max_steps, start, desc, enabled=progress and rank == 0)  # a bar, or lines in a log
    loss_value, window, window_tokens, t0 = resumed_loss, [], 0, time.perf_counter()
    tokens_per_s = 0.0
    metrics: dict[str, float] = {}
    for step in range(start, cfg.max_steps):
        step_loss = torch.zeros((), device=device)
        extras: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            batch = task.batch("train", step * cfg.grad_accum + micro, cfg.batch_size, seed)
            local = _rank_slice(batch, rank, world, device)
            window_tokens += count_tokens(batch)
            sync = contextlib.nullcontext() if world == 1 or micro == cfg.grad_accum - 1 else model.no_sync()
            with sync, autocast_context(device, cfg.precision):
                loss, extra = split_loss(model(local))
                (loss / cfg.grad_accum).backward()
            step_loss += loss.detach().float() / cfg.grad_accum
            for k, v in extra.items():
                extras[k] = extras.get(k, 0) + v.detach().float() / cfg.grad_accum
        if world > 1:
            dist.all_reduce(step_loss)
            step_loss /= world
        loss_value = step_loss.item()
        if not math.isfinite(loss_value):
            bar.close()
            kept = (
                f"the last good checkpoint {ckpt_path} is kept"
                if ckpt_path and ckpt_path.exists()
                else ("no checkpoint had been written yet")
            )
            raise TrainingDiverged(f"loss became {loss_value} at step {step}; training stopped, {kept}")
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(loss_value)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.max_steps:
            elapsed = time.perf_counter() - t0
            tokens_per_s = window_tokens / max(elapsed, 1e-9)
            record = {"train/loss": sum(window) / len(window), "lr": scheduler.get_last_lr()[0],
                      "tokens_per_s": tokens_per_s}  # fmt: skip
            record.update({f"train/{k}": float(v) for k, v in extras.items()})
            log(record, done)
            bar.show(record["train/loss"], record["lr"], tokens_per_s)
            window, window_tokens, t0 = [], 0, time.perf_counter()
        if cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.max_steps and rank == 0:
            log(run_evaluation(raw_model, task, device, cfg.precision), done)
        if cfg.ckpt_every and done % cfg.ckpt_every == 0 and done < cfg.max_steps:
            checkpoint(done, loss_value)
        bar.update(1)
    bar.close()

    if rank == 0:
        if snapshots is not None:
            snapshots.save(cfg.max_steps, raw_model.state_dict())
            raw_model.load_state_dict(snapshots.average())
        metrics = run_evaluation(raw_model, task, device, cfg.precision)
        log(metrics, cfg.max_steps)
    checkpoint(cfg.max_steps, loss_value, finished=True)
    return TrainResult(loss_value, cfg.max_steps, metrics, resumed_from, tokens_per_s)
