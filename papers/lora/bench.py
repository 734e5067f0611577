"""Speed and memory of a LoRA training step, ours against Hugging Face peft's (Hu et al. 2021, "LoRA: Low-Rank
Adaptation of Large Language Models", arXiv 2106.09685, Sec. 4.2: training memory and throughput).

One training step (forward, cross-entropy, backward, AdamW step) on one random GPT and one batch of random tokens
(B, T), four ways, taking turns (``common.bench.timed``):

    ours        our GPT (``common.models.gpt``) with ``LoRALinear`` on the W_q and W_v slices of every fused qkv,
                rank r: A (2r, d), B (3d, 2r) block-structured (``papers.lora.lora``)
    peft        the same weights exported as HF ``GPT2LMHeadModel`` (``save_hf_gpt2``) with peft's LoRA on every
                ``c_attn`` at rank 2r: the products of ours (whose B is zero on the k rows, so peft trains more
                parameters), which is how ``peft_format`` writes a q, v adapter
    ft          our GPT, every weight trained (full fine-tuning)
    hf_ft       the HF GPT-2, every weight trained: how much of ours vs peft is the model, not the adapter

Peak memory: the bytes of live tensors at the peak of a steady-state step (``measure.training_memory``:
weights, gradients, optimizer state and activations, through every aten op). Target: ours >= 1.0x peft's
speed (step time of peft over ours).

Usage: ``python -m papers.lora.bench [--out DIR] [--sizes cpu gpt2] [--repeats 5]``; writes DIR/bench.md and
DIR/bench.json (default DIR: reports/lora).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.bench import environment, environment_line, package_version, timed, write_results
from common.config import TrainConfig
from common.errors import PaperzooError
from common.models.gpt import GPTConfig, build_gpt, save_hf_gpt2
from common.paths import reports_dir
from common.train import build_optimizer

from .baselines import full_ft
from .lora import gpt_targets, inject
from .measure import training_memory

SIZES = {  # the cpu preset's GPT (captions batch), and GPT-2 small's shape
    "cpu": dict(model=dict(n_layers=4, n_heads=4, d_model=256, vocab_size=8192, block_size=128), batch=(8, 64)),
    "gpt2": dict(model=dict(n_layers=12, n_heads=12, d_model=768, vocab_size=50257, block_size=1024), batch=(8, 128)),
}  # fmt: skip
R, ALPHA = 4, 32.0
TRAIN = TrainConfig(lr=1e-3, weight_decay=0.01)
PATHS = ("ours", "peft", "ft", "hf_ft")


class HFCausalLM(nn.Module):
    """A HF causal LM behind the lab's ``model(batch) -> loss``: the same cross-entropy as ``CausalLM``."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = self.hf(input_ids=batch["idx"]).logits  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten())


def models(size: dict, device: torch.device) -> dict[str, nn.Module | None]:
    """The four models of one size, from one random GPT (None for peft's without peft installed)."""
    import transformers

    torch.manual_seed(0)
    cfg = GPTConfig(**size["model"])
    gpt = build_gpt(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        save_hf_gpt2(gpt, cfg, tmp)
        hf = [transformers.GPT2LMHeadModel.from_pretrained(tmp, attn_implementation="sdpa") for _ in range(2)]
    out: dict[str, nn.Module | None] = {"ft": gpt, "hf_ft": HFCausalLM(hf[0])}
    ours = build_gpt(cfg)
    ours.load_state_dict(gpt.state_dict())
    inject(ours, gpt_targets("q", "v"), R, ALPHA)
    out["ours"] = ours
    try:
        import peft
    except ImportError:
        out["peft"] = None
    else:
        config = peft.LoraConfig(
            r=2 * R, lora_alpha=2 * ALPHA, target_modules=["c_attn"], fan_in_fan_out=True
        )
        out["peft"] = HFCausalLM(peft.get_peft_model(hf[1], config))
    full_ft(gpt)
    return {name: out[name] if out[name] is None else out[name].to(device).train() for name in PATHS}


def step_fn(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> Callable[[], None]:
    optimizer = build_optimizer(model, TRAIN, device)

    def step() -> None:
        model(batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def bench_size(name: str, repeats: int, device: torch.device, log: Callable[[str], None]) -> dict:
    size = SIZES[name]
    built = models(size, device)
    B, T = size["batch"]
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, size["model"]["vocab_size"], (B, T + 1), generator=g)
    batch = {"idx": idx[:, :-1].to(device), "targets": idx[:, 1:].to(device)}
    present = {k: m for k, m in built.items() if m is not None}
    log(f"{name}: timing {', '.join(present)} ({repeats} repeats, taking turns)")
    seconds = timed({k: step_fn(m, batch, device) for k, m in present.items()}, repeats, device)
    row: dict = {"size": name, "batch": [B, T], **size["model"]}
    for path in PATHS:
        m = built[path]
        if m is None:
            row[path] = "not installed"
            continue
        peak, state = training_memory(m, batch, TRAIN, device)
        row[path] = {"ms_per_step": 1e3 * seconds[path], "peak_mb": peak / 2**20, "optimizer_mb": state / 2**20,
                     "trainable": sum(p.numel() for p in m.parameters() if p.requires_grad)}  # fmt: skip
        log(f"{name} {path}: {row[path]['ms_per_step']:.1f} ms/step, peak {row[path]['peak_mb']:.1f} MB")
    if isinstance(row["peft"], dict):
        row["ours_speed_over_peft"] = row["peft"]["ms_per_step"] / row["ours"]["ms_per_step"]
    return row


def _targets(r: dict) -> list[str]:
    lines = []
    for row in r["rows"]:
        if "ours_speed_over_peft" not in row:
            lines.append(f"{row['size']}: peft is not installed; no comparison")
            continue
        speed = row["ours_speed_over_peft"]
        ours_ft = row["ours"]["ms_per_step"] / row["ft"]["ms_per_step"]
        peft_ft = row["peft"]["ms_per_step"] / row["hf_ft"]["ms_per_step"]
        lines.append(f"{row['size']}: ours {speed:.2f}x peft's speed (target >= 1.0x: "
                     f"{'met' if speed >= 1.0 else 'not met'}); each LoRA step over its own model's FT step: "
                     f"ours {ours_ft:.2f}, peft {peft_ft:.2f}")  # fmt: skip
    return lines


def _markdown(r: dict) -> str:
    lines = ["# LoRA bench: a training step, ours vs peft vs full fine-tuning", "",
             f"{environment_line(r)}; peft {r['peft'] or 'not installed'}, transformers {r['transformers']}.", "",
             f"LoRA rank {R} on W_q, W_v (ours) = rank {2 * R} on the fused c_attn (peft), α / r = {ALPHA / R:g}; "
             f"AdamW; median of {r['repeats']} steps taking turns after a warm-up step.", "",
             "| size | batch | path | trainable | ms / step | peak MB | optimizer MB |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for row in r["rows"]:
        for path in PATHS:
            cell = row[path]
            if not isinstance(cell, dict):
                lines.append(
                    f"| {row['size']} | {row['batch'][0]} x {row['batch'][1]} | {path} | {cell} | | | |"
                )
                continue
            lines.append(f"| {row['size']} | {row['batch'][0]} x {row['batch'][1]} | {path} | {cell['trainable']:,} | "
                         f"{cell['ms_per_step']:.1f} | {cell['peak_mb']:.1f} | {cell['optimizer_mb']:.2f} |")  # fmt: skip
    lines += ["", "## Targets", "", *(f"- {line}" for line in _targets(r))]
    return "\n".join(lines) + "\n"


def run(out_dir, sizes=("cpu", "gpt2"), repeats: int = 5, log: Callable[[str], None] = print) -> dict:
    """Every size on CUDA if available, else the CPU; write ``out_dir/bench.{md,json}``."""
    if unknown := sorted(set(sizes) - set(SIZES)):
        raise PaperzooError(f"unknown sizes {unknown}; choose among {', '.join(SIZES)}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {**environment(device), "peft": package_version("peft"),
              "transformers": package_version("transformers"), "repeats": repeats,
              "rows": [bench_size(name, repeats, device, log) for name in sizes]}  # fmt: skip
    result["targets"] = _targets(result)
    return write_results(out_dir, result, _markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=reports_dir() / "lora")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    try:
        print(_markdown(run(args.out, tuple(args.sizes), args.repeats)), end="")
    except PaperzooError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
