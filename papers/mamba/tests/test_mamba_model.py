"""MambaMixer and the Mamba LM: parallel form == recurrent form, paper initialisation, the Table 1 variants."""

import math

import pytest
import torch
import torch.nn.functional as F

from common.models.lm import state_tensors
from common.testing import check_mixer
from papers.mamba.model import MambaMixer, build_mamba_lm

VARIANTS = [(True, True), (True, False), (False, True), (False, False)]  # (selective, gated)


@pytest.mark.parametrize("selective,gated", VARIANTS)
def test_mixer_keeps_the_mixer_contract(selective, gated):
    check_mixer(lambda: MambaMixer(16, d_state=4, d_conv=3, selective=selective, gated=gated), d_model=16)


def test_recurrent_state_shapes():
    mixer = MambaMixer(16, d_state=4, d_conv=3).eval()
    with torch.no_grad():
        _, (conv_window, h) = mixer.prefill(torch.randn(2, 9, 16), mixer.init_state(2))
    assert conv_window.shape == (2, 32, 2) and h.shape == (2, 32, 4)  # (B, E*D, d_conv - 1), (B, E*D, N)


def test_lm_step_equals_logits():
    torch.manual_seed(0)
    lm = build_mamba_lm(vocab_size=13, d_model=16, n_layers=2, d_state=4).double()
    idx = torch.randint(0, 13, (2, 17))
    state = lm.init_state(2)
    logits = []
    for t in range(idx.shape[1]):
        step_logits, state = lm.step(idx[:, t], state)
        logits.append(step_logits)
    torch.testing.assert_close(torch.stack(logits, dim=1), lm.logits(idx), rtol=1e-10, atol=1e-10)


def test_lm_step_equals_logits_float32_and_generates():
    torch.manual_seed(0)
    lm = build_mamba_lm(vocab_size=11, d_model=32, n_layers=2).eval()
    idx = torch.randint(0, 11, (1, 40))
    out = lm.generate(idx[:, :8], max_new_tokens=32, greedy=True)
    assert out.shape == (1, 40)
    with torch.no_grad():
        logits = lm.logits(out)[:, 7:-1]  # the logits that chose tokens 8 .. 39
    assert torch.equal(logits.argmax(-1), out[:, 8:])


def test_lm_recurrent_state_is_flat():
    lm = build_mamba_lm(vocab_size=7, d_model=16, n_layers=2).eval()
    state = lm.init_state(1)
    sizes = []
    with torch.no_grad():
        for t in range(50):
            _, state = lm.step(torch.tensor([t % 7]), state)
            sizes.append(sum(x.numel() for x in state_tensors(state["layers"])))
    assert len(set(sizes)) == 1 and sizes[0] > 0


def test_lm_prefill_then_step_equals_logits():
    torch.manual_seed(0)
    lm = build_mamba_lm(vocab_size=13, d_model=16, n_layers=2, d_state=4).double()
    idx = torch.randint(0, 13, (2, 31))
    with torch.no_grad():
        first, state = lm.prefill(idx[:, :20], lm.init_state(2))
        second, state = lm.prefill(idx[:, 20:30], state)
        last, state = lm.step(idx[:, 30], state)
        full = lm.logits(idx)
    torch.testing.assert_close(torch.cat([first, second, last[:, None]], 1), full, rtol=0, atol=1e-10)
    assert state["pos"] == 31


def test_paper_initialisation():
    torch.manual_seed(0)
    m = MambaMixer(64, d_state=16, dt_min=1e-3, dt_max=1e-1)
    assert m.d_inner == 128 and m.dt_rank == 4  # E = 2, R = ceil(D / 16)
    torch.testing.assert_close(-torch.exp(m.A_log), -torch.arange(1.0, 17.0).repeat(128, 1))  # S4D-Real
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 1e-1 * 1.001
    assert abs(dt.log().mean() - math.log(1e-2)) < 0.5  # log-uniform: E[log dt] = log sqrt(dt_min dt_max)
    assert torch.equal(m.D, torch.ones(128))
    assert m.dt_proj.weight.abs().max() <= 4**-0.5
    assert m.A_log._no_weight_decay and m.D._no_weight_decay


def test_variant_parameters():
    gated = MambaMixer(16, d_state=4)
    no_gate = MambaMixer(16, d_state=4, gated=False)
    lti = MambaMixer(16, d_state=4, selective=False)
    assert gated.in_proj.out_features == 64 and no_gate.in_proj.out_features == 32
    assert not hasattr(lti, "x_proj") and not hasattr(lti, "dt_proj")
    assert lti.B.shape == lti.C.shape == (32, 4) and lti.dt_bias.shape == (32,)
    assert hasattr(gated, "x_proj") and gated.x_proj.out_features == 1 + 2 * 4


def test_lti_ssm_does_not_depend_on_the_input():
    """Without selection the block is a fixed convolution of its conv output: linear in the SSM input."""
    torch.manual_seed(0)
    m = MambaMixer(8, d_state=4, selective=False, gated=False).double()
    delta, B, C, bias = m._ssm_params(torch.randn(2, 16, 10, dtype=torch.float64))
    delta2, B2, C2, bias2 = m._ssm_params(torch.randn(2, 16, 10, dtype=torch.float64))
    assert torch.equal(delta, delta2) and B is B2 and C is C2 and bias is bias2


def test_lm_rescales_out_proj_and_trains():
    torch.manual_seed(0)
    lm = build_mamba_lm(vocab_size=8, d_model=16, n_layers=4, d_state=4)
    mixer = lm.blocks[0].mixer
    assert mixer.out_proj.weight.abs().max() <= (1 / math.sqrt(mixer.d_inner)) / 2 + 1e-6  # 1/sqrt(4)
    assert lm.pos_embed is None and all(b.mlp is None for b in lm.blocks)
    assert isinstance(lm.norm_f, torch.nn.RMSNorm)
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, 8, (4, 33), generator=g)
    batch = {"idx": seq[:, :-1], "targets": seq[:, 1:]}
    opt = torch.optim.Adam(lm.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = lm(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0] - 0.3
