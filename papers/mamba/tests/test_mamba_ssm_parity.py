"""Parity with the official implementation (state-spaces/mamba, ``mamba_ssm``); skipped when it is not installed.

Its ``selective_scan_ref`` computes in fp32 (it casts fp64 inputs down), hence the fp32 tolerances. On a GPU
its fused kernel ``selective_scan_fn`` (what our ``selective_scan`` dispatches to there) is checked too.
"""

import pytest
import torch

from papers.mamba import ops
from papers.mamba.ops import selective_scan, selective_scan_ref

mamba_ssm = pytest.importorskip("mamba_ssm")
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: E402
from mamba_ssm.ops.selective_scan_interface import selective_scan_ref as official_ref  # noqa: E402

from papers.mamba.tests.test_mamba_ops import make_inputs, outputs_and_grads, rel_rms  # noqa: E402


@pytest.mark.parametrize("layout", ["selective", "lti", "mixed"])
@pytest.mark.parametrize("extras", [False, True])
def test_references_agree_on_cpu(layout, extras):
    x = make_inputs(130, layout, extras, dtype=torch.float32, d=8, n=4)
    official = outputs_and_grads(official_ref, x)
    for fn in (selective_scan_ref, selective_scan):
        ours = outputs_and_grads(fn, x)
        for k in official:
            assert rel_rms(ours[k], official[k]) <= 1e-5, (fn.__name__, k)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_fused_kernel_matches_reference_on_cuda(dtype, tol):
    assert ops._fused_selective_scan is selective_scan_fn  # dispatch: the fused kernel is what runs on CUDA
    x = make_inputs(512, "selective", dtype=torch.float32, d=64, n=16, device="cuda")
    x_low = {k: v.detach().to(dtype).requires_grad_() for k, v in x.items()}
    for k in ("A", "D", "delta_bias"):  # the kernel wants its SSM parameters in fp32
        x_low[k] = x[k].detach().clone().requires_grad_()
    fused = outputs_and_grads(selective_scan, x_low)
    ref = outputs_and_grads(
        selective_scan_ref, {k: v.detach().float().requires_grad_() for k, v in x_low.items()}
    )
    for k in ref:
        assert rel_rms(fused[k].float(), ref[k]) <= tol, k
