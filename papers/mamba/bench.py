"""Speed of the selective scan and of recurrent generation, Gu & Dao 2023, "Mamba: Linear-Time Sequence
Modeling with Selective State Spaces", arXiv 2312.00752 (Sec. 3.3: the scan; the recurrent mode: constant
time and memory per generated token).

    1. Selective scan (Eq. 2a, 2b, 4 with softplus(Δ + bias), D and the SiLU(z) gate), forward + backward,
       batch 2, d = 128, n = 16, per sequence length L: our fast path (``selective_scan``), our sequential
       reference (skipped where it would take more than ~30 s), mambapy's Blelloch ``pscan`` path, and
       mamba_ssm's ``selective_scan_ref`` when it is installed.
    2. The time-invariant (LTI, S4D-style) SSM of the selective-copying baselines, forward + backward, same
       sizes with Δ, B, C fixed: the convolution mode (``ssm_convolution``, Eq. 3a, 3b by FFT) against the
       chunked scan run on the same inputs (Δ expanded to every step) and the sequential reference.
    3. The selective scan forward without gradients (evaluation, e.g. induction heads tested at 2^14), batch
       8 as the evaluation's slices at 2^14, d = 128, n = 16: ``inference_scan`` (blocks of
       ``INFERENCE_BLOCK`` steps) against the chunked scan over the whole length, the path it replaced there.
    4. Generation with ``build_mamba_lm``'s recurrent ``step``: time per token and size of the state at
       positions 64 and 4096; the state must not grow (no KV cache).

Usage: ``python -m papers.mamba.bench [--out DIR] [--lengths 256 1024 4096] [--repeats 3]`` (section 3 at
1024, 4096 and 16384 steps); writes
DIR/bench.md and DIR/bench.json (default DIR: reports/mamba) and ``run`` returns the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from common.bench import cli, environment, environment_line, sync, time_paths, timed, write_results
from common.models.lm import state_bytes
from common.paths import reports_dir

from .model import build_mamba_lm
from .ops import INFERENCE_BLOCK, selective_scan, selective_scan_ref, ssm_convolution

SCAN = dict(batch=2, d=128, n=16)
INFERENCE_BATCH = 8  # the induction-heads evaluation's slices at 2^14: max_eval_tokens 2^17 / 2^14
LM = dict(vocab_size=65, d_model=128, n_layers=4)  # the shakespeare_char Mamba of experiment.py
REFERENCE_BUDGET_S = 30.0


def _scan_inputs(length: int, device: torch.device, seed: int = 0, batch: int = SCAN["batch"]) -> dict:
    """Inputs in mamba_ssm's layout: u, delta, z (b, d, L); A (d, n); B, C (b, n, L); D, delta_bias (d,)."""
    g = torch.Generator().manual_seed(seed)
    b, d, n = batch, SCAN["d"], SCAN["n"]
    x = {
        "u": torch.randn(b, d, length, generator=g),
        "delta": torch.randn(b, d, length, generator=g) * 0.5,
        "A": -torch.arange(1.0, n + 1).repeat(d, 1),  # S4D-Real, as at initialisation
        "B": torch.randn(b, n, length, generator=g),
        "C": torch.randn(b, n, length, generator=g),
        "D": torch.ones(d),
        "z": torch.randn(b, d, length, generator=g),
        "delta_bias": torch.randn(d, generator=g) * 0.5 - 4.0,  # softplus -> Δ around 0.02
    }
    return {k: v.to(device).requires_grad_() for k, v in x.items()}


def _lti_inputs(length: int, device: torch.device, seed: int = 0) -> dict:
    """A time-invariant SSM: u, z (b, d, L); delta (d,) the step Δ > 0; A, B, C (d, n); D (d,)."""
    g = torch.Generator().manual_seed(seed)
    b, d, n = SCAN["batch"], SCAN["d"], SCAN["n"]
    x = {
        "u": torch.randn(b, d, length, generator=g),
        "delta": F.softplus(torch.randn(d, generator=g) * 0.5 - 4.0),  # Δ around 0.02
        "A": -torch.arange(1.0, n + 1).repeat(d, 1),
        "B": torch.ones(d, n),  # S4D's initialisation, as in MambaMixer(selective=False)
        "C": torch.randn(d, n, generator=g),
        "D": torch.ones(d),
        "z": torch.randn(b, d, length, generator=g),
    }
    return {k: v.to(device).requires_grad_() for k, v in x.items()}


def _as_scan(scan: Callable) -> Callable:
    """An LTI SSM run through a scan: Δ (d,) expanded to every step (b, d, L)."""
    return lambda u, delta, **rest: scan(u, delta[None, :, None].expand_as(u), **rest)


def bench_lti(
    lengths: tuple[int, ...], repeats: int, device: torch.device, log: Callable[[str], None]
) -> list:
    paths = {
        "fast": ssm_convolution,
        "scan": _as_scan(selective_scan),
        "reference": _as_scan(selective_scan_ref),
    }
    return time_paths("lti", _lti_inputs, paths, lengths, repeats, device, log, REFERENCE_BUDGET_S,
                      extrapolated=lambda name: name == "reference")  # fmt: skip


def _mambapy_scan(u, delta, A, B, C, D, z, delta_bias):
    """The same function through mambapy's parallel scan, in its (b, L, d) layout (``MambaBlock.ssm``)."""
    from mambapy.pscan import pscan

    x, zt = u.transpose(1, 2), z.transpose(1, 2)  # (b, L, d)
    dt = F.softplus(delta.transpose(1, 2) + delta_bias)  # (b, L, d)
    Bt, Ct = B.transpose(1, 2), C.transpose(1, 2)  # (b, L, n)
    hs = pscan(torch.exp(dt[..., None] * A), dt[..., None] * Bt[:, :, None, :] * x[..., None])  # (b, L, d, n)
    y = (hs @ Ct[..., None])[..., 0] + D * x  # (b, L, d)
    return (y * F.silu(zt)).transpose(1, 2)


def _scan_paths() -> dict[str, Callable | None]:
    """Each path maps the inputs of ``_scan_inputs`` to the output (b, d, L); None if not installed."""
    paths: dict[str, Callable | None] = {
        "fast": partial(selective_scan, delta_softplus=True),
        "reference": partial(selective_scan_ref, delta_softplus=True),
    }
    try:
        import mambapy.pscan  # noqa: F401

        paths["mambapy_pscan"] = _mambapy_scan
    except ImportError:
        paths["mambapy_pscan"] = None
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_ref as official_ref

        paths["mamba_ssm_reference"] = partial(official_ref, delta_softplus=True)
    except ImportError:
        paths["mamba_ssm_reference"] = None
    return paths


def bench_scan(
    lengths: tuple[int, ...], repeats: int, device: torch.device, log: Callable[[str], None]
) -> list:
    return time_paths("scan", _scan_inputs, _scan_paths(), lengths, repeats, device, log, REFERENCE_BUDGET_S,
                      extrapolated=lambda name: name.endswith("reference"))  # fmt: skip


def bench_inference(
    lengths: tuple[int, ...], repeats: int, device: torch.device, log: Callable[[str], None]
) -> list:
    """Forward only: ``selective_scan`` without gradients (``inference_scan``) against the same call whose inputs
    require gradients (the chunked scan over the whole length, its graph then dropped)."""
    rows = []
    for length in lengths:
        graded = _scan_inputs(length, device, batch=INFERENCE_BATCH)
        x = {k: v.detach() for k, v in graded.items()}

        def blocks(x=x):
            with torch.no_grad():
                selective_scan(**x, delta_softplus=True)

        def whole(graded=graded):
            selective_scan(**graded, delta_softplus=True)

        t = timed({"blocks": blocks, "whole": whole}, repeats, device)
        rows.append({"L": length, **t, "speedup": t["whole"] / t["blocks"]})
        log(
            f"inference L={length}: blocks {1e3 * t['blocks']:.1f} ms, whole length {1e3 * t['whole']:.1f} ms"
        )
    return rows


@torch.no_grad()
def bench_generation(
    positions: tuple[int, ...], tokens: int, device: torch.device, log: Callable[[str], None]
) -> dict:
    """Step the LM to each position through its recurrent form, then time ``tokens`` more steps."""
    torch.manual_seed(0)
    lm = build_mamba_lm(**LM).to(device).eval()
    state, token, rows = lm.init_state(1), torch.zeros(1, dtype=torch.long, device=device), []
    for position in sorted(positions):
        while state["pos"] < position:
            logits, state = lm.step(token, state)
            token = logits.argmax(-1)
        sync(device)
        start = time.perf_counter()
        for _ in range(tokens):
            logits, state = lm.step(token, state)
            token = logits.argmax(-1)
        sync(device)
        seconds = (time.perf_counter() - start) / tokens
        rows.append(
            {"position": position, "ms_per_token": 1e3 * seconds, "state_bytes": state_bytes(state["layers"])}
        )
        log(
            f"generation at position {position}: {1e3 * seconds:.2f} ms/token, state {rows[-1]['state_bytes']} B"
        )
    return {
        "model": {**LM, "params": lm.num_params()},
        "timed_tokens": tokens,
        "rows": rows,
        "state_is_flat": len({r["state_bytes"] for r in rows}) == 1,
    }


def _fmt_ms(value) -> str:
    return f"{1e3 * value:.1f}" if isinstance(value, float) else str(value)


def _markdown(r: dict) -> str:
    lines = [
        "# Mamba: selective scan and generation speed",
        "",
        environment_line(r),
        "",
        f"## Selective scan, forward + backward (ms; batch {SCAN['batch']}, d {SCAN['d']}, n {SCAN['n']})",
        "",
        "| L | fast (ours) | reference (ours) | mambapy pscan | mamba_ssm reference | fast vs reference "
        "| fast vs mambapy |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["scan"]:
        ratio = [
            f"{row[k]:.1f}x" if k in row else "-"
            for k in ("speedup_vs_reference", "speedup_vs_mambapy_pscan")
        ]
        cells = [_fmt_ms(row[k]) for k in ("fast", "reference", "mambapy_pscan", "mamba_ssm_reference")]
        lines.append(f"| {row['L']} | " + " | ".join(cells + ratio) + " |")
    lines += [
        "",
        f"## Time-invariant SSM (LTI), forward + backward (ms; batch {SCAN['batch']}, d {SCAN['d']}, n {SCAN['n']})",
        "",
        "| L | convolution (Eq. 3b, FFT) | chunked scan | reference | convolution vs scan | convolution vs reference |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["lti"]:
        ratio = [f"{row[k]:.1f}x" if k in row else "-" for k in ("speedup_vs_scan", "speedup_vs_reference")]
        lines.append(
            f"| {row['L']} | "
            + " | ".join([_fmt_ms(row[k]) for k in ("fast", "scan", "reference")] + ratio)
            + " |"
        )
    lines += [
        "",
        f"## Selective scan, forward without gradients (ms; batch {INFERENCE_BATCH}, d {SCAN['d']}, n {SCAN['n']})",
        "",
        f"| L | inference_scan (blocks of {INFERENCE_BLOCK}) | chunked scan over the whole length | speedup |",
        "| --- | --- | --- | --- |",
    ]
    lines += [
        f"| {x['L']} | {_fmt_ms(x['blocks'])} | {_fmt_ms(x['whole'])} | {x['speedup']:.1f}x |"
        for x in r["inference"]
    ]
    g = r["generation"]
    m = g["model"]
    lines += [
        "",
        f"## Generation with the recurrent step ({m['n_layers']} layers, d_model {m['d_model']}, "
        f"{m['params']:,} params, batch 1, mean of {g['timed_tokens']} tokens)",
        "",
        "| position | ms / token | state (bytes) |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {x['position']} | {x['ms_per_token']:.2f} | {x['state_bytes']:,} |" for x in g["rows"]]
    lines += ["", f"State size independent of the position: {g['state_is_flat']}."]
    return "\n".join(lines) + "\n"


def run(
    out_dir: Path,
    lengths: tuple[int, ...] = (256, 1024, 4096),
    repeats: int = 3,
    inference_lengths: tuple[int, ...] = (1024, 4096, 16384),
    gen_positions: tuple[int, ...] = (64, 4096),
    gen_tokens: int = 32,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the benchmarks on CUDA if available, else CPU; write ``out_dir/bench.{md,json}``; return the numbers."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {
        **environment(device),
        "scan": bench_scan(tuple(lengths), repeats, device, log),
        "lti": bench_lti(tuple(lengths), repeats, device, log),
        "inference": bench_inference(tuple(inference_lengths), repeats, device, log),
        "generation": bench_generation(tuple(gen_positions), gen_tokens, device, log),
    }
    return write_results(out_dir, result, _markdown)


def main() -> None:
    cli(__doc__.splitlines()[0], reports_dir() / "mamba", run, _markdown)


if __name__ == "__main__":
    main()
