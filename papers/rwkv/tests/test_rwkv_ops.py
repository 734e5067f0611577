"""The chunked WKV kernels (wkv4, wkv7) against the sequential references: outputs, final state, every gradient
(incoming state included); the references against the papers' equations written out another way."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

from papers.rwkv.ops import wkv4, wkv4_ref, wkv7, wkv7_ref

F64, F32 = torch.float64, torch.float32
V4_ARGS, V4_STATE, V7_ARGS = ("w", "u", "k", "v"), ("aa", "bb", "pp"), ("r", "w", "k", "v", "a", "b")
CS4, CS7 = (inspect.signature(fn).parameters["chunk_size"].default for fn in (wkv4, wkv7))  # 32, 16


def rel_rms(a, b):
    return ((a - b).double().pow(2).mean().sqrt() / b.double().pow(2).mean().sqrt().clamp_min(1e-30)).item()


def max_abs(a, b):
    return (a - b).abs().max().item()


def v4_inputs(T, batch=2, C=8, dtype=F64, seed=0, state=False, k_scale=3.0, u_scale=0.5):
    """RWKV-4 at init: time_decay in [-5, 3] so w = -exp(time_decay) in [-20, -0.007]; u = log(0.3) + noise."""
    g = torch.Generator().manual_seed(seed)
    x = {
        "w": -torch.exp(torch.rand(C, generator=g, dtype=dtype) * 8 - 5),
        "u": math.log(0.3) + u_scale * torch.randn(C, generator=g, dtype=dtype),
        "k": k_scale * torch.randn(batch, T, C, generator=g, dtype=dtype),
        "v": torch.randn(batch, T, C, generator=g, dtype=dtype),
    }
    if state:  # a state reached by some earlier tokens: bb > 0 (a sum of exponentials), pp of the size of k
        x |= {
            "aa": torch.randn(batch, C, generator=g, dtype=dtype),
            "bb": torch.rand(batch, C, generator=g, dtype=dtype) + 0.1,
            "pp": 3 * torch.randn(batch, C, generator=g, dtype=dtype),
        }
    return {name: t.requires_grad_() for name, t in x.items()}


def v7_inputs(T, batch=2, H=2, N=8, dtype=F64, seed=0, state=False, ab="model", w_min=-0.606531):
    """RWKV-7: log decay w in [w_min, 0]; a = -κ̂, b = κ̂ ⊙ iclr (κ̂ unit per head, iclr in (0, 1)) as the model
    passes them, or small random a, b."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    x = {"r": rand(batch, T, H, N), "w": w_min * torch.rand(batch, T, H, N, generator=g, dtype=dtype)}
    x |= {"k": rand(batch, T, H, N), "v": rand(batch, T, H, N)}
    if ab == "model":
        kk = F.normalize(rand(batch, T, H, N), dim=-1)
        x |= {"a": -kk, "b": kk * torch.rand(batch, T, H, N, generator=g, dtype=dtype)}
    else:
        x |= {"a": 0.3 * rand(batch, T, H, N), "b": 0.3 * rand(batch, T, H, N)}
    if state:
        x["S"] = rand(batch, H, N, N)
    return {name: t.requires_grad_() for name, t in x.items()}


def run4(fn, x, **kw):
    state = tuple(x[n] for n in V4_STATE) if "aa" in x else None
    y, state = fn(*(x[n] for n in V4_ARGS), state=state, **kw)
    return y, state


def run7(fn, x, **kw):
    y, S = fn(*(x[n] for n in V7_ARGS), state=x.get("S"), **kw)
    return y, (S,)


def outputs_and_grads(run, fn, x, **kw):
    """y, the final state and the gradient of a random linear function of both w.r.t. every input."""
    y, state = run(fn, x, **kw)
    g = torch.Generator().manual_seed(1)
    outs = {"y": y} | {f"state{i}": s for i, s in enumerate(state)}
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=F64).to(o.dtype)).sum() for o in outs.values())
    grads = torch.autograd.grad(loss, list(x.values()))
    return outs | {f"grad_{name}": gr for name, gr in zip(x, grads)}


def assert_fast_matches_ref(fast, ref, max_err=1e-10):
    assert fast.keys() == ref.keys()
    for name in ref:
        assert fast[name].shape == ref[name].shape, name
        assert max_abs(fast[name], ref[name]) <= max_err, (name, max_abs(fast[name], ref[name]))


# ---- fast == reference ----------------------------------------------------------------------------------
LENGTHS_4 = [(1, CS4), (63, CS4), (64, CS4), (CS4 + 1, CS4), (63, 8), (64, 8), (65, 8), (17, 1)]
LENGTHS_7 = [(1, CS7), (63, CS7), (64, CS7), (CS7 + 1, CS7), (63, 4), (64, 8), (17, 1)]


@pytest.mark.parametrize("T, chunk_size", LENGTHS_4)
@pytest.mark.parametrize("state", [False, True])
def test_wkv4_fast_matches_reference_float64(T, chunk_size, state):
    x = v4_inputs(T, state=state)
    fast = outputs_and_grads(run4, wkv4, x, chunk_size=chunk_size)
    assert_fast_matches_ref(fast, outputs_and_grads(run4, wkv4_ref, x))


@pytest.mark.parametrize("T, chunk_size", LENGTHS_7)
@pytest.mark.parametrize("state", [False, True])
@pytest.mark.parametrize("ab", ["model", "random"])
def test_wkv7_fast_matches_reference_float64(T, chunk_size, state, ab):
    x = v7_inputs(T, state=state, ab=ab)
    fast = outputs_and_grads(run7, wkv7, x, chunk_size=chunk_size)
    assert_fast_matches_ref(fast, outputs_and_grads(run7, wkv7_ref, x))


@pytest.mark.parametrize("w_min", [-5.0, -20.0])
def test_wkv7_fast_matches_reference_with_strong_decays(w_min):
    """Decays far beyond the model's (log decay >= -0.61): e^{g_t} over a chunk underflows in fp32, and nothing
    divides by it."""
    for dtype, check in [
        (F64, lambda f, r: max_abs(f, r) <= 1e-10),
        (F32, lambda f, r: rel_rms(f, r) <= 1e-5),
    ]:
        x = v7_inputs(70, state=True, w_min=w_min, dtype=dtype)
        fast, ref = outputs_and_grads(run7, wkv7, x), outputs_and_grads(run7, wkv7_ref, x)
        for name in ref:
            assert torch.isfinite(fast[name]).all(), name
            assert check(fast[name], ref[name]), (dtype, name, rel_rms(fast[name], ref[name]))


def test_wkv4_fast_matches_reference_float32():
    """Within 1e-5 of the fp32 reference, and closer to the exact (fp64) values than the fp32 reference is: its
    running maximum pp, one rounded addition per token, drifts (~1e-5 on grad_w by T = 1000)."""
    x = v4_inputs(257, C=32, state=True)
    exact = outputs_and_grads(run4, wkv4_ref, x)
    x32 = {name: t.detach().float().requires_grad_() for name, t in x.items()}
    fast, ref = outputs_and_grads(run4, wkv4, x32), outputs_and_grads(run4, wkv4_ref, x32)
    for name in ref:
        assert fast[name].dtype == F32, name
        assert rel_rms(fast[name], ref[name]) <= 1e-5, (name, rel_rms(fast[name], ref[name]))
        assert rel_rms(fast[name], exact[name]) <= 1e-6, (name, rel_rms(fast[name], exact[name]))


@pytest.mark.parametrize("ab", ["model", "random"])
def test_wkv7_fast_matches_reference_float32(ab):
    x = v7_inputs(300, H=2, N=16, dtype=F32, state=True, ab=ab)
    fast, ref = outputs_and_grads(run7, wkv7, x), outputs_and_grads(run7, wkv7_ref, x)
    for name in ref:
        assert fast[name].dtype == F32, name
        assert rel_rms(fast[name], ref[name]) <= 1e-5, (name, rel_rms(fast[name], ref[name]))


# ---- the state carries a sequence across calls -----------------------------------------------------------
@pytest.mark.parametrize(
    "first, second", [(wkv4_ref, wkv4_ref), (wkv4, wkv4), (wkv4_ref, wkv4), (wkv4, wkv4_ref)]
)
def test_wkv4_two_calls_with_the_state_equal_one(first, second):
    x = {name: t.detach() for name, t in v4_inputs(100, state=True).items()}
    w, u, k, v, state = x["w"], x["u"], x["k"], x["v"], tuple(x[n] for n in V4_STATE)
    y, s = wkv4_ref(w, u, k, v, state)
    y1, s1 = first(w, u, k[:, :37], v[:, :37], state)  # 37: across wkv4's chunk boundaries
    y2, s2 = second(w, u, k[:, 37:], v[:, 37:], s1)
    assert max_abs(torch.cat([y1, y2], 1), y) <= 1e-10
    for a, b in zip(s2, s):
        assert max_abs(a, b) <= 1e-10


@pytest.mark.parametrize(
    "first, second", [(wkv7_ref, wkv7_ref), (wkv7, wkv7), (wkv7_ref, wkv7), (wkv7, wkv7_ref)]
)
def test_wkv7_two_calls_with_the_state_equal_one(first, second):
    x = {name: t.detach() for name, t in v7_inputs(50, state=True).items()}
    args = [x[n] for n in V7_ARGS]
    y, S = wkv7_ref(*args, x["S"])
    y1, S1 = first(*(t[:, :21] for t in args), x["S"])
    y2, S2 = second(*(t[:, 21:] for t in args), S1)
    assert max_abs(torch.cat([y1, y2], 1), y) <= 1e-10
    assert max_abs(S2, S) <= 1e-10


# ---- gradcheck -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn, kw", [(wkv4, {"chunk_size": 2}), (wkv4, {}), (wkv4_ref, {})])
def test_wkv4_gradcheck(fn, kw):
    x = v4_inputs(5, batch=1, C=3, state=True, seed=3)

    def f(*args):
        y, state = fn(*args[:4], state=args[4:], **kw)
        return y, *state

    assert torch.autograd.gradcheck(f, tuple(x.values()), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("fn, kw", [(wkv7, {"chunk_size": 2}), (wkv7, {}), (wkv7_ref, {})])
def test_wkv7_gradcheck(fn, kw):
    x = v7_inputs(5, batch=1, H=1, N=3, state=True, seed=3)
    assert torch.autograd.gradcheck(lambda *args: fn(*args, **kw), tuple(x.values()), eps=1e-6, atol=1e-7)


# ---- RWKV-4: numerical range -----------------------------------------------------------------------------
@pytest.mark.parametrize("state", [False, True])
def test_wkv4_float32_is_stable_over_the_whole_range(state):
    """|k| up to 30, w from -20 to -0.007 (time_decay from -5 to 3), u from -5 to 5: no inf or NaN in fp32, and
    the fp32 fast path within 5e-6 of the exact (fp64) values (measured: <= 1.2e-6). The fp32 reference is finite
    too but its pp, near 30 here, drifts by rounding (measured: <= 1e-4, on the state and grad_w)."""
    C, T = 48, 200
    x = v4_inputs(T, C=C, state=state, seed=5)
    with torch.no_grad():
        x["k"].uniform_(-30, 30)
        x["k"][:, :20] = 30.0  # a run of the largest keys, remembered or forgotten at every decay
        x["w"].copy_(-torch.exp(torch.linspace(-5, 3, C, dtype=F64)))
        x["u"].copy_(torch.linspace(-5, 5, C, dtype=F64).roll(7))
        if state:
            x["pp"].uniform_(-30, 30)
    exact = outputs_and_grads(run4, wkv4_ref, x)
    x32 = {name: t.detach().float().requires_grad_() for name, t in x.items()}
    for fn, tol in [(wkv4, 5e-6), (wkv4_ref, 3e-4)]:
        got = outputs_and_grads(run4, fn, x32)
        for name in exact:
            err = rel_rms(got[name], exact[name])
            assert torch.isfinite(got[name]).all() and err <= tol, (fn.__name__, name, err)


def test_half_precision_inputs_return_their_dtype():
    x4 = {name: t.detach().bfloat16() for name, t in v4_inputs(40, dtype=F32).items()}
    y, state = run4(wkv4, x4)
    y_ref, _ = run4(wkv4_ref, {name: t.float() for name, t in x4.items()})
    assert y.dtype == torch.bfloat16 and all(s.dtype == F32 for s in state)
    torch.testing.assert_close(y.float(), y_ref, rtol=2e-2, atol=2e-2)
    x7 = {name: t.detach().bfloat16() for name, t in v7_inputs(40, dtype=F32).items()}
    y, (S,) = run7(wkv7, x7)
    y_ref, _ = run7(wkv7_ref, {name: t.float() for name, t in x7.items()})
    assert y.dtype == torch.bfloat16 and S.dtype == F32
    torch.testing.assert_close(y.float(), y_ref, rtol=2e-2, atol=2e-2)


# ---- the references against the papers' equations, written out differently -------------------------------
def test_wkv4_ref_is_the_papers_formula():
    """wkv_t = (sum_{i<t} e^{-(t-1-i) w' + k_i} v_i + e^{u + k_t} v_t) / (same without v), as plain sums in fp64
    (moderate k: no overflow without the running maximum); the final state: the same sums at T, over e^{pp}."""
    x = {name: t.detach() for name, t in v4_inputs(30, state=False).items()}
    w, u, k, v = x["w"], x["u"], x["k"], x["v"]
    T = k.shape[1]
    t, i = torch.arange(T)[:, None], torch.arange(T)
    exponent = k[:, None, :, :] + (t - 1 - i)[..., None] * w  # (B, T_t, T_i, C)
    weight = torch.exp(exponent) * (i < t)[..., None]
    bonus = torch.exp(u + k)  # (B, T, C)
    expected = ((weight * v[:, None]).sum(2) + bonus * v) / (weight.sum(2) + bonus)
    y, (aa, bb, pp) = wkv4_ref(w, u, k, v)
    assert max_abs(y, expected) <= 1e-12
    decayed = torch.exp(k + (T - 1 - torch.arange(T))[:, None] * w)  # (B, T, C)   e^{e_i}
    assert max_abs(aa * pp.exp(), (decayed * v).sum(1)) <= 1e-9 * (decayed * v).abs().sum(1).max()
    assert max_abs(bb * pp.exp(), decayed.sum(1)) <= 1e-12 * decayed.sum(1).max()
    assert max_abs(pp, (k + (T - 1 - torch.arange(T))[:, None] * w).amax(1)) <= 1e-12


def test_wkv7_ref_is_the_matrix_recurrence():
    """S_t = S_{t-1} (diag(e^{w_t}) + a_t^T b_t) + v_t^T k_t with the transition built as an N x N matrix."""
    x = {name: t.detach() for name, t in v7_inputs(12, state=True).items()}
    S, ys = x["S"], []
    for t in range(12):
        r, w, k, v, a, b = (x[n][:, t] for n in V7_ARGS)  # (B, H, N)
        transition = torch.diag_embed(w.exp()) + a[..., :, None] * b[..., None, :]  # (B, H, N, N)
        S = S @ transition + v[..., :, None] * k[..., None, :]
        ys.append(torch.einsum("bhij,bhj->bhi", S, r))
    y, S_ref = wkv7_ref(*(x[n] for n in V7_ARGS), x["S"])
    assert max_abs(y, torch.stack(ys, 1)) <= 1e-12 and max_abs(S_ref, S) <= 1e-12


def test_the_tolerances_catch_a_wrong_bonus_or_decay():
    """The fp64 comparisons above fail for a bonus off by 1e-7, or for each token's decay applied one step late."""
    x = v4_inputs(64, state=True)
    ref = outputs_and_grads(run4, wkv4_ref, x)
    wrong = outputs_and_grads(run4, wkv4, x | {"u": x["u"] + 1e-7})
    with pytest.raises(AssertionError):
        assert_fast_matches_ref(wrong, ref)
    x = v7_inputs(32, state=True)
    ref = outputs_and_grads(run7, wkv7_ref, x)
    late = x | {"w": torch.cat([x["w"][:, :1], x["w"][:, :-1]], 1)}  # w_{t-1} instead of w_t
    with pytest.raises(AssertionError):
        assert_fast_matches_ref(outputs_and_grads(run7, wkv7, late), ref)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_paths_on_cuda_match_the_reference(monkeypatch):
    # fp32 matmuls even if an earlier test turned TF32 on (importing the rwkv package does)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    for run, fast, ref, x in [
        (run4, wkv4, wkv4_ref, v4_inputs(300, C=64, state=True)),
        (run7, wkv7, wkv7_ref, v7_inputs(300, N=64, state=True)),
    ]:
        expected = outputs_and_grads(run, ref, x)
        x_cuda = {name: t.detach().float().cuda().requires_grad_() for name, t in x.items()}
        got = outputs_and_grads(run, fast, x_cuda)
        for name in expected:
            assert got[name].is_cuda and rel_rms(got[name].cpu(), expected[name]) <= 1e-5, name
