"""LoRA (Hu et al. 2021): Eq. 3 with B = 0 at init, merge / unmerge, frozen W0, parameter counts, the q,v
slices of the fused qkv, the baselines' freezing, and the peft-format round trip without peft."""

import json

import pytest
import torch
from torch import nn

from common.errors import PaperzooError
from common.models.gpt import GPTConfig, build_gpt
from papers.lora.baselines import HoulsbyAdapter, bitfit, ft_top, full_ft, inject_adapters
from papers.lora.lora import (
    LoRALinear,
    gpt_targets,
    inject,
    lora_modules,
    lora_state_dict,
    merge_all,
    n_trainable,
    unmerge_all,
)
from papers.lora.peft_format import load_peft, save_peft

D, L, R = 16, 3, 4


def tiny_gpt(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_gpt(GPTConfig(vocab_size=40, block_size=16, n_layers=L, n_heads=2, d_model=D))


def randomize_lora(model: nn.Module, seed: int = 1) -> None:
    """Nonzero B (and a fresh A), as after some training."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in lora_modules(model).values():
            layer.lora_A.normal_(0, 0.3)
            layer.lora_B.normal_(0, 0.3)


IDX = torch.randint(0, 40, (2, 12), generator=torch.Generator().manual_seed(0))


def test_b_is_zero_at_init_so_the_adapted_model_is_the_base_model():
    model = tiny_gpt()
    before = model.logits(IDX)
    names = inject(model, gpt_targets("q", "v", "o"), r=R, alpha=8)
    assert names == [f"blocks.{i}.mixer.qkv" for i in range(L)] + [f"blocks.{i}.mixer.proj" for i in range(L)]
    for layer in lora_modules(model).values():
        assert torch.all(layer.lora_B == 0) and torch.any(layer.lora_A != 0)
        bound = 1 / layer.in_features**0.5  # Kaiming-uniform(a=sqrt(5)): U(-1/sqrt(d_in), 1/sqrt(d_in))
        assert layer.lora_A.abs().max() <= bound
    assert torch.equal(model.logits(IDX), before)


@pytest.mark.parametrize("slices", [None, (True, False, True), (True, True, True), (False, True, False)])
def test_forward_is_eq_3_in_the_enabled_slices(slices):
    torch.manual_seed(0)
    base = nn.Linear(D, 3 * D).double()
    layer = LoRALinear(base, r=R, alpha=6, slices=slices)
    randomize_lora(layer)
    x = torch.randn(5, 7, D, dtype=torch.float64)
    A, B = layer.lora_A, layer.lora_B
    if slices is None:
        expected = base(x) + 6 / R * x @ A.T @ B.T
    else:
        outs, j = [], 0
        for chunk, on in zip(base(x).chunk(3, dim=-1), slices):
            if on:
                A_j, B_j = A[j * R : (j + 1) * R], B[j * D : (j + 1) * D]
                chunk = chunk + 6 / R * x @ A_j.T @ B_j.T
                j += 1
            outs.append(chunk)
        expected = torch.cat(outs, dim=-1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer(x), base(x) + x @ layer.delta_weight().T, rtol=1e-12, atol=1e-12)


def test_merge_and_unmerge_are_exact_to_float_rounding():
    model = tiny_gpt()
    inject(model, gpt_targets("q", "v", "o"), r=R, alpha=8)
    randomize_lora(model)
    w0 = {name: m.base.weight.clone() for name, m in lora_modules(model).items()}
    adapted = model.logits(IDX)
    merge_all(model)
    assert all(m.merged for m in lora_modules(model).values())
    torch.testing.assert_close(model.logits(IDX), adapted, rtol=0, atol=1e-6)  # fp32
    merge_all(model)  # a second merge is a no-op
    unmerge_all(model)
    for name, m in lora_modules(model).items():
        assert not m.merged
        assert (m.base.weight - w0[name]).abs().max() <= 1e-7
    torch.testing.assert_close(model.logits(IDX), adapted, rtol=0, atol=1e-6)


def test_only_adapters_train_w0_stays_bit_identical_and_k_is_untouched():
    model = tiny_gpt()
    inject(model, gpt_targets("q", "v"), r=R, alpha=8)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not n.endswith(("lora_A", "lora_B"))}
    lora_before = {n: t.clone() for n, t in lora_state_dict(model).items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # all params: decay must skip W0
    batch = {"idx": IDX, "targets": IDX.roll(-1, dims=1)}
    for _ in range(3):
        opt.zero_grad()
        model(batch).backward()
        opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None and not p.requires_grad and torch.equal(p, frozen[n]), n
    for n, t in lora_state_dict(model).items():
        assert not torch.equal(t, lora_before[n]), n  # A and B (B from 0) both moved
    x = torch.randn(2, 5, D)
    for layer in lora_modules(model).values():
        assert torch.all(layer.delta_weight()[D : 2 * D] == 0)  # the k rows of ΔW
        assert torch.equal(layer(x)[..., D : 2 * D], layer.base(x)[..., D : 2 * D])
        assert not torch.equal(layer(x)[..., :D], layer.base(x)[..., :D])


@pytest.mark.parametrize(
    "matrices,per_block",
    [
        (("q", "v"), 2 * R * (D + D)),  # two d x d matrices, r (d_in + d_out) each
        (("q", "k", "v", "o"), 4 * R * (D + D)),
        (("o",), R * (D + D)),
    ],
)
def test_trainable_count_is_r_times_din_plus_dout_per_matrix(matrices, per_block):
    model = tiny_gpt()
    inject(model, gpt_targets(*matrices), r=R, alpha=R)
    assert n_trainable(model) == L * per_block


def test_whole_fused_matrix_and_pattern_list_count_and_a_second_inject():
    model = tiny_gpt()
    inject(model, ["blocks.*.mixer.qkv", "blocks.0.mlp.fc"], r=R, alpha=R)
    assert n_trainable(model) == L * R * (D + 3 * D) + R * (D + 4 * D)
    inject(model, ["blocks.1.mlp.proj"], r=2, alpha=2)  # the first adapters stay trainable
    assert n_trainable(model) == L * R * (D + 3 * D) + R * (D + 4 * D) + 2 * (4 * D + D)


def test_adapted_gpt_keeps_its_recurrent_form():
    model = tiny_gpt().eval()
    inject(model, gpt_targets("q", "v"), r=R, alpha=8)
    randomize_lora(model)
    with torch.no_grad():
        logits, _ = model.prefill(IDX, model.init_state(2))  # the KV cache reads qkv.in_features
        torch.testing.assert_close(logits, model.logits(IDX), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "targets,needle",
    [
        (["blocks.*.mixer.nope"], "matches no module"),
        (["blocks.*.mixer"], "is not an nn.Linear"),
        ({"blocks.*.mixer.qkv": (True, False) * 5}, "equal chunks"),  # 3 d = 48 outputs,
    ],
)
def test_bad_targets_are_one_line_errors(targets, needle):
    with pytest.raises(PaperzooError, match=needle) as err:
        inject(tiny_gpt(), targets, r=R, alpha=R)
    assert "\n" not in str(err.value)


def test_adapting_twice_and_unknown_matrices_are_one_line_errors():
    model = tiny_gpt()
    inject(model, gpt_targets("v"), r=R, alpha=R)
    with pytest.raises(PaperzooError, match="already adapted"):
        inject(model, ["blocks.0.mixer.qkv*"], r=R, alpha=R)
    with pytest.raises(PaperzooError, match="choose one or more of q, k, v, o"):
        gpt_targets("q", "w_up")


def test_houlsby_adapter_is_near_identity_and_counts_as_in_the_paper():
    torch.manual_seed(0)
    adapter = HoulsbyAdapter(D, 4)
    x = torch.randn(8, D)
    assert (adapter(x) - x).abs().max() < 1e-3 * x.abs().max()
    model = tiny_gpt()
    before = model.logits(IDX)
    m = 4
    # L_adpt = 2 L adapters of 2 d m + m + d; L_LN = 2 L + 1 layer norms of 2 d (paper Sec. 5.1)
    assert inject_adapters(model, bottleneck=m) == 2 * L * (2 * D * m + m + D) + (2 * L + 1) * 2 * D
    torch.testing.assert_close(model.logits(IDX), before, rtol=0, atol=1e-3)
    logits, _ = model.prefill(IDX, model.init_state(2))
    torch.testing.assert_close(logits, model.logits(IDX), rtol=1e-5, atol=1e-5)


def test_bitfit_top2_and_full_ft_counts():
    model = tiny_gpt()
    assert full_ft(model) == model.num_params()  # the tied head/embedding counted once
    biases = L * (3 * D + D + 4 * D + D + 2 * D) + D  # qkv, proj, fc, mlp proj, 2 norms; final norm
    assert bitfit(model) == biases
    per_block = sum(p.numel() for p in model.blocks[0].parameters())
    assert ft_top(model, k=2) == 2 * per_block + 2 * D
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.startswith((f"blocks.{L - 2}.", f"blocks.{L - 1}.", "norm_f.")) for n in trainable)


def test_peft_format_round_trip_is_exact_without_peft(tmp_path):
    model = tiny_gpt()
    inject(model, gpt_targets("q", "v"), r=R, alpha=8)
    inject(model, ["blocks.2.mlp.fc"], r=2, alpha=2)
    randomize_lora(model)
    save_peft(model, tmp_path, base_model_name_or_path="tiny")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    # q,v of c_attn: one rank-2r adapter (α' = 2 α); the most common (r', α') is the default
    assert (config["r"], config["lora_alpha"], config["fan_in_fan_out"]) == (2 * R, 16, True)
    assert config["target_modules"] == ["attn.c_attn", "transformer.h.2.mlp.c_fc"]
    assert config["rank_pattern"] == {"transformer.h.2.mlp.c_fc": 2}
    fresh = tiny_gpt()
    assert sorted(load_peft(fresh, tmp_path)) == sorted(lora_modules(model))
    for name, t in lora_state_dict(model).items():
        assert torch.equal(lora_state_dict(fresh)[name], t), name
    assert lora_modules(fresh)["blocks.0.mixer.qkv"].slices == (True, False, True)
    assert torch.equal(fresh.logits(IDX), model.logits(IDX))
    assert n_trainable(fresh) == n_trainable(model) == L * 2 * R * (D + D) + 2 * (D + 4 * D)


def test_save_peft_refuses_what_peft_cannot_load(tmp_path):
    model = tiny_gpt()
    with pytest.raises(PaperzooError, match="no LoRA adapter"):
        save_peft(model, tmp_path)
    inject(model, ["head"], r=R, alpha=R)
    with pytest.raises(PaperzooError, match="no counterpart in the HF GPT-2 format") as err:
        save_peft(model, tmp_path)
    assert "\n" not in str(err.value)


def test_load_refuses_a_b_without_the_slices_block_structure():
    layer = LoRALinear(nn.Linear(D, 3 * D), r=R, alpha=8, slices=(True, False, True))
    randomize_lora(layer)
    full_B = layer.full_B().detach().clone()  # (3 d, 2 r): [[B_q, 0], [0, 0], [0, B_v]]
    assert torch.all(full_B[D : 2 * D] == 0) and torch.all(full_B[:D, R:] == 0)
    layer.load_full_B(full_B)  # its own is accepted
    full_B[D, 0] = 1.0  # a k row: no longer a q,v adapter
    with pytest.raises(PaperzooError, match="not block-structured"):
        layer.load_full_B(full_B)
