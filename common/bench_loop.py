"""The shared training loop's own overhead: ``common.train.train`` against a bare training step.

The model is the GPT of nanoGPT's shakespeare_char CPU recipe (4 layers, 4 heads, d_model 128,
context 64, batch 12; the transformer paper's gpt-shakespeare-char cpu preset) on character-level
tinyshakespeare; ``--gpu-recipe`` takes its GPU recipe (6 layers, 6 heads, d_model 384, context 256,
batch 64: about 8 s a step on 2 CPU cores). Both sides run the same model, optimizer (AdamW,
common.train.build_optimizer), schedule, precision and gradient clipping:

    bare   forward, backward, clip, optimizer and scheduler step on one batch already on the device
    loop   ``train``: batches sliced from the corpus and moved to the device, loss read back every step
           (NaN stop), target tokens counted, metrics logged every ``log_every`` steps

The loop's time per step is measured between its first and last metric log (so its setup and final
evaluation are left out). The two take turns ``repeats`` times and each keeps its fastest, so that a
busy machine slows neither alone; overhead = loop / bare - 1, the target is under 5%.

Usage: ``python -m common.bench_loop [--out DIR] [--steps 100] [--repeats 3]``; writes DIR/bench.md and DIR/bench.json
(default DIR: reports/lab) and ``run`` returns the same numbers.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from common.bench import environment, environment_line, sync, write_results
from common.config import TrainConfig
from common.data.corpus import LanguageModelingTask
from common.models.zoo import build
from common.paths import reports_dir
from common.train import autocast_context, build_optimizer, build_scheduler, pick_device, train

GPT = dict(n_layers=4, n_heads=4, d_model=128, block_size=64, dropout=0.0)  # nanoGPT shakespeare_char, CPU
BATCH_SIZE = 12
GPU_RECIPE, GPU_BATCH_SIZE = dict(n_layers=6, n_heads=6, d_model=384, block_size=256, dropout=0.0), 64


class LogTimes:
    """A metric sink that notes when each log arrives."""

    def __init__(self):
        self.times: list[tuple[int, float]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if "train/loss" in metrics:
            self.times.append((step, time.perf_counter()))


def bare_step_seconds(
    model: nn.Module, batch: dict, cfg: TrainConfig, steps: int, device: torch.device
) -> float:
    """Seconds per step of forward, backward, clip and optimizer step, after one untimed step."""
    optimizer = build_optimizer(model, cfg, device)
    scheduler = build_scheduler(optimizer, cfg)

    def step() -> None:
        with autocast_context(device, cfg.precision):
            loss = model(batch)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - start) / steps


def loop_step_seconds(model: nn.Module, task, cfg: TrainConfig) -> float:
    """Seconds per step of ``train`` between its first and last metric log."""
    sink = LogTimes()
    train(model, task, cfg, tracker=sink, progress=False, desc="bench")
    (first_step, first), (last_step, last) = sink.times[0], sink.times[-1]
    return (last - first) / (last_step - first_step)


def run(
    out_dir: Path,
    steps: int = 100,
    gpt: dict | None = None,
    batch_size: int = BATCH_SIZE,
    log_every: int = 10,
    repeats: int = 3,
    log: Callable[[str], None] = print,
) -> dict:
    """Time both on CUDA if available, else CPU; write ``out_dir/bench.{md,json}``; return the numbers."""
    gpt = {**GPT, **(gpt or {})}
    device = pick_device()
    task = LanguageModelingTask("tinyshakespeare", "char", block_size=gpt["block_size"], eval_batches=1)
    cfg = TrainConfig(max_steps=steps + log_every, batch_size=batch_size, log_every=log_every, ckpt_every=0,
                      warmup_steps=10)  # fmt: skip

    def fresh_model() -> nn.Module:
        torch.manual_seed(0)
        return build("gpt", {**gpt, "vocab_size": task.vocab_size}).to(device)

    batch = {k: v.to(device) for k, v in task.batch("train", 0, batch_size, seed=0).items()}
    bare = loop = float("inf")
    for turn in range(repeats):
        bare = min(bare, bare_step_seconds(fresh_model(), batch, cfg, steps, device))
        loop = min(loop, loop_step_seconds(fresh_model(), task, cfg))
        log(f"turn {turn + 1}/{repeats}: bare step {1e3 * bare:.1f} ms, loop step {1e3 * loop:.1f} ms "
            f"({100 * (loop / bare - 1):+.1f}%), fastest so far")  # fmt: skip
    model = fresh_model()
    result = {
        **environment(device),
        "model": {**gpt, "vocab_size": task.vocab_size, "params": sum(p.numel() for p in model.parameters())},
        "batch_size": batch_size,
        "steps": steps,
        "log_every": log_every,
        "repeats": repeats,
        "bare_ms_per_step": 1e3 * bare,
        "loop_ms_per_step": 1e3 * loop,
        "overhead": loop / bare - 1,
    }
    return write_results(out_dir, result, _markdown)


def _markdown(r: dict) -> str:
    m = r["model"]
    return "\n".join([
        "# The shared training loop: its own overhead",
        "",
        environment_line(r),
        "",
        f"GPT {m['n_layers']} layers, {m['n_heads']} heads, d_model {m['d_model']}, context {m['block_size']} "
        f"({m['params']:,} params), batch {r['batch_size']}, {r['steps']} timed steps (fastest of "
        f"{r['repeats']} turns), metrics logged every {r['log_every']} steps.",
        "",
        "| bare step (ms) | common.train step (ms) | loop overhead |",
        "| --- | --- | --- |",
        f"| {r['bare_ms_per_step']:.1f} | {r['loop_ms_per_step']:.1f} | {100 * r['overhead']:+.1f}% |",
        "",
        "Target: under +5%.",
    ]) + "\n"  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=reports_dir() / "lab")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-recipe", action="store_true", help="nanoGPT's GPU recipe (slow on a CPU)")
    args = parser.parse_args()
    model, batch_size = (GPU_RECIPE, GPU_BATCH_SIZE) if args.gpu_recipe else (GPT, BATCH_SIZE)
    print(_markdown(run(args.out, args.steps, model, batch_size, repeats=args.repeats)), end="")


if __name__ == "__main__":
    main()
