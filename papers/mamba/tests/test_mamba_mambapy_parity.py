"""Parity with mambapy (alxndrTL/mamba.py), an independent PyTorch implementation of the paper.

Its parallel scan (Blelloch, ``mambapy.pscan.pscan``) checks our scan's forward and hand-written backward;
its ``MambaBlock`` / ``Mamba`` with our weights copied in check the whole block, the stack and the step form.
"""

import pytest
import torch

from papers.mamba.model import MambaMixer, build_mamba_lm
from papers.mamba.ops import selective_scan

mambapy_mamba = pytest.importorskip("mambapy.mamba")
pscan = pytest.importorskip("mambapy.pscan").pscan


def test_scan_matches_mambapy_pscan_values_and_gradients():
    torch.manual_seed(0)
    b, L, d, n = 2, 100, 6, 4  # L not a power of two: pscan pads internally
    x = torch.randn(b, L, d, dtype=torch.float64, requires_grad=True)
    delta = torch.rand(b, L, d, dtype=torch.float64).mul(0.5).add(0.01).requires_grad_()
    A = (-torch.rand(d, n, dtype=torch.float64) * 3).requires_grad_()
    B = torch.randn(b, L, n, dtype=torch.float64, requires_grad=True)
    C = torch.randn(b, L, n, dtype=torch.float64, requires_grad=True)
    D = torch.randn(d, dtype=torch.float64, requires_grad=True)
    inputs = (x, delta, A, B, C, D)
    w_y, w_h = torch.randn(b, L, d, dtype=torch.float64), torch.randn(b, d, n, dtype=torch.float64)

    # mambapy: Ā = exp(ΔA), B̄x = ΔBx, hs = pscan(Ā, B̄x) (B, L, d, n), y = hs C + D x
    hs = pscan(torch.exp(delta[..., None] * A), delta[..., None] * B[:, :, None, :] * x[..., None])
    y_theirs, h_theirs = (hs @ C[..., None])[..., 0] + D * x, hs[:, -1]
    grads_theirs = torch.autograd.grad((y_theirs * w_y).sum() + (h_theirs * w_h).sum(), inputs)

    y_ours, h_ours = selective_scan(
        x.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), D,
        return_last_state=True,
    )  # fmt: skip
    y_ours = y_ours.transpose(1, 2)
    grads_ours = torch.autograd.grad((y_ours * w_y).sum() + (h_ours * w_h).sum(), inputs)

    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_ours, h_theirs, rtol=1e-10, atol=1e-10)
    for name, ours, theirs in zip(["x", "delta", "A", "B", "C", "D"], grads_ours, grads_theirs):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9, msg=name)


def mambapy_config(d_model, n_layers, d_state):
    return mambapy_mamba.MambaConfig(
        d_model=d_model, n_layers=n_layers, d_state=d_state, expand_factor=2, d_conv=4
    )


def test_block_matches_mambapy_forward_and_step():
    """Same parameter names as mambapy's MambaBlock: copy ours in, compare outputs (fp32: it casts A, D)."""
    torch.manual_seed(0)
    ours = MambaMixer(32, d_state=8)
    theirs = mambapy_mamba.MambaBlock(mambapy_config(32, 1, 8))
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 50, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
        state, cache = ours.init_state(2), (None, torch.zeros(2, ours.d_inner, 3))
        for t in range(6):
            y_ours, state = ours.step(x[:, t], state)
            y_theirs, cache = theirs.step(x[:, t], cache)
            torch.testing.assert_close(y_ours, y_theirs, rtol=1e-4, atol=1e-5)


def test_lm_blocks_match_mambapy_stack():
    torch.manual_seed(0)
    lm = build_mamba_lm(vocab_size=10, d_model=16, n_layers=3, d_state=4)
    theirs = mambapy_mamba.Mamba(mambapy_config(16, 3, 4))
    theirs.load_state_dict(
        {f"layers.{i}.{'norm' if k.startswith('norm1') else 'mixer'}.{k.split('.', 1)[1]}": v
         for i, block in enumerate(lm.blocks) for k, v in block.state_dict().items()}
    )  # fmt: skip
    x = lm.embed(torch.randint(0, 10, (2, 30)))  # (B, L, D)
    with torch.no_grad():
        h = x
        for block in lm.blocks:
            h = block(h)
        torch.testing.assert_close(h, theirs(x), rtol=1e-4, atol=1e-5)
