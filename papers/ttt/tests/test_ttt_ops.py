"""The TTT inner loop: dual form == primal (forward, every gradient, the end state), Theorems 1 and 2, the
autograd-free LayerNorm backward of the dual form, and continuing a state inside a mini-batch."""

import pytest
import torch

from papers.ttt.ops import (
    _gelu_grad,
    _layer_norm,
    _loss_grad_z,
    inner_shapes,
    linear_attention,
    nadaraya_watson,
    output_rule,
    per_sample,
    ttt_dual,
    ttt_primal,
    ttt_primal_minibatch,
)

B, H, T, D = 2, 2, 63, 8  # T = 63: a partial last mini-batch for every b below but T


def inner_weights(inner: str, g: torch.Generator, dtype=torch.float64) -> tuple[torch.Tensor, ...]:
    shapes = inner_shapes(inner, H, D)
    return tuple((0.3 * torch.randn(*s, generator=g, dtype=dtype)).requires_grad_() for s in shapes)


def layer_inputs(seed: int = 0, dtype=torch.float64, length: int = T):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, length, D, generator=g, dtype=dtype).requires_grad_() for _ in range(3))
    eta = (
        0.05 * torch.rand(B, H, length, generator=g, dtype=dtype)
    ).requires_grad_()  # η_s > 0, data-dependent
    ln = tuple((1 + 0.3 * torch.randn(H, D, generator=g, dtype=dtype)).requires_grad_() for _ in range(2))
    return q, k, v, eta, ln, g


@pytest.mark.parametrize("inner", ["linear", "mlp"])
@pytest.mark.parametrize("mini_batch", [1, 4, 16, T])
@pytest.mark.parametrize("mean", [False, True])
def test_dual_form_equals_primal_forward_and_every_gradient(inner, mini_batch, mean):
    q, k, v, eta, ln, g = layer_inputs()
    weights = inner_weights(inner, g)
    leaves = [q, k, v, eta, *weights, *ln]
    results = []
    for form in (ttt_primal, ttt_dual):
        z_bar, w_end, acc = form(q, k, v, eta, weights, ln, mini_batch, mean)
        out = output_rule(z_bar, q, ln)
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
        loss = (out * probe).sum() + sum(w.sum() for w in w_end) + sum(a.pow(2).sum() for a in acc)
        results.append((z_bar, w_end, acc, torch.autograd.grad(loss, leaves)))
    (zp, wp, ap, gp), (zd, wd, ad, gd) = results
    assert ad[0].abs().max() > 0 or T % mini_batch == 0  # the partial last mini-batch left an accumulator
    for ours, ref in [(zd, zp), *zip(wd, wp), *zip(ad, ap), *zip(gd, gp)]:
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("inner", ["linear", "mlp"])
@pytest.mark.parametrize("mini_batch", [1, 4, 16, T])
def test_the_vectorised_primal_form_equals_the_dual_form(inner, mini_batch):
    """The benchmark's primal form (per-token gradients materialised per mini-batch) computes the same z̄."""
    q, k, v, eta, ln, g = layer_inputs()
    weights = inner_weights(inner, g)
    leaves = [q, k, v, eta, *weights, *ln]
    primal = ttt_primal_minibatch(q, k, v, eta, weights, ln, mini_batch, True)
    dual = ttt_dual(q, k, v, eta, weights, ln, mini_batch, True)[0]
    torch.testing.assert_close(primal, dual, rtol=1e-10, atol=1e-10)
    for a, b in zip(
        torch.autograd.grad(primal.pow(2).sum(), leaves), torch.autograd.grad(dual.pow(2).sum(), leaves)
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("inner", ["linear", "mlp"])
def test_two_calls_equal_one_from_inside_a_mini_batch(inner):
    q, k, v, eta, ln, g = layer_inputs()
    weights = inner_weights(inner, g)
    with torch.no_grad():
        whole = ttt_dual(q, k, v, eta, weights, ln, 16, True)
        cut = 21  # inside the second mini-batch
        first = ttt_dual(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut], eta[:, :, :cut], weights, ln, 16, True)
        rest = ttt_dual(q[:, :, cut:], k[:, :, cut:], v[:, :, cut:], eta[:, :, cut:], first[1], ln, 16, True,
                        acc=first[2], start=cut)  # fmt: skip
    torch.testing.assert_close(torch.cat([first[0], rest[0]], dim=2), whole[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(rest[1] + rest[2], whole[1] + whole[2]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("use_ln", [True, False])
def test_the_dual_forms_gradient_at_z_is_autograds(use_ln):
    """∂ℓ/∂z written out (LayerNorm's backward) == autograd of ℓ = ‖f(k) - v‖² through z = f_res(k), where
    f(k) = k + LN(z) (or z): the loss of ``inner_loss`` as a function of z, k held fixed."""
    _, k, v, _, ln, g = layer_inputs()
    ln = ln if use_ln else None
    z = torch.randn(B, H, T, D, generator=g, dtype=torch.float64).requires_grad_()
    f_of_k = z if ln is None else k + _layer_norm(z, ln)  # f(k), z = f_res(k)
    (auto,) = torch.autograd.grad((f_of_k - v).pow(2).sum(), z)
    written = _loss_grad_z(z, k, v, ln)
    torch.testing.assert_close(written, auto, rtol=1e-12, atol=1e-12)
    x = torch.linspace(-5, 5, 101, dtype=torch.float64).requires_grad_()
    (gelu_auto,) = torch.autograd.grad(torch.nn.functional.gelu(x, approximate="tanh").sum(), x)
    torch.testing.assert_close(_gelu_grad(x), gelu_auto, rtol=1e-12, atol=1e-12)


def test_theorem_1_batch_gd_from_zero_is_linear_attention():
    """f(x) = x W, W_0 = 0, no LN / residual, b = T, η = 1/2: z_t = Σ_{s<=t} (q_t·k_s) v_s, exactly."""
    q, k, v, _, _, _ = layer_inputs()
    eta = torch.full((B, H, T), 0.5, dtype=torch.float64)
    w0 = (torch.zeros(H, D, D, dtype=torch.float64),)
    attention = linear_attention(q, k, v)
    with torch.no_grad():
        for form in (ttt_primal, ttt_dual):
            z, _, _ = form(q, k, v, eta, w0, None, mini_batch=T)
            assert (z - attention).abs().max() <= 1e-12
        z, _, _ = ttt_dual(q, k, v, eta, w0, None, mini_batch=16)  # mini-batches: no longer linear attention
        assert (z - attention).abs().max() > 1e-3


def test_theorem_2_nadaraya_watson_is_softmax_attention():
    q, k, v, _, _, _ = layer_inputs()
    with torch.no_grad():
        learner = nadaraya_watson(q, k, v)
        attention = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)
    torch.testing.assert_close(learner, attention, rtol=1e-12, atol=1e-12)


def test_the_inner_loop_stays_fp32_under_bf16_autocast():
    q, k, v, eta, ln, g = layer_inputs(dtype=torch.float32)
    weights = inner_weights("linear", g, torch.float32)
    with torch.no_grad():
        plain = ttt_dual(q, k, v, eta, weights, ln, 16, True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = ttt_dual(q, k, v, eta, weights, ln, 16, True)
    assert autocast[0].dtype == autocast[1][0].dtype == torch.float32
    torch.testing.assert_close(autocast[0], plain[0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_low_precision_inputs_compute_in_fp32(dtype, tol):
    q, k, v, eta, ln, g = layer_inputs()
    weights = inner_weights("linear", g)
    with torch.no_grad():
        ref = ttt_dual(q, k, v, eta, weights, ln, 16, True)[0]
        low = ttt_dual(*(x.to(dtype) for x in (q, k, v, eta)), tuple(w.to(dtype) for w in weights),
                       tuple(p.to(dtype) for p in ln), 16, True)[0]  # fmt: skip
    assert low.dtype == torch.float32
    assert ((low.double() - ref).abs().max() / ref.abs().max()).item() < tol


def test_per_sample_expands_only_the_shared_initial_weights():
    g = torch.Generator().manual_seed(0)
    shared = inner_weights("mlp", g)
    expanded = per_sample(shared, 3)
    assert [tuple(w.shape) for w in expanded] == [(3, *w.shape) for w in shared]
    assert all(a is b for a, b in zip(per_sample(expanded, 3), expanded))
