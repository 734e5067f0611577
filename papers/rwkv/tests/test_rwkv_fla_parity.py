"""Parity of wkv7 with flash-linear-attention (fla-core), an independent implementation of the RWKV-7 kernel.

fla's RWKV-7 kernel is its DPLR delta rule, whose pure-PyTorch references live in
fla/ops/generalized_delta_rule/dplr/naive.py: ``dplr_recurrence`` (one token per step) and ``dplr_chunkwise``
(chunked). ``import fla`` needs triton, so that file, which imports only torch and einops, is loaded by path
(``papers.rwkv.fla_naive``, whose ``wkv7_fla`` maps our inputs onto them). Their conventions, for inputs (B, H, T, D):

    S_t = diag(e^{gk_t}) S_{t-1} + k_t^T v_t + beta_t^T (alpha_t S_{t-1}),   o_t = (q_t / sqrt(D)) S_t

with S (B, H, D_k, D_v), the transpose of ours, and the decay applied to S_{t-1} inside the same step as ours.
Transposed: S^T_t = S^T_{t-1} (diag(e^{gk_t}) + alpha_t^T beta_t) + v_t^T k_t, i.e. our recurrence with
alpha = a, beta = b, gk = w, q = r sqrt(N), initial_state = S_0^T. fla has no PyTorch RWKV-4 kernel (only
triton), so wkv4 is not compared here.

fla's references compute in fp32 (they call .float()); ours run in fp64 on the same values.
"""

import pytest
import torch
import torch.nn.functional as F

from common.errors import PaperzooError
from papers.rwkv.fla_naive import dplr_naive, wkv7_fla
from papers.rwkv.ops import wkv7

try:
    dplr_naive()
except PaperzooError as missing:
    pytest.skip(str(missing), allow_module_level=True)


def rel_rms(a, b):
    return ((a - b).double().pow(2).mean().sqrt() / b.double().pow(2).mean().sqrt()).item()


def inputs(T, ab, batch=2, H=2, N=8, seed=0):
    """fp32 leaves, ours (B, T, H, N): log decay in the model's range [-0.61, 0], incoming state S_0."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    x = {"r": rand(batch, T, H, N), "w": -0.606531 * torch.rand(batch, T, H, N, generator=g)}
    x |= {"k": rand(batch, T, H, N), "v": rand(batch, T, H, N)}
    if ab == "model":  # a = -κ̂, b = κ̂ ⊙ iclr
        kk = F.normalize(rand(batch, T, H, N), dim=-1)
        x |= {"a": -kk, "b": kk * torch.rand(batch, T, H, N, generator=g)}
    else:
        x |= {"a": 0.3 * rand(batch, T, H, N), "b": 0.3 * rand(batch, T, H, N)}
    x["S"] = rand(batch, H, N, N)
    return {name: t.requires_grad_() for name, t in x.items()}


def ours(x):
    x64 = {name: t.detach().double().requires_grad_() for name, t in x.items()}
    y, S = wkv7(*(x64[n] for n in ("r", "w", "k", "v", "a", "b")), state=x64["S"])
    return x64, y, S


def compare(x, tol, chunk_size=None):
    y_theirs, S_theirs = wkv7_fla(*(x[n] for n in ("r", "w", "k", "v", "a", "b")), x["S"], chunk_size)
    x64, y, S = ours(x)
    assert rel_rms(y, y_theirs) <= tol and rel_rms(S, S_theirs) <= tol, (
        rel_rms(y, y_theirs),
        rel_rms(S, S_theirs),
    )
    g = torch.Generator().manual_seed(1)
    w_y, w_S = (
        torch.randn(y.shape, generator=g, dtype=y.dtype),
        torch.randn(S.shape, generator=g, dtype=S.dtype),
    )
    grads_theirs = torch.autograd.grad(
        (y_theirs * w_y.float()).sum() + (S_theirs * w_S.float()).sum(), list(x.values())
    )
    grads_ours = torch.autograd.grad((y * w_y).sum() + (S * w_S).sum(), list(x64.values()))
    for name, a, b in zip(x, grads_ours, grads_theirs):
        assert rel_rms(a, b) <= tol, (name, rel_rms(a, b))


@pytest.mark.parametrize("ab", ["model", "random"])
@pytest.mark.parametrize("T", [1, 37])
def test_wkv7_matches_fla_dplr_recurrence(T, ab):
    compare(inputs(T, ab), tol=2e-6)  # dplr_recurrence


@pytest.mark.parametrize("ab", ["model", "random"])
def test_wkv7_matches_fla_dplr_chunkwise(ab):
    compare(inputs(48, ab, seed=2), tol=2e-6, chunk_size=16)  # dplr_chunkwise  # T a multiple of its chunk
