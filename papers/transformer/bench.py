"""Throughput of the attention building blocks on this machine.

    1. GPT training tokens/s at nanoGPT's CPU recipe (shakespeare_char on a laptop: 4 layers,
       4 heads, d_model 128, block 64, batch 12; AdamW), random tokens, vocab 65.
    2. Greedy generation tokens/s with the KV cache (``CausalLM.generate`` through
       ``CausalSelfAttention.step``: O(t) per token) vs full recomputation of the prefix for every
       token (O(t^2) per token); same model, the position table sized to fit the output.
    3. Attention, Eq. 1 of Vaswani et al. 2017 (arXiv 1706.03762): causal forward + backward of the
       explicit reference vs the SDPA fast path, B=2, H=4, Dh=32.

Usage: ``python -m papers.transformer.bench [--out DIR] [--quick]``; writes DIR/bench.md and
DIR/bench.json and returns the same numbers from ``run``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common.bench import environment, environment_line, timed, write_results
from common.models.attention import attention, attention_ref
from common.models.gpt import GPTConfig, build_gpt
from common.paths import runs_dir

NANOGPT_CPU = dict(vocab_size=65, block_size=64, n_layers=4, n_heads=4, d_model=128)
TRAIN_BATCH = 12


def bench_training(steps: int) -> dict:
    torch.manual_seed(0)
    cfg = GPTConfig(**NANOGPT_CPU)
    model = build_gpt(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    window = torch.randint(0, cfg.vocab_size, (TRAIN_BATCH, cfg.block_size + 1), generator=g)
    batch = {"idx": window[:, :-1], "targets": window[:, 1:]}

    def step() -> None:
        loss = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = timed({"step": step}, steps)["step"]
    return {"params": model.num_params(), "steps": steps, "ms_per_step": 1e3 * seconds,
            "tokens_per_s": TRAIN_BATCH * cfg.block_size / seconds}  # fmt: skip


def bench_generation(new_tokens: int) -> dict:
    torch.manual_seed(0)
    model = build_gpt(GPTConfig(**{**NANOGPT_CPU, "block_size": new_tokens + 1})).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long)

    @torch.no_grad()
    def recompute() -> torch.Tensor:
        seq = prompt
        for _ in range(new_tokens):
            seq = torch.cat([seq, model.logits(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
        return seq

    start = time.perf_counter()
    cached = model.generate(prompt, new_tokens, greedy=True)
    t_cached = time.perf_counter() - start
    start = time.perf_counter()
    full = recompute()
    t_full = time.perf_counter() - start
    return {"new_tokens": new_tokens, "kv_cache_tokens_per_s": new_tokens / t_cached,
            "recompute_tokens_per_s": new_tokens / t_full, "speedup": t_full / t_cached,
            "outputs_equal": bool(torch.equal(cached, full))}  # fmt: skip


def bench_attention(lengths: tuple[int, ...], repeats: int) -> list[dict]:
    rows = []
    for length in lengths:
        g = torch.Generator().manual_seed(0)
        qkv = [
            torch.randn(2, 4, length, 32, generator=g, requires_grad=True) for _ in range(3)
        ]  # (B, H, L, Dh)
        times = {}
        for name, fn in (("reference", attention_ref), ("fast", attention)):

            def fwd_bwd(fn=fn, qkv=qkv) -> None:
                fn(*qkv, causal=True).sum().backward()

            times[name] = timed({name: fwd_bwd}, repeats)[name]
        rows.append({"L": length, "reference_ms": 1e3 * times["reference"], "fast_ms": 1e3 * times["fast"],
                     "speedup": times["reference"] / times["fast"]})  # fmt: skip
    return rows


def _markdown(r: dict) -> str:
    t, g = r["training"], r["generation"]
    lines = [
        "# Attention / GPT throughput",
        "",
        environment_line(r),
        "",
        "| benchmark | setting | result |",
        "| --- | --- | --- |",
        f"| GPT training | 4L 4H d128, block 64, batch 12 ({t['params']:,} params) "
        f"| {t['tokens_per_s']:,.0f} tokens/s ({t['ms_per_step']:.1f} ms/step, {t['steps']} steps) |",
        f"| generation, KV cache | {g['new_tokens']} new tokens, greedy "
        f"| {g['kv_cache_tokens_per_s']:,.0f} tokens/s |",
        f"| generation, recompute | {g['new_tokens']} new tokens, greedy "
        f"| {g['recompute_tokens_per_s']:,.0f} tokens/s (cache: {g['speedup']:.1f}x faster, "
        f"same output: {g['outputs_equal']}) |",
    ]
    for a in r["attention"]:
        lines.append(
            f"| causal attention fwd+bwd | B=2 H=4 Dh=32 L={a['L']} | reference {a['reference_ms']:.2f} ms, "
            f"SDPA {a['fast_ms']:.2f} ms ({a['speedup']:.1f}x) |"
        )
    return "\n".join(lines) + "\n"


def run(
    out_dir: str | Path,
    train_steps: int = 20,
    gen_tokens: int = 512,
    attn_lengths: tuple[int, ...] = (256, 1024),
    attn_repeats: int = 10,
) -> dict:
    """Run the three benchmarks; write ``out_dir/bench.json`` and ``out_dir/bench.md``."""
    result = {
        **environment(torch.device("cpu")),
        "training": bench_training(train_steps),
        "generation": bench_generation(gen_tokens),
        "attention": bench_attention(tuple(attn_lengths), attn_repeats),
    }
    return write_results(out_dir, result, _markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(runs_dir() / "transformer-bench"))
    parser.add_argument("--quick", action="store_true", help="5 steps, 128 tokens, L=256 only")
    args = parser.parse_args()
    sizes = dict(train_steps=5, gen_tokens=128, attn_lengths=(256,), attn_repeats=3) if args.quick else {}
    print(_markdown(run(args.out, **sizes)), end="")


if __name__ == "__main__":
    main()
