"""Speed of the WKV kernels and of recurrent generation, RWKV-4 (Peng et al. 2023, "RWKV: Reinventing RNNs for
the Transformer Era", arXiv 2305.13048, Sec. 3.1.2 WKV, Sec. 3.3 inference as an RNN) and RWKV-7 (Peng et al.
2025, "RWKV-7 "Goose" with Expressive Dynamic State Evolution", arXiv 2503.14456, Sec. 4).

    1. Kernels, forward + backward, per sequence length L, inputs in the model's ranges:
       wkv4 (batch 1, C = 256; w = -exp(time_decay), time_decay in [-5, 3]; u = log 0.3 +- 0.5; k, v ~ N(0, 1)):
       our chunked ``wkv4`` against our sequential ``wkv4_ref``;
       wkv7 (batch 1, H = 4, N = 64; log decay in (-0.607, 0); a = -κ̂, b = κ̂ ⊙ iclr with κ̂ unit per head,
       iclr in (0, 1)): our chunked ``wkv7`` against our sequential ``wkv7_ref`` and fla-core's pure-PyTorch
       ``dplr_recurrence`` and ``dplr_chunkwise`` (``fla_naive``; "not installed" without fla-core).
       A path other than the fast one is skipped where it would take more than ~REFERENCE_BUDGET_S.
       Target: the fast path >= 10x its reference at L = 1024.
    2. Generation, batch 1, on CPU, the same tiny random LM (vocab 1000, d_model 256, 4 layers; RWKV-7 head
       size 64) in both runtimes: our recurrent ``lm.step`` (greedy, after a prefilled prompt) against the
       official ``rwkv`` package's token-by-token forward (``official.official_logits`` on the LM saved with
       ``save_blinkdl``, fed the same tokens), both with this process's torch thread count; medians of
       ``repeats`` runs, the two runtimes taking turns. Our steps run under ``torch.inference_mode`` (faster
       than ``no_grad`` for batch-1 steps). The largest difference of the two runtimes' logits is reported
       too: it shows that both ran the same model. Target: ours >= 1.0x, i.e. our ms / token <= the package's.

Usage: ``python -m papers.rwkv.bench [--out DIR] [--lengths 256 1024 4096] [--repeats 3]``; writes
DIR/bench.md and DIR/bench.json (default DIR: reports/rwkv) and ``run`` returns the same numbers.
"""

from __future__ import annotations

import importlib.util
import math
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from common.bench import cli, environment, environment_line, package_version, time_paths, write_results
from common.errors import PaperzooError
from common.models import zoo
from common.paths import reports_dir

from .blinkdl import save_blinkdl
from .fla_naive import dplr_naive, wkv7_fla
from .model import RWKV4Config, RWKV7Config
from .official import official_logits
from .ops import wkv4, wkv4_ref, wkv7, wkv7_ref

WKV4 = dict(batch=1, channels=256)
WKV7 = dict(batch=1, heads=4, head_size=64)
FLA_CHUNK = 32  # dplr_chunkwise's default chunk size
LM = dict(vocab_size=1000, d_model=256, n_layers=4, head_size=64)  # head_size: RWKV-7 only
REFERENCE_BUDGET_S = 30.0
TARGET_L, TARGET_KERNEL_SPEEDUP, TARGET_GENERATION = 1024, 10.0, 1.0


# ---- 1. kernels -------------------------------------------------------------------------------------------
def _wkv4_inputs(length: int, device: torch.device, seed: int = 0) -> dict:
    """w, u (C,); k, v (B, T, C): as TimeMix4 passes them at initialisation."""
    g = torch.Generator().manual_seed(seed)
    b, c = WKV4["batch"], WKV4["channels"]
    time_decay = -5 + 8 * torch.rand(c, generator=g)
    x = {
        "w": -torch.exp(time_decay),
        "u": math.log(0.3) + torch.rand(c, generator=g) - 0.5,
        "k": torch.randn(b, length, c, generator=g),
        "v": torch.randn(b, length, c, generator=g),
    }
    return {k: v.to(device).requires_grad_() for k, v in x.items()}


def _wkv7_inputs(length: int, device: torch.device, seed: int = 0) -> dict:
    """r, w, k, v, a, b (B, T, H, N): as TimeMix7 passes them (a = -κ̂, b = κ̂ ⊙ iclr)."""
    g = torch.Generator().manual_seed(seed)
    shape = (WKV7["batch"], length, WKV7["heads"], WKV7["head_size"])
    kk = F.normalize(torch.randn(*shape, generator=g), dim=-1)  # κ̂: unit per head
    x = {
        "r": torch.randn(*shape, generator=g),
        "w": -0.606531 * torch.rand(*shape, generator=g),  # -e^{-0.5} sigmoid(.): RWKV-7's log decay range
        "k": torch.randn(*shape, generator=g),
        "v": torch.randn(*shape, generator=g),
        "a": -kk,
        "b": kk * torch.rand(*shape, generator=g),
    }
    return {k: v.to(device).requires_grad_() for k, v in x.items()}


def _wkv7_paths() -> dict[str, Callable | None]:
    try:
        dplr_naive()
    except PaperzooError:  # fla-core (or einops) is not installed
        return {"fast": wkv7, "reference": wkv7_ref, "fla_recurrence": None, "fla_chunkwise": None}
    fla_chunkwise = partial(wkv7_fla, chunk_size=FLA_CHUNK)
    return {"fast": wkv7, "reference": wkv7_ref, "fla_recurrence": wkv7_fla, "fla_chunkwise": fla_chunkwise}


def bench_kernel(
    name: str,
    inputs: Callable[[int, torch.device], dict],
    paths: dict[str, Callable | None],
    lengths: tuple[int, ...],
    repeats: int,
    device: torch.device,
    log: Callable[[str], None],
) -> list:
    """Seconds per forward + backward of each path per length; "skipped" / "not installed" otherwise; every
    path but the fast one is sequential in time (common.bench.time_paths)."""
    return time_paths(name, inputs, paths, lengths, repeats, device, log, REFERENCE_BUDGET_S)


# ---- 2. generation ----------------------------------------------------------------------------------------
def _tiny_lm(arch: str, lm: dict, seed: int = 0):
    """A random LM (weights perturbed, so that no matrix is the zero of RWKV-LM's initialisation)."""
    torch.manual_seed(seed)
    spec = {k: v for k, v in lm.items() if k != "head_size"}
    config = RWKV4Config(**spec) if arch == "rwkv4" else RWKV7Config(**spec, head_size=lm["head_size"])
    model = zoo.build(arch, config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


@torch.inference_mode()
def _our_generation(model, prompt: list[int], tokens: int) -> tuple[float, list[int], torch.Tensor]:
    """Prefill ``prompt``, one untimed step, then ``tokens`` timed greedy steps. Returns ms per timed token,
    every token fed (prompt + generated) and the logits after each generated token (tokens + 1, V)."""
    logits, state = model.prefill(torch.tensor([prompt]), model.init_state(1))
    token = logits[:, -1].argmax(-1)  # (1,)
    fed, step_logits, stamps = list(prompt), [], []
    for _ in range(tokens + 1):  # the first step is an untimed warm-up
        stamps.append(time.perf_counter())
        fed.append(int(token))
        logits, state = model.step(token, state)
        step_logits.append(logits[0])
        token = logits.argmax(-1)
    stamps.append(time.perf_counter())
    return 1e3 * (stamps[-1] - stamps[1]) / tokens, fed, torch.stack(step_logits)


def bench_generation(
    lm: dict, prompt_len: int, tokens: int, repeats: int, log: Callable[[str], None]
) -> dict:
    """ms / token of our step and of the official package on the same random LM, RWKV-4 and RWKV-7 (CPU):
    medians over ``repeats`` runs, ours and theirs taking turns."""
    threads, rows = torch.get_num_threads(), []
    installed = importlib.util.find_spec("rwkv") is not None
    prompt = torch.randint(0, lm["vocab_size"], (prompt_len,), generator=torch.Generator().manual_seed(1))
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    for arch in ("rwkv4", "rwkv7"):
        model = _tiny_lm(arch, lm)
        row, ours, theirs = {"arch": arch, "params": model.num_params()}, [], []
        with tempfile.TemporaryDirectory() as tmp:
            path = save_blinkdl(model, Path(tmp) / f"{arch}.pth")
            for _ in range(repeats):
                ms, fed, our_logits = _our_generation(model, prompt.tolist(), tokens)
                ours.append(ms)
                if installed:
                    official = official_logits(path, fed, threads=threads)
                    theirs.append(official["ms_per_token"])
                    # the same model in both runtimes: their token-by-token logits at the generated tokens
                    diff = (official["steps"][prompt_len:] - our_logits).abs().max().item()
                    row["max_abs_logit_diff"] = max(diff, row.get("max_abs_logit_diff", 0.0))
        row["ours_ms_per_token"] = median(ours)
        log(f"generation {arch}: ours {row['ours_ms_per_token']:.2f} ms/token")
        if not installed:
            row["official_ms_per_token"] = "not installed"
        else:
            row["official_ms_per_token"] = median(theirs)
            row["speedup_vs_official"] = row["official_ms_per_token"] / row["ours_ms_per_token"]
            log(
                f"generation {arch}: official {row['official_ms_per_token']:.2f} ms/token, ours "
                f"{row['speedup_vs_official']:.2f}x, logits within {row['max_abs_logit_diff']:.1e}"
            )
        rows.append(row)
    return {
        "model": lm,
        "prompt": prompt_len,
        "timed_tokens": tokens,
        "repeats": repeats,
        "threads": threads,
        "rows": rows,
    }


# ---- targets and report -----------------------------------------------------------------------------------
def _targets(r: dict) -> list[str]:
    """One sentence per target, met or not, with the measured numbers."""
    lines = []
    for kernel in ("wkv4", "wkv7"):
        row = next((x for x in r[kernel] if x["L"] == TARGET_L), None)
        goal = f"{kernel}: fast >= {TARGET_KERNEL_SPEEDUP:.0f}x the sequential reference at L = {TARGET_L}"
        if row is None or "speedup_vs_reference" not in row:
            lines.append(f"{goal}: not measured in this run.")
            continue
        s, met = row["speedup_vs_reference"], row["speedup_vs_reference"] >= TARGET_KERNEL_SPEEDUP
        lines.append(
            f"{goal}: {'met' if met else 'NOT met'}, {s:.1f}x ({1e3 * row['fast']:.1f} ms vs "
            f"{1e3 * row['reference']:.1f} ms, forward + backward)."
        )
    for row in r["generation"]["rows"]:
        goal = f"{row['arch']} generation: our step >= {TARGET_GENERATION:.1f}x the official package's speed"
        if "speedup_vs_official" not in row:
            lines.append(f"{goal}: not measured (official runtime {row['official_ms_per_token']}).")
            continue
        s = row["speedup_vs_official"]
        verdict = "met" if s >= TARGET_GENERATION else "NOT met, our step is slower"
        lines.append(
            f"{goal}: {verdict}, {s:.2f}x ({row['ours_ms_per_token']:.2f} vs "
            f"{row['official_ms_per_token']:.2f} ms / token)."
        )
    return lines


def _fmt_ms(value) -> str:
    return f"{1e3 * value:.1f}" if isinstance(value, float) else str(value)


def _kernel_table(rows: list, paths: tuple[str, ...]) -> list[str]:
    others = [p for p in paths if p != "fast"]
    header = ["L", *paths, *(f"fast vs {p}" for p in others)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        ratios = [f"{row[f'speedup_vs_{p}']:.1f}x" if f"speedup_vs_{p}" in row else "-" for p in others]
        lines.append(f"| {row['L']} | " + " | ".join([_fmt_ms(row[p]) for p in paths] + ratios) + " |")
    return lines


def _markdown(r: dict) -> str:
    g, m = r["generation"], r["generation"]["model"]
    lines = [
        "# RWKV-4 / RWKV-7: WKV kernels and generation speed",
        "",
        environment_line(r),
        "",
        f"fla-core: {r['versions']['fla-core'] or 'not installed'}; rwkv package: "
        f"{r['versions']['rwkv'] or 'not installed'}.",
        "",
        f"## wkv4, forward + backward (ms; batch {WKV4['batch']}, C {WKV4['channels']})",
        "",
        *_kernel_table(r["wkv4"], ("fast", "reference")),
        "",
        f"## wkv7, forward + backward (ms; batch {WKV7['batch']}, H {WKV7['heads']}, N {WKV7['head_size']}; "
        f"fla's naive PyTorch references, chunkwise with chunks of {FLA_CHUNK})",
        "",
        *_kernel_table(r["wkv7"], ("fast", "reference", "fla_recurrence", "fla_chunkwise")),
        "",
        f"## Generation, batch 1, CPU, {g['threads']} threads (vocab {m['vocab_size']}, d_model {m['d_model']}, "
        f"{m['n_layers']} layers, RWKV-7 head size {m['head_size']}; ours: mean of {g['timed_tokens']} greedy "
        f"steps after a {g['prompt']}-token prompt; official: mean over the same {g['prompt']} + "
        f"{g['timed_tokens'] + 1} tokens, token by token; median of {g['repeats']} runs each)",
        "",
        "| model | params | ours (ms / token) | official (ms / token) | ours vs official | max abs logit diff |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in g["rows"]:
        official = row["official_ms_per_token"]
        cells = [
            row["arch"],
            f"{row['params']:,}",
            f"{row['ours_ms_per_token']:.2f}",
            f"{official:.2f}" if isinstance(official, float) else official,
            f"{row['speedup_vs_official']:.2f}x" if "speedup_vs_official" in row else "-",
            f"{row['max_abs_logit_diff']:.1e}" if "max_abs_logit_diff" in row else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Targets", "", *(f"- {line}" for line in _targets(r))]
    return "\n".join(lines) + "\n"


def run(
    out_dir: Path,
    lengths: tuple[int, ...] = (256, 1024, 4096),
    repeats: int = 3,
    lm: dict = LM,
    gen_prompt: int = 16,
    gen_tokens: int = 64,
    log: Callable[[str], None] = print,
) -> dict:
    """Kernels on CUDA if available, else CPU; generation on CPU (the official runtime's device); write
    ``out_dir/bench.{md,json}``; return the numbers."""
    if "head_size" not in lm:
        raise PaperzooError("bench: lm needs vocab_size, d_model, n_layers and head_size (for RWKV-7)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    wkv4_paths = {"fast": wkv4, "reference": wkv4_ref}
    result = {
        **environment(device),
        "versions": {"fla-core": package_version("fla-core"), "rwkv": package_version("rwkv")},
        "wkv4": bench_kernel("wkv4", _wkv4_inputs, wkv4_paths, tuple(lengths), repeats, device, log),
        "wkv7": bench_kernel("wkv7", _wkv7_inputs, _wkv7_paths(), tuple(lengths), repeats, device, log),
        "generation": bench_generation(dict(lm), gen_prompt, gen_tokens, repeats, log),
    }
    result["targets"] = _targets(result)
    return write_results(out_dir, result, _markdown)


def main() -> None:
    cli(__doc__.splitlines()[0], reports_dir() / "rwkv", run, _markdown)


if __name__ == "__main__":
    main()
