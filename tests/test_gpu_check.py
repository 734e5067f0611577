"""common.gpu_check on a CPU machine: the one-line refusal, its overrides of the gpu presets, MFU arithmetic."""

import os
import subprocess
import sys

import pytest
import torch

from common import gpu_check
from common.config import load_config
from common.experiment import load_paper
from common.gpu_check import Check, bounded_overrides, flops_per_token, peak_bf16_flops, render, run_paper
from common.paths import REPO_ROOT, discover_papers


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_it_stops_with_one_line():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-m", "common.gpu_check"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2  # PaperzooError.exit_code
    assert out.stderr == "error: gpu-check needs a CUDA device; none found\n" and out.stdout == ""


@pytest.mark.parametrize("slug", discover_papers())
def test_the_overrides_bound_every_run_of_the_gpu_preset(slug):
    """The overrides are valid keys of the paper's config, and every planned run trains 20 steps at seed 0 (or 0
    steps: a run that only evaluates, such as LoRA's base model)."""
    paper = load_paper(slug)
    cfg = load_config(paper.schema, paper.path / "configs", bounded_overrides(slug, steps=20))
    assert cfg.scale == "gpu" and list(cfg.seeds) == [0]
    runs = paper.plan(cfg)
    assert runs and all(run.train.max_steps in (0, 20) and run.train.eval_every == 0 for run in runs)
    assert any(run.train.max_steps == 20 for run in runs)


def test_mfu_arithmetic():
    # GPT-2 small without its position table: 124.4M - 0.79M parameters; 12 L T d = 113M per token
    assert flops_per_token(123_653_376, 12, 1024, 768) == 6 * 123_653_376 + 12 * 12 * 1024 * 768
    assert peak_bf16_flops("NVIDIA H200") == peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("Tesla T4") is None


def test_the_report_lists_every_check():
    env = {
        "device": "NVIDIA H200 (139 GiB) x 1",
        "torch": "2.13.0",
        "CUDA": "12.8",
        "commit": "abc",
        "date": "d",
    }
    checks = [Check("pytest -m gpu", True, "4 passed"), Check("mamba: reproduction", False, "error: x | y")]
    text = render(env, checks, 300.0)
    assert "1/2 checks passed in 300s" in text and "- device: NVIDIA H200 (139 GiB) x 1" in text
    assert "| pytest -m gpu | pass | 4 passed |" in text
    assert "| mamba: reproduction | **FAIL** | error: x / y |" in text


def test_a_paper_whose_reproduction_dies_silently_fails_with_its_exit_status(tmp_path, monkeypatch):
    died = subprocess.CompletedProcess(args=[], returncode=-9, stderr="")  # OOM killer: no stderr at all
    monkeypatch.setattr(gpu_check.subprocess, "run", lambda *args, **kwargs: died)
    assert run_paper("_template", tmp_path, timeout=60) == [
        Check("_template: reproduction", False, "exit status -9")
    ]
