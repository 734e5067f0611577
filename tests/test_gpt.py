"""GPT-2 on CausalLM: parity with HF GPT2LMHeadModel, HF-format round trips, KV-cached generation."""

import json

import pytest
import torch

from common.models.gpt import GPTConfig, build_gpt, load_hf_gpt2, save_hf_gpt2

transformers = pytest.importorskip("transformers")

CFG = GPTConfig(vocab_size=50, block_size=16, n_layers=2, n_heads=2, d_model=32)


def _hf_model(seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=CFG.vocab_size,
        n_positions=CFG.block_size,
        n_embd=CFG.d_model,
        n_layer=CFG.n_layers,
        n_head=CFG.n_heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF zero-initialises biases and unit LayerNorms: randomise so they are tested
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _tokens(seed=0, batch=3, length=CFG.block_size):
    return torch.randint(0, CFG.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_logits_match_hf_gpt2_in_both_directions(tmp_path):
    hf = _hf_model()
    idx = _tokens()
    with torch.no_grad():
        expected = hf(idx).logits
    # HF -> ours, through a directory written by HF's own save_pretrained
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ours = load_hf_gpt2(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours.logits(idx), expected, rtol=1e-5, atol=1e-5)
    # ours -> HF, through save_hf_gpt2
    mine = build_gpt(CFG).eval()
    save_hf_gpt2(mine, CFG, tmp_path / "ours")
    hf2 = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf2(idx).logits, mine.logits(idx), rtol=1e-5, atol=1e-5)


def test_save_load_round_trip_is_exact(tmp_path):
    model = build_gpt(CFG).eval()
    save_hf_gpt2(model, CFG, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["activation_function"] == "gelu_new"
    loaded = load_hf_gpt2(tmp_path).eval()
    assert loaded.head.weight is loaded.embed.weight
    idx = _tokens(1)
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits(idx), model.logits(idx), rtol=0, atol=0)


def test_loader_rejects_unsupported_config(tmp_path):
    save_hf_gpt2(build_gpt(CFG), CFG, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["activation_function"] = "relu"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="activation_function"):
        load_hf_gpt2(tmp_path)


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, block_size=8, n_layers=8, n_heads=4, d_model=256)
    model = build_gpt(cfg)
    block = model.blocks[0]
    assert block.mixer.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.mlp.proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)  # 0.02 / sqrt(2 * 8)
    assert model.pos_embed.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert (block.mixer.qkv.bias == 0).all()


def test_kv_cached_generation_equals_full_recompute():
    torch.manual_seed(0)
    model = build_gpt(CFG).eval()
    prompt = _tokens(2, batch=2, length=4)
    cached = model.generate(prompt, max_new_tokens=CFG.block_size - 4, greedy=True)
    seq = prompt
    with torch.no_grad():
        while seq.shape[1] < CFG.block_size:
            seq = torch.cat([seq, model.logits(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, seq)


def test_training_loss_backward():
    model = build_gpt(GPTConfig(vocab_size=50, block_size=16, n_layers=2, n_heads=2, d_model=32, dropout=0.1))
    idx = _tokens(3)
    loss = model({"idx": idx[:, :-1], "targets": idx[:, 1:]})
    loss.backward()
    assert loss.item() == pytest.approx(torch.log(torch.tensor(50.0)).item(), rel=0.1)
    assert all(p.grad is not None for p in model.parameters())
