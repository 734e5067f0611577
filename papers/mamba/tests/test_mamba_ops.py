"""The chunked selective scan (fast path) against the sequential reference: values, last state, every gradient."""

import pytest
import torch

from papers.mamba import ops
from papers.mamba.ops import selective_scan, selective_scan_ref

ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(
    L, layout="selective", extras=True, batch=2, d=5, n=3, dtype=torch.float64, seed=0, device="cpu"
):
    """Scan inputs; layout: B and C both selective (batch, n, L), both time-invariant (d, n), or one of each."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=dtype)).to(device).requires_grad_()

    sel_B, sel_C = {"selective": (True, True), "lti": (False, False), "mixed": (True, False)}[layout]
    x = {
        "u": rand(batch, d, L),
        "delta": rand(batch, d, L, scale=0.5),
        "A": (-torch.rand(d, n, generator=g, dtype=dtype) * 4 - 0.1).to(device).requires_grad_(),
        "B": rand(batch, n, L) if sel_B else rand(d, n),
        "C": rand(batch, n, L) if sel_C else rand(d, n),
    }
    if extras:
        x |= {"D": rand(d), "z": rand(batch, d, L), "delta_bias": rand(d, scale=0.5)}
    return x


def outputs_and_grads(fn, x, delta_softplus=True):
    out, last = fn(**x, delta_softplus=delta_softplus, return_last_state=True)
    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=g, dtype=out.dtype).to(out.device)
    w_last = torch.randn(last.shape, generator=g, dtype=last.dtype).to(out.device)
    loss = (out * w_out).sum() + (last * w_last).sum()
    names = [k for k in ARGS if k in x]
    grads = torch.autograd.grad(loss, [x[k] for k in names])
    return {"out": out, "last_state": last} | {f"grad_{k}": v for k, v in zip(names, grads)}


def rel_rms(a, b):
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30)).item()


@pytest.mark.parametrize("L", [1, 2, 63, 130])
@pytest.mark.parametrize("layout", ["selective", "lti", "mixed"])
@pytest.mark.parametrize("extras", [False, True])
def test_fast_matches_reference_float64(L, layout, extras):
    x = make_inputs(L, layout, extras)
    fast, ref = outputs_and_grads(selective_scan, x), outputs_and_grads(selective_scan_ref, x)
    assert fast.keys() == ref.keys()
    for k in ref:
        assert fast[k].shape == ref[k].shape, k
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-10, atol=1e-10, msg=k)


@pytest.mark.parametrize("layout", ["selective", "lti"])
def test_fast_matches_reference_float32(layout):
    x = make_inputs(257, layout, dtype=torch.float32, d=16, n=8)
    fast, ref = outputs_and_grads(selective_scan, x), outputs_and_grads(selective_scan_ref, x)
    for k in ref:
        assert fast[k].dtype == torch.float32
        assert rel_rms(fast[k], ref[k]) <= 1e-5, k


def test_without_softplus_and_last_state_shape():
    x = make_inputs(37, extras=False)
    with torch.no_grad():
        x["delta"].abs_()  # Δ > 0 without the softplus
    fast = outputs_and_grads(selective_scan, x, delta_softplus=False)
    ref = outputs_and_grads(selective_scan_ref, x, delta_softplus=False)
    assert ref["last_state"].shape == (2, 5, 3)  # (batch, d, n)
    for k in ref:
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-10, atol=1e-10, msg=k)


def test_stable_for_large_and_tiny_steps():
    """Δ A from -1e3 (state wiped every step) to -1e-6 (near-perfect memory) in the same sequence."""
    x = make_inputs(200, extras=False, d=4)
    with torch.no_grad():
        x["delta"].copy_(torch.logspace(-6, 3, 4, dtype=torch.float64)[None, :, None].expand(2, 4, 200))
    fast = outputs_and_grads(selective_scan, x, delta_softplus=False)
    ref = outputs_and_grads(selective_scan_ref, x, delta_softplus=False)
    for k in ref:
        assert torch.isfinite(fast[k]).all(), k
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-9, atol=1e-9, msg=k)


def test_half_precision_inputs_return_their_dtype():
    x = {k: v.detach().to(torch.bfloat16) for k, v in make_inputs(40, dtype=torch.float32).items()}
    out = selective_scan(**x, delta_softplus=True)
    ref = selective_scan_ref(**{k: v.float() for k, v in x.items()}, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("L", [1, 63, 600])
@pytest.mark.parametrize("layout", ["selective", "lti", "mixed"])
def test_without_gradients_the_inference_scan_matches_reference(L, layout, monkeypatch):
    """No gradient wanted: ``selective_scan`` runs ``inference_scan`` (600 steps: two whole blocks of 256 and a
    partial one), never the autograd function, and gives the reference's output and last state."""
    x = {k: v.detach() for k, v in make_inputs(L, layout).items()}
    ref = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)

    def autograd_path(*args):
        raise AssertionError("the autograd scan ran without gradients")

    monkeypatch.setattr(ops.ChunkedSelectiveScan, "apply", autograd_path)
    fast = selective_scan(**x, delta_softplus=True, return_last_state=True)
    with torch.no_grad():  # inputs that require grad, under no_grad
        fast_no_grad = selective_scan(**make_inputs(L, layout), delta_softplus=True, return_last_state=True)
    for got in (fast, fast_no_grad):
        for a, b, name in zip(got, ref, ("out", "last_state")):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("block", [1, 7, 16, 63, 64])
@pytest.mark.parametrize("layout", ["selective", "lti"])
def test_inference_scan_block_boundaries(block, layout):
    """Every block size, each block entering with the last one's state: y and h_last of the reference."""
    x = {k: v.detach() for k, v in make_inputs(63, layout, extras=False).items()}
    delta = x["delta"].abs() + 0.05  # Δ > 0, as after the softplus
    ref_y, ref_h = selective_scan_ref(**(x | {"delta": delta}), return_last_state=True)
    y, h = ops.inference_scan(x["u"], delta, x["A"], x["B"], x["C"], block=block)
    torch.testing.assert_close(y, ref_y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h.transpose(1, 2), ref_h, rtol=1e-10, atol=1e-10)  # (b, n, d) -> (b, d, n)


def test_inference_scan_float32_at_length_2048():
    x = {k: v.detach() for k, v in make_inputs(2048, dtype=torch.float32, d=16, n=8).items()}
    ref = selective_scan_ref(**x, delta_softplus=True)
    assert rel_rms(selective_scan(**x, delta_softplus=True), ref) <= 1e-5


@pytest.mark.parametrize("layout", ["selective", "lti"])
def test_gradcheck(layout):
    x = make_inputs(7, layout, batch=1, d=2, n=2)

    def fn(*args):
        return selective_scan(**dict(zip(ARGS, args)), delta_softplus=True, return_last_state=True)

    assert torch.autograd.gradcheck(fn, tuple(x[k] for k in ARGS), eps=1e-6, atol=1e-7)


def test_fused_kernel_is_never_called_on_cpu_tensors(monkeypatch):
    def cuda_only(*args, **kwargs):
        raise AssertionError("the fused CUDA kernel was called with CPU tensors")

    monkeypatch.setattr(ops, "_fused_selective_scan", cuda_only)  # as if mamba_ssm were installed
    x = make_inputs(9)
    torch.testing.assert_close(selective_scan(**x), selective_scan_ref(**x), rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_chunked_path_on_cuda_matches_reference(monkeypatch):
    monkeypatch.setattr(ops, "_fused_selective_scan", None)  # the PyTorch path, even if mamba_ssm is there
    x = make_inputs(300, d=32, n=16, dtype=torch.float32, device="cuda")
    fast, ref = outputs_and_grads(selective_scan, x), outputs_and_grads(selective_scan_ref, x)
    for k in ref:
        assert rel_rms(fast[k], ref[k]) <= 1e-5, k


# ---- the convolution mode of a time-invariant SSM (Eq. 3a, 3b) against the same reference ------------------
CONV_ARGS = ("u", "delta", "A", "B", "C", "D", "z")


def conv_inputs(L, extras=True, dtype=torch.float64, **kw):
    """Time-invariant inputs: Δ (d,) > 0, one per channel; B, C (d, n)."""
    x = make_inputs(L, "lti", extras, dtype=dtype, **kw)
    x["delta"] = torch.nn.functional.softplus(x["delta"][0, :, 0].detach()).requires_grad_()  # (d,)
    x.pop("delta_bias", None)  # the convolution takes Δ with its bias and softplus applied
    return x


def conv_outputs_and_grads(x, fast):
    """The output and the gradient of every input, by the convolution (fast) or the reference scan."""
    if fast:
        out = ops.ssm_convolution(**x)
    else:
        delta = x["delta"][None, :, None].expand_as(x["u"])  # (batch, d, L): the same Δ at every step
        out = selective_scan_ref(**(x | {"delta": delta}))
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    names = [k for k in CONV_ARGS if k in x]
    grads = torch.autograd.grad((out * w).sum(), [x[k] for k in names])
    return {"out": out} | {f"grad_{k}": v for k, v in zip(names, grads)}


@pytest.mark.parametrize("L", [1, 2, 63, 64, 130])
@pytest.mark.parametrize("extras", [False, True])
def test_convolution_matches_reference_float64(L, extras):
    x = conv_inputs(L, extras)
    fast, ref = conv_outputs_and_grads(x, fast=True), conv_outputs_and_grads(x, fast=False)
    assert fast.keys() == ref.keys() and len(ref) == (8 if extras else 6)
    for k in ref:
        assert fast[k].shape == ref[k].shape, k
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-10, atol=1e-10, msg=k)


def test_convolution_matches_reference_float32():
    x = conv_inputs(257, dtype=torch.float32, d=16, n=8)
    fast, ref = conv_outputs_and_grads(x, fast=True), conv_outputs_and_grads(x, fast=False)
    for k in ref:
        assert fast[k].dtype == torch.float32
        assert rel_rms(fast[k], ref[k]) <= 1e-5, k


def test_convolution_stable_for_large_and_tiny_steps():
    """Δ A from -1e3 (a kernel of one tap) to -1e-6 (a kernel that never decays) side by side."""
    x = conv_inputs(200, extras=False, d=4)
    with torch.no_grad():
        x["delta"].copy_(torch.logspace(-6, 3, 4, dtype=torch.float64))
    fast, ref = conv_outputs_and_grads(x, fast=True), conv_outputs_and_grads(x, fast=False)
    for k in ref:
        assert torch.isfinite(fast[k]).all(), k
        torch.testing.assert_close(fast[k], ref[k], rtol=1e-9, atol=1e-9, msg=k)


def test_convolution_half_precision_inputs_return_their_dtype():
    x = {k: v.detach().to(torch.bfloat16) for k, v in conv_inputs(40, dtype=torch.float32).items()}
    out = ops.ssm_convolution(**x)
    delta = x["delta"].float()[None, :, None].expand(*x["u"].shape)
    ref = selective_scan_ref(**({k: v.float() for k, v in x.items()} | {"delta": delta}))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


def test_convolution_gradcheck():
    x = conv_inputs(7, batch=1, d=2, n=2)
    assert torch.autograd.gradcheck(
        lambda *a: ops.ssm_convolution(**dict(zip(CONV_ARGS, a))),
        tuple(x[k] for k in CONV_ARGS),
        eps=1e-6,
        atol=1e-7,
    )
