"""Speed of the TTT layer's dual form and of TTT generation (Sun et al. 2024, "Learning to (Learn at Test Time):
RNNs with Expressive Hidden States", arXiv 2407.04620, Sec. 2.5 the dual form, Sec. 3.3 wall-clock time).

    1. The inner loop, forward + backward, per sequence length L, mini-batch b = 16, batch 1, H = 4 heads of
       D = 64, LN and residual in f, random inputs (q, k, v ~ N(0, 1), η = 0.01 / D per token):
       TTT-Linear: our ``ttt_dual`` against ``ttt_primal_minibatch`` (the primal form vectorised per mini-batch:
       b per-token gradients and b weight copies materialised, as the paper times it), our token-by-token
       reference ``ttt_primal`` (per-token gradients by autograd) and fla-core's pure-PyTorch
       ``chunk_ttt_linear_ref`` (``common.fla``; "not installed" without fla-core; dual-form algebra in fp32);
       TTT-MLP (hidden 4D): the same but fla (it has no PyTorch TTT-MLP). The token-by-token reference is
       skipped where it would take more than ~REFERENCE_BUDGET_S. All compute α_t = 1 (fla's weighting).
       Target: the dual form >= 5x the primal form at L = 1024 (the paper: > 5x on TPU).
    2. Generation, batch 1, CPU: ms per token and state bytes of a random TTT-Linear and TTT-MLP LM (vocab
       1000, d_model 256, 4 layers, 4 heads) and of a GPT of the same width (its KV cache for contrast) at
       positions 64 and 4096 (common.inference.generation_costs: prefilled prompts, single steps taking turns,
       median of the timed steps). Target: flat, i.e. ms / token at 4096 <= 1.2x at 64, and the same state.

Usage: ``python -m papers.ttt.bench [--out DIR] [--lengths 256 1024 4096] [--repeats 3]``; writes DIR/bench.md
and DIR/bench.json (default DIR: reports/ttt) and ``run`` returns the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from common.bench import cli, environment, environment_line, package_version, time_paths, write_results
from common.errors import PaperzooError
from common.fla import fla_naive
from common.inference import generation_costs
from common.models import zoo
from common.paths import reports_dir

from .ops import inner_shapes, output_rule, ttt_dual, ttt_primal, ttt_primal_minibatch

KERNEL = dict(batch=1, heads=4, head_dim=64, mini_batch=16)
LM = dict(vocab_size=1000, d_model=256, n_layers=4, n_heads=4)
POSITIONS = (64, 4096)
REFERENCE_BUDGET_S = 60.0
TARGET_L, TARGET_DUAL_SPEEDUP, TARGET_FLAT = 1024, 5.0, 1.2
FLA_TTT = "ops/ttt/naive.py"


# ---- 1. the inner loop ----------------------------------------------------------------------------------
def _inputs(inner: str) -> Callable[[int, torch.device], dict]:
    def make(length: int, device: torch.device, seed: int = 0) -> dict:
        g = torch.Generator().manual_seed(seed)
        b, h, d = KERNEL["batch"], KERNEL["heads"], KERNEL["head_dim"]
        x = {name: torch.randn(b, h, length, d, generator=g) for name in ("q", "k", "v")}
        x["weights"] = [0.02 * torch.randn(*s, generator=g) for s in inner_shapes(inner, h, d)]
        x["ln"] = [torch.ones(h, d), torch.zeros(h, d)]
        leaves = {k: v.to(device).requires_grad_() if torch.is_tensor(v) else [t.to(device).requires_grad_()
                  for t in v] for k, v in x.items()}  # fmt: skip
        return leaves | {"eta": torch.full((b, h, length), 0.01 / d, device=device)}

    return make


def _ours(form: Callable) -> Callable:
    def layer(q, k, v, eta, weights, ln):
        z_bar = form(q, k, v, eta, tuple(weights), tuple(ln), KERNEL["mini_batch"])  # α = 1, as fla
        return output_rule(z_bar[0] if isinstance(z_bar, tuple) else z_bar, q, tuple(ln))

    return layer


def _fla_linear(q, k, v, eta, weights, ln):
    """fla's reference on the same tensors, in its (B, T, H, D) layout (its η by query token: a constant here)."""
    w, b = weights
    o, _, _ = fla_naive(FLA_TTT).chunk_ttt_linear_ref(
        *(t.transpose(1, 2).clone() for t in (q, k, v)), ln[0], ln[1], float(eta[0, 0, 0]) * 2, scale=1.0,
        mini_batch_size=KERNEL["mini_batch"], initial_state=w.expand(q.shape[0], *w.shape).contiguous(),
        initial_state_bias=b[:, None].expand(q.shape[0], *b.shape[:1], 1, b.shape[-1]).contiguous(),
    )  # fmt: skip
    return o


def kernel_paths(inner: str) -> dict[str, Callable | None]:
    paths = {"fast": _ours(ttt_dual), "primal": _ours(ttt_primal_minibatch), "reference": _ours(ttt_primal)}
    if inner == "linear":
        try:
            fla_naive(FLA_TTT)
            paths["fla_naive"] = _fla_linear
        except PaperzooError:  # fla-core (or einops) is not installed
            paths["fla_naive"] = None
    return paths


def bench_kernels(lengths, repeats, device, log) -> dict:
    return {
        f"ttt_{inner}": time_paths(f"ttt_{inner}", _inputs(inner), kernel_paths(inner), tuple(lengths), repeats,
                                   device, log, REFERENCE_BUDGET_S, extrapolated=lambda name: name == "reference")
        for inner in ("linear", "mlp")
    }  # fmt: skip


# ---- 2. generation ----------------------------------------------------------------------------------------
def bench_generation(lm: dict, positions: tuple[int, ...], log: Callable[[str], None]) -> list[dict]:
    rows = []
    models = {
        "TTT-Linear": ("ttt", dict(lm, inner="linear")),
        "TTT-MLP": ("ttt", dict(lm, inner="mlp")),
        "GPT (KV cache)": ("gpt", dict(lm, block_size=max(positions) + 1)),
    }
    for name, (arch, config) in models.items():
        torch.manual_seed(0)
        model = zoo.build(arch, config)
        costs = generation_costs(model, positions)
        first, last = costs[positions[0]], costs[positions[-1]]
        row = {"model": name, "params": model.num_params(), "costs": {str(p): c for p, c in costs.items()},
               "ms_ratio": last["ms_per_token"] / first["ms_per_token"],
               "state_ratio": last["state_bytes"] / first["state_bytes"]}  # fmt: skip
        log(
            f"generation {name}: " + ", ".join(f"{c['ms_per_token']:.2f} ms at {p}" for p, c in costs.items())
        )
        rows.append(row)
    return rows


# ---- targets and report -----------------------------------------------------------------------------------
def _targets(r: dict) -> list[str]:
    lines = []
    for kernel in ("ttt_linear", "ttt_mlp"):
        row = next((x for x in r[kernel] if x["L"] == TARGET_L), None)
        goal = (
            f"{kernel}: the dual form >= {TARGET_DUAL_SPEEDUP:.0f}x the primal form at L = {TARGET_L}, b = 16"
        )
        if row is None or "speedup_vs_primal" not in row:
            lines.append(f"{goal}: not measured in this run.")
            continue
        s = row["speedup_vs_primal"]
        lines.append(f"{goal}: {'met' if s >= TARGET_DUAL_SPEEDUP else 'NOT met'}, {s:.1f}x "
                     f"({1e3 * row['fast']:.1f} ms vs {1e3 * row['primal']:.1f} ms, forward + backward).")  # fmt: skip
    for row in r["generation"]:
        if row["model"].startswith("GPT"):
            continue
        flat = row["ms_ratio"] <= TARGET_FLAT and row["state_ratio"] == 1.0
        lines.append(f"{row['model']} generation flat from position {r['positions'][0]} to {r['positions'][-1]} (ms ratio <= "
                     f"{TARGET_FLAT}, same state): {'met' if flat else 'NOT met'}, ms ratio {row['ms_ratio']:.2f}, "
                     f"state ratio {row['state_ratio']:.2f}.")  # fmt: skip
    return lines


def _fmt(value) -> str:
    return f"{1e3 * value:.1f}" if isinstance(value, float) else str(value)


def _kernel_table(rows: list) -> list[str]:
    paths = [p for p in ("fast", "primal", "reference", "fla_naive") if p in rows[0]]
    others = [p for p in paths if p != "fast"]
    names = {"fast": "dual", "primal": "primal form", "reference": "token by token", "fla_naive": "fla naive"}
    header = ["L", *(names[p] for p in paths), *(f"dual vs {names[p]}" for p in others)]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        ratios = [f"{row[f'speedup_vs_{p}']:.1f}x" if f"speedup_vs_{p}" in row else "-" for p in others]
        lines.append(f"| {row['L']} | " + " | ".join([_fmt(row[p]) for p in paths] + ratios) + " |")
    return lines


def _markdown(r: dict) -> str:
    k = KERNEL
    lines = [
        "# TTT: the dual form and generation speed",
        "",
        environment_line(r),
        "",
        f"fla-core: {r['fla_core'] or 'not installed'}.",
        "",
        f"## TTT-Linear inner loop, forward + backward (ms; batch {k['batch']}, {k['heads']} heads of "
        f"{k['head_dim']}, b = {k['mini_batch']}, LN + residual)",
        "",
        *_kernel_table(r["ttt_linear"]),
        "",
        f"## TTT-MLP inner loop, forward + backward (ms; hidden {4 * k['head_dim']}, the same otherwise)",
        "",
        *_kernel_table(r["ttt_mlp"]),
        "",
        f"## Generation, batch 1 (vocab {r['lm']['vocab_size']}, d_model {r['lm']['d_model']}, {r['lm']['n_layers']} "
        "layers; median of 64 single steps per position, the positions taking turns)",
        "",
        "| model | params | "
        + " | ".join(f"ms / token at {p} | state bytes at {p}" for p in POSITIONS)
        + " | ms ratio | state ratio |",
        "|" + " --- |" * (4 + 2 * len(POSITIONS)),
    ]
    for row in r["generation"]:
        cells = [row["model"], f"{row['params']:,}"]
        for p in r["positions"]:
            cost = row["costs"][str(p)]
            cells += [f"{cost['ms_per_token']:.2f}", f"{int(cost['state_bytes']):,}"]
        cells += [f"{row['ms_ratio']:.2f}", f"{row['state_ratio']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Targets", "", *(f"- {line}" for line in _targets(r))]
    return "\n".join(lines) + "\n"


def run(out_dir, lengths=(256, 1024, 4096), repeats: int = 3, lm: dict = LM,
        positions: tuple[int, ...] = POSITIONS, log: Callable[[str], None] = print) -> dict:  # fmt: skip
    """The inner loop on CUDA if available, else CPU; generation on CPU; write ``out_dir/bench.{md,json}``."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {**environment(device), "fla_core": package_version("fla-core"), "positions": list(positions), "lm": dict(lm),
              **bench_kernels(lengths, repeats, device, log),
              "generation": bench_generation(lm, tuple(positions), log)}  # fmt: skip
    result["targets"] = _targets(result)
    return write_results(out_dir, result, _markdown)


def main() -> None:
    cli(__doc__.splitlines()[0], reports_dir() / "ttt", run, _markdown)


if __name__ == "__main__":
    main()
