"""Eq. 1 reference vs SDPA fast path, multi-head attention vs torch's, masks, KV-cache step vs forward."""

import pytest
import torch
from torch import nn

from common.models.attention import CausalSelfAttention, MultiHeadAttention, attention, attention_ref
from common.models.lm import CausalLM, GeluMLP
from common.testing import check_mixer


def _qkv(b, h, lq, lk, dh, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, dh, generator=g, dtype=dtype, requires_grad=True) for n in (lq, lk, lk)]


def _padding_keep(b, lk, lengths):
    return (torch.arange(lk)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]  # (B, 1, 1, Lk)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize(
    "lq,lk,causal,padded",
    [(63, 63, False, False), (63, 63, True, False), (63, 63, False, True), (63, 63, True, True),
     (5, 17, True, False), (7, 31, False, True)],
)  # fmt: skip
def test_fast_path_matches_reference(dtype, tol, lq, lk, causal, padded):
    mask = _padding_keep(2, lk, [lk, lk // 2]) if padded else None
    outs, grads = [], []
    for fn in (attention_ref, attention):
        q, k, v = _qkv(2, 3, lq, lk, 16, dtype)
        out = fn(q, k, v, mask=mask, causal=causal)
        (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)).sum().backward()
        outs.append(out)
        grads.append([t.grad for t in (q, k, v)])
    torch.testing.assert_close(outs[1], outs[0], atol=tol, rtol=tol)
    for g_fast, g_ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_fast, g_ref, atol=tol, rtol=tol)


def test_fully_masked_rows_are_zero_not_nan():
    q, k, v = _qkv(1, 2, 4, 4, 8, torch.float64)
    keep = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    keep[..., 2, :] = False  # query 2 may attend to nothing
    for fn in (attention_ref, attention):
        out = fn(q, k, v, mask=keep)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
        assert (out[..., 2, :] == 0).all() and (out[..., 1, :] != 0).any()
        q.grad = k.grad = v.grad = None


@pytest.mark.parametrize("fn", [attention_ref, attention])
def test_causal_and_padding_masks_hide_what_they_must(fn):
    q, k, v = (t.detach() for t in _qkv(2, 2, 9, 9, 8, torch.float64))
    keep = _padding_keep(2, 9, [9, 6])
    base = fn(q, k, v, mask=keep, causal=True)
    # perturbing key/value position 5 must not change queries 0..4 (causal) ...
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 5] += 3.0
    v2[:, :, 5] -= 3.0
    out = fn(q, k2, v2, mask=keep, causal=True)
    torch.testing.assert_close(out[:, :, :5], base[:, :, :5], rtol=0, atol=0)
    assert not torch.allclose(out[0, :, 5:], base[0, :, 5:])
    # ... and perturbing a padded key of sequence 1 (positions >= 6) changes nothing in sequence 1
    k3, v3 = k.clone(), v.clone()
    k3[1, :, 7] += 3.0
    v3[1, :, 7] -= 3.0
    out = fn(q, k3, v3, mask=keep, causal=True)
    torch.testing.assert_close(out[1], base[1], rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_multi_head_attention_matches_torch(bias):
    torch.manual_seed(0)
    d, h, lq, lk = 32, 4, 7, 11
    ours = MultiHeadAttention(d, h, bias=bias).double().eval()
    ref = nn.MultiheadAttention(d, h, bias=bias, batch_first=True).double().eval()
    with torch.no_grad():
        ours.q_proj.weight.copy_(ref.in_proj_weight[:d])
        ours.k_proj.weight.copy_(ref.in_proj_weight[d : 2 * d])
        ours.v_proj.weight.copy_(ref.in_proj_weight[2 * d :])
        ours.out_proj.weight.copy_(ref.out_proj.weight)
        if bias:
            ours.q_proj.bias.copy_(ref.in_proj_bias[:d])
            ours.k_proj.bias.copy_(ref.in_proj_bias[d : 2 * d])
            ours.v_proj.bias.copy_(ref.in_proj_bias[2 * d :])
            ours.out_proj.bias.copy_(ref.out_proj.bias)
    x_q, x_kv = torch.randn(2, lq, d, dtype=torch.float64), torch.randn(2, lk, d, dtype=torch.float64)
    lengths = torch.tensor([lk, 6])
    pad = torch.arange(lk)[None, :] >= lengths[:, None]  # (B, Lk) True = ignore, torch's convention
    # cross-attention with key padding
    expected, _ = ref(x_q, x_kv, x_kv, key_padding_mask=pad, need_weights=False)
    got = ours(x_q, x_kv, mask=~pad[:, None, None, :])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    # causal self-attention
    future = torch.ones(lq, lq, dtype=torch.bool).triu(1)  # True = not allowed, torch's convention
    expected, _ = ref(x_q, x_q, x_q, attn_mask=future, need_weights=False)
    torch.testing.assert_close(ours(x_q, x_q, causal=True), expected, rtol=1e-10, atol=1e-10)


def test_causal_self_attention_keeps_the_mixer_contract():
    check_mixer(lambda: CausalSelfAttention(24, 3), d_model=24, state_grows=True)


def test_kv_cache_grows_one_position_per_token():
    mixer = CausalSelfAttention(24, 3).eval()
    state = mixer.init_state(2)
    _, state = mixer.prefill(torch.randn(2, 5, 24), state)
    assert state["k"].shape == state["v"].shape == (2, 3, 5, 8)  # (B, H, t, Dh)
    _, state = mixer.step(torch.randn(2, 24), state)
    assert state["k"].shape == (2, 3, 6, 8)


def test_multi_head_self_attention_prefill_equals_causal_forward():
    torch.manual_seed(0)
    mha = MultiHeadAttention(24, 3).double().eval()
    x = torch.randn(2, 11, 24, dtype=torch.float64)
    y1, cache = mha.prefill(x[:, :4], mha.init_state(2, dtype=x.dtype))
    y2, cache = mha.prefill(x[:, 4:], cache)
    torch.testing.assert_close(torch.cat([y1, y2], 1), mha(x, x, causal=True), rtol=0, atol=1e-10)


def test_attention_dropout_only_in_training():
    mha = MultiHeadAttention(16, 2, dropout=0.5)
    x = torch.randn(1, 6, 16)
    torch.manual_seed(1)
    train_out = mha(x, x)
    mha.eval()
    assert not torch.allclose(train_out, mha(x, x))
    torch.testing.assert_close(mha(x, x), mha(x, x))


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_language_model_places_each_sequence_at_its_start(positions):
    torch.manual_seed(0)
    model = CausalLM(11, 32, 2, lambda i: CausalSelfAttention(32, 4), lambda i: GeluMLP(32),
                     norm="layer", positions=positions, max_len=24).eval()  # fmt: skip
    idx = torch.randint(0, 11, (3, 9))
    start = torch.tensor([0, 5, 15])
    shifted = model.logits(idx, start)  # (3, 9, 11)
    for row, s in enumerate(start.tolist()):
        assert torch.allclose(shifted[row], model.logits(idx[row : row + 1], s)[0], atol=1e-6)
        state = model.init_state(1)
        state["pos"] = s  # the recurrent form from the same absolute position
        for t in range(idx.shape[1]):
            step_logits, state = model.step(idx[row : row + 1, t], state)
        assert torch.allclose(step_logits[0], shifted[row, -1], atol=1e-5)
    assert not torch.allclose(shifted[1], shifted[0])  # the positions do change the output
    loss = model({"idx": idx, "targets": idx, "start": start})
    assert torch.isclose(loss, torch.nn.functional.cross_entropy(shifted.flatten(0, 1), idx.flatten()))
    if positions == "learned":
        with pytest.raises(ValueError, match="exceeds max_len 24"):
            model.logits(idx, torch.tensor([0, 0, 16]))
