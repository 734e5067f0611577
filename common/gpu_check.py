"""``python -m common.gpu_check`` (``nox -s gpu-check``): is a CUDA machine ready for the lab?

One command, at most ``TOTAL_SECONDS`` = 7 minutes; every part has a time limit and prints its progress:

    1. ``pytest -m gpu``: the tests that need CUDA                                      <= 75 s
    2. each paper's ``gpu`` preset, ``STEPS`` steps per run, seed 0, evaluation cut down
       (``CHEAP_EVAL``), through ``common.reproduce`` in a subprocess with a throwaway MLflow
       store, runs and reports folder (no committed report is touched): pass/fail, tokens/s
                                          <= 150 s a paper, all papers within what 1 and 3 leave
    3. the GPT recipe (common.models.gpt, GPT-2 small: 12 layers, d 768, 12 heads, T 1024,
       vocab 50304) with bf16 autocast and torch.compile: training tokens/s and the model FLOPs
       utilisation (PaLM, Chowdhery et al. 2022, App. B; nanoGPT's estimate_mfu):

           MFU = (6 N + 12 L T d) * tokens/s / peak bf16 FLOP/s of the device             <= 90 s

       N = parameters without the position table; 12 L T d = attention scores and values per token.

It writes ``reports/gpu-check.md`` (device, torch/CUDA versions, commit, date, every check's result
and numbers) and exits non-zero if a check failed. Without CUDA it stops at once with one line.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from common.config import load_config, to_plain
from common.errors import PaperzooError
from common.experiment import load_paper
from common.paths import REPO_ROOT, discover_papers, reports_dir
from common.tracking import git_info, newest_runs

STEPS = 20
TOTAL_SECONDS, PYTEST_SECONDS, PAPER_SECONDS, GPT_SECONDS = 420, 75, 150, 90
# Evaluation keys of the papers' configs, capped so a 20-step check does not spend minutes evaluating.
CHEAP_EVAL = {"test_size": 64, "eval_batches": 4, "bleu_sentences": 32, "max_eval_tokens": 2**20}
MAX_TEST_LENGTH = 4096  # test_lengths above it are dropped
# Dense bf16 tensor-core peaks (NVIDIA datasheets), matched in order against the device name.
PEAK_BF16 = [("H200", 989.4e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989.4e12),
             ("A100", 312e12)]  # fmt: skip
GPT2_SMALL = {"vocab_size": 50304, "block_size": 1024, "n_layers": 12, "n_heads": 12, "d_model": 768}


@dataclass
class Check:
    name: str
    ok: bool
    numbers: str


def say(message: str) -> None:
    print(message, flush=True)


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak of a device by name, or None when it is not in PEAK_BF16."""
    return next((peak for key, peak in PEAK_BF16 if key in device_name), None)


def flops_per_token(n_params: int, n_layers: int, block_size: int, d_model: int) -> float:
    """Training FLOPs per token: 6 N (forward + backward of the weights) + 12 L T d (attention)."""
    return 6 * n_params + 12 * n_layers * block_size * d_model


# ---- 1. the gpu-marked tests -----------------------------------------------------------------
def run_gpu_tests() -> Check:
    say(f"[1/3] pytest -m gpu (at most {PYTEST_SECONDS}s)")
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    try:
        out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=PYTEST_SECONDS)
    except subprocess.TimeoutExpired:
        return Check("pytest -m gpu", False, f"timed out after {PYTEST_SECONDS}s")
    lines = (out.stdout + out.stderr).strip().splitlines()
    summary = lines[-1].strip("= ") if lines else "no output"
    say("      " + "\n      ".join(lines[-15:]))
    return Check("pytest -m gpu", out.returncode == 0, summary)


# ---- 2. every paper's gpu preset, briefly ------------------------------------------------------
def bounded_overrides(slug: str, steps: int = STEPS) -> list[str]:
    """Overrides of ``slug``'s gpu preset: seed 0, ``steps`` steps per run, cheap evaluation."""
    paper = load_paper(slug)
    out = ["scale=gpu", "seeds=[0]", "progress=false"]

    def walk(node: dict, prefix: str) -> None:
        if "max_steps" in node and "ckpt_every" in node:  # a TrainConfig
            out.extend([f"{prefix}max_steps={steps}", f"{prefix}eval_every=0", f"{prefix}ckpt_every={steps}"])
            return
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif key in CHEAP_EVAL and (value is None or value > CHEAP_EVAL[key]):
                out.append(f"{prefix}{key}={CHEAP_EVAL[key]}")
            elif key == "test_lengths" and max(value, default=0) > MAX_TEST_LENGTH:
                kept = [n for n in value if n <= MAX_TEST_LENGTH]
                out.append(f"{prefix}{key}=[{','.join(map(str, kept))}]")

    walk(to_plain(load_config(paper.schema, paper.path / "configs", ["scale=gpu"])), "")
    return out


def run_paper(slug: str, scratch: Path, timeout: float) -> list[Check]:
    """``python -m common.reproduce <slug>`` on the bounded gpu preset; a Check per run (tokens/s)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PAPERZOO_RUNS": str(scratch / "runs"),
           "PAPERZOO_REPORTS": str(scratch / "reports")}  # fmt: skip
    cmd = [sys.executable, "-m", "common.reproduce", slug, *bounded_overrides(slug)]
    started = time.time()
    try:
        out = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True, timeout=timeout)
        failure = last_line(out.stderr, out.returncode) if out.returncode else ""
    except subprocess.TimeoutExpired:
        failure = f"timed out after {timeout:.0f}s"
    checks = []
    client = MlflowClient(uri)
    for run in reversed(newest_runs(client, slug)):  # in the order they ran
        tokens = run.data.metrics.get("tokens_per_s")
        numbers = f"{tokens:,.0f} tokens/s" if tokens is not None else "no tokens/s logged"
        checks.append(Check(f"{slug}: {run.info.run_name}", run.info.status == "FINISHED", numbers))
    if failure or not checks:
        checks.append(Check(f"{slug}: reproduction", False, (failure or "no run finished")[:200]))
    say(f"      {slug}: {sum(c.ok for c in checks)}/{len(checks)} ok in {time.time() - started:.0f}s")
    return checks


def last_line(stderr: str, returncode: int) -> str:
    """Why a child failed: its last line on stderr, or its exit status when it died silently (OOM, SIGKILL)."""
    lines = stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {returncode}"


# ---- 3. GPT tokens/s and MFU -------------------------------------------------------------------
def measure_gpt(batch_size: int = 16, warmup: int = 3, seconds: float = 15.0) -> dict:
    """Train GPT-2 small on random tokens (bf16 autocast, torch.compile, fused AdamW); tokens/s, MFU."""
    from common.models.gpt import GPTConfig, build_gpt

    cfg = GPTConfig(**GPT2_SMALL)
    model = build_gpt(cfg).cuda()
    n_params = sum(p.numel() for p in model.parameters()) - model.pos_embed.weight.numel()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
    compiled = torch.compile(model)
    idx = torch.randint(cfg.vocab_size, (batch_size, cfg.block_size + 1), device="cuda")
    batch = {"idx": idx[:, :-1], "targets": idx[:, 1:]}

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = compiled(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    started = time.time()
    for _ in range(warmup):  # the first steps compile
        step()
    torch.cuda.synchronize()
    compile_s, steps, t0 = time.time() - started, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or steps < 5:
        step()
        steps += 1
        if steps % 5 == 0:
            torch.cuda.synchronize()
    torch.cuda.synchronize()
    tokens_per_s = steps * batch_size * cfg.block_size / (time.perf_counter() - t0)
    flops = flops_per_token(n_params, cfg.n_layers, cfg.block_size, cfg.d_model) * tokens_per_s
    peak = peak_bf16_flops(torch.cuda.get_device_name())
    return {"n_params": n_params, "tokens_per_s": tokens_per_s, "tflops": flops / 1e12,
            "mfu": flops / peak if peak else None, "peak_tflops": peak / 1e12 if peak else None,
            "compile_s": compile_s, "batch_size": batch_size}  # fmt: skip


def run_gpt() -> Check:
    say(f"[3/3] GPT-2 small, bf16 + torch.compile: tokens/s and MFU (at most {GPT_SECONDS}s)")
    name = "GPT-2 small (bf16 autocast, torch.compile)"
    cmd = [sys.executable, "-m", "common.gpu_check", "--gpt-only"]
    try:
        out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=GPT_SECONDS)
    except subprocess.TimeoutExpired:
        return Check(name, False, f"timed out after {GPT_SECONDS}s")
    if out.returncode:
        return Check(name, False, last_line(out.stderr, out.returncode)[:200])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    mfu = (f"MFU {100 * r['mfu']:.1f}% of {r['peak_tflops']:.0f} TFLOP/s bf16" if r["mfu"] is not None
           else f"MFU unknown: no bf16 peak for '{torch.cuda.get_device_name()}' in common.gpu_check.PEAK_BF16")  # fmt: skip
    numbers = (f"{r['tokens_per_s']:,.0f} tokens/s, {r['tflops']:.0f} TFLOP/s, {mfu}; "
               f"{r['n_params'] / 1e6:.0f}M parameters, batch {r['batch_size']}x1024, compile {r['compile_s']:.0f}s")  # fmt: skip
    say(f"      {numbers}")
    return Check(name, True, numbers)


# ---- the report --------------------------------------------------------------------------------
def environment() -> dict[str, str]:
    props = torch.cuda.get_device_properties(0)
    info = git_info()
    return {
        "device": f"{props.name} ({props.total_memory / 2**30:.0f} GiB) x {torch.cuda.device_count()}",
        "torch": torch.__version__,
        "CUDA": str(torch.version.cuda),
        "commit": info["git_commit"][:12] + (" (dirty)" if info["git_dirty"] == "true" else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def render(env: dict[str, str], checks: list[Check], seconds: float) -> str:
    passed = sum(c.ok for c in checks)
    lines = ["# GPU check", "", f"`nox -s gpu-check` (common/gpu_check.py): {passed}/{len(checks)} checks passed "
             f"in {seconds:.0f}s; each paper's gpu preset ran {STEPS} steps per run at seed 0.", ""]  # fmt: skip
    lines += [f"- {key}: {value}" for key, value in env.items()]
    lines += ["", "| check | result | numbers |", "|---|---|---|"]
    lines += [
        f"| {c.name} | {'pass' if c.ok else '**FAIL**'} | {c.numbers.replace('|', '/')} |" for c in checks
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--gpt-only", action="store_true", help="part 3 alone, one JSON line (used by part 3)"
    )
    args = parser.parse_args(argv)
    try:
        if not torch.cuda.is_available():
            raise PaperzooError("gpu-check needs a CUDA device; none found")
        if args.gpt_only:
            print(json.dumps(measure_gpt()), flush=True)
            return 0
        started = time.time()
        env = environment()
        say(f"gpu-check on {env['device']}, torch {env['torch']}, CUDA {env['CUDA']}")
        checks = [run_gpu_tests()]
        slugs = discover_papers()
        say(f"[2/3] each paper's gpu preset, {STEPS} steps per run (at most {PAPER_SECONDS}s a paper)")
        deadline = started + TOTAL_SECONDS - GPT_SECONDS  # what the papers may use together
        with tempfile.TemporaryDirectory(prefix="paperzoo-gpu-check-") as scratch:
            for slug in slugs:
                timeout = min(PAPER_SECONDS, deadline - time.time())
                if timeout < 10:
                    checks.append(
                        Check(f"{slug}: reproduction", False, "not run: the check's time was used up")
                    )
                    continue
                say(f"      {slug} ...")
                (Path(scratch) / slug).mkdir()
                checks += run_paper(slug, Path(scratch) / slug, timeout)
        checks.append(run_gpt())
        out = reports_dir() / "gpu-check.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(env, checks, time.time() - started))
    except PaperzooError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    failed = [c.name for c in checks if not c.ok]
    say(f"wrote {out}; " + (f"FAILED: {', '.join(failed)}" if failed else "every check passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
