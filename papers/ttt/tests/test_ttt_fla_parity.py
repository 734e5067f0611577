"""Parity of the dual form with flash-linear-attention's (fla-core) pure-PyTorch TTT-Linear reference, code nobody
here wrote: ``fla/ops/ttt/naive.py``, ``chunk_ttt_linear_ref``, loaded by path (``common.fla``; ``import fla``
needs triton).

fla's conventions, for q, k, v (B, T, H, D): the inner model k h + hb (h (B, H, D, D), hb (B, H, 1, D)), the
loss gradient of ½‖LN(k h + hb) + k - v‖² (ours: ‖·‖², twice it), q scaled by ``scale`` before use, a learning
rate eta (B, T, H, 1) applied by query token t (ours: by source token s: equal when eta is constant, as here),
the same LayerNorm (w, b (H, D)) for the loss and the output, and the output z̄ + LN(z̄) (ours: q + LN(z̄),
Eq. 5; fla adds the residual of z̄). So: scale 1, our η = fla's / 2, and their output rule applied to our z̄.
fla pads a partial last mini-batch with zero tokens, which move its final bias state: final states are
compared at T a multiple of the mini-batch only. fla computes in fp32; ours runs in fp64 on the same values.
"""

import pytest
import torch

from common.errors import PaperzooError
from common.fla import fla_naive
from papers.ttt.ops import _layer_norm, ttt_dual

try:
    naive = fla_naive("ops/ttt/naive.py")
except PaperzooError as missing:
    pytest.skip(str(missing), allow_module_level=True)

B, H, D, ETA = 2, 2, 16, 0.05


def leaves(T, seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape, s=1.0: (s * torch.randn(*shape, generator=g)).requires_grad_()  # noqa: E731
    return {"q": rand(B, T, H, D), "k": rand(B, T, H, D), "v": rand(B, T, H, D), "w": rand(H, D, s=0.5),
            "b": rand(H, D, s=0.5), "h0": rand(B, H, D, D, s=0.1), "hb0": rand(B, H, 1, D, s=0.1)}  # fmt: skip


def fla_output(x, mini_batch):
    o, h, hb = naive.chunk_ttt_linear_ref(
        x["q"].clone(), x["k"].clone(), x["v"].clone(), x["w"], x["b"], ETA, scale=1.0, mini_batch_size=mini_batch,
        initial_state=x["h0"].clone(), initial_state_bias=x["hb0"].clone(), output_final_state=True,
    )  # fmt: skip
    return o, h, hb[:, :, 0]


def our_output(x, mini_batch):
    def ours(t):  # (B, T, H, D) -> (B, H, T, D), fp64
        return t.double().transpose(1, 2)

    q, k, v = ours(x["q"]), ours(x["k"]), ours(x["v"])
    eta = torch.full(q.shape[:3], ETA / 2, dtype=torch.float64)
    ln = (x["w"].double(), x["b"].double())
    params = (x["h0"].double(), x["hb0"][:, :, 0].double())
    z_bar, (w, bias), _ = ttt_dual(q, k, v, eta, params, ln, mini_batch)
    return (z_bar + _layer_norm(z_bar, ln)).transpose(1, 2), w, bias


@pytest.mark.parametrize("T, mini_batch", [(64, 16), (63, 16), (48, 8)])
def test_outputs_final_state_and_gradients_match_fla(T, mini_batch):
    x = leaves(T)
    theirs, ours = fla_output(x, mini_batch), our_output(x, mini_batch)
    torch.testing.assert_close(ours[0].float(), theirs[0], rtol=1e-4, atol=1e-4)
    if T % mini_batch == 0:
        torch.testing.assert_close(
            ours[1].float(), theirs[1], rtol=1e-4, atol=1e-4
        )  # W after the last mini-batch
        torch.testing.assert_close(ours[2].float(), theirs[2], rtol=1e-4, atol=1e-4)  # its bias
    probe = torch.randn(theirs[0].shape, generator=torch.Generator().manual_seed(1))
    grads_theirs = torch.autograd.grad((theirs[0] * probe).sum(), list(x.values()))
    grads_ours = torch.autograd.grad((ours[0] * probe.double()).sum(), list(x.values()))
    for name, a, b in zip(x, grads_ours, grads_theirs):
        scale = b.abs().max().item()
        assert (a.float() - b).abs().max().item() <= 1e-4 * max(scale, 1.0), name
