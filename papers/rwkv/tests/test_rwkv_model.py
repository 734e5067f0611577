"""RWKV-4 / RWKV-7 blocks and LMs: the mixer contract, recurrent == parallel on whole LMs, the published
initialisation, and the RWKV-LM checkpoint format (round trip, config from shapes, clear errors)."""

import math

import pytest
import torch

from common.errors import PaperzooError
from common.models import zoo
from common.models.lm import state_tensors
from common.testing import check_mixer
from papers.rwkv.blinkdl import load_blinkdl, save_blinkdl
from papers.rwkv.model import ChannelMix4, ChannelMix7, RWKV4Config, RWKV7Config, TimeMix4, TimeMix7


def randomise(model: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Move every weight off its initialisation (zero-initialised outputs would hide errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def tiny(arch: str, **fields):
    config = {
        "rwkv4": RWKV4Config(23, 32, 3),
        "rwkv7": RWKV7Config(23, 32, 3, head_size=16, decay_lora=8, a_lora=8, v_lora=8, gate_lora=8),
    }[arch]
    torch.manual_seed(0)
    return randomise(zoo.build(arch, config, **fields))


@pytest.mark.parametrize("layer_id", [0, 2])
@pytest.mark.parametrize("make", [TimeMix4, ChannelMix4, ChannelMix7], ids=lambda c: c.__name__)
def test_mixers_keep_the_mixer_contract(make, layer_id):
    check_mixer(lambda: randomise(make(16, layer_id, 3)), d_model=16)


def test_rwkv7_time_mix_keeps_the_mixer_contract():
    check_mixer(lambda: randomise(TimeMix7(32, 0, 3, head_size=16, decay_lora=8, a_lora=8, gate_lora=8)), 32)


def test_rwkv7_later_layers_refuse_to_run_without_v_first():
    mixer = TimeMix7(32, 1, 3, head_size=16)
    with pytest.raises(ValueError, match="v_first"):
        mixer(torch.randn(1, 4, 32))


@pytest.mark.parametrize("arch", ["rwkv4", "rwkv7"])
def test_lm_recurrent_equals_parallel(arch):
    """Train in parallel, infer as an RNN: step by step and chunked prefill give the parallel logits."""
    lm = tiny(arch).double().eval()
    idx = torch.randint(0, 23, (2, 45), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = lm.logits(idx)
        state, stepped = lm.init_state(2), []
        for t in range(idx.shape[1]):
            logits, state = lm.step(idx[:, t], state)
            stepped.append(logits)
        first, state2 = lm.prefill(idx[:, :17], lm.init_state(2))
        rest, _ = lm.prefill(idx[:, 17:], state2)
    torch.testing.assert_close(torch.stack(stepped, 1), full, rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.cat([first, rest], 1), full, rtol=0, atol=1e-10)
    sizes = {sum(t.numel() for t in state_tensors(s["layers"])) for s in (lm.init_state(2), state)}
    assert len(sizes) == 1  # O(1) state, including the channel mixes' token shift


@pytest.mark.parametrize("arch", ["rwkv4", "rwkv7"])
def test_lm_generates_what_its_logits_choose(arch):
    lm = tiny(arch).eval()
    prompt = torch.randint(0, 23, (1, 6), generator=torch.Generator().manual_seed(2))
    out = lm.generate(prompt, max_new_tokens=20, greedy=True)
    with torch.no_grad():
        assert torch.equal(lm.logits(out)[:, 5:-1].argmax(-1), out[:, 6:])


@torch.no_grad()
def test_rwkv4_published_initialisation():
    first, last = TimeMix4(64, 0, 4), TimeMix4(64, 3, 4)
    assert first.time_decay[0] == -5 and math.isclose(float(first.time_decay[-1]), 3, rel_tol=1e-6)
    assert torch.all(first.time_decay.diff() > 0) and torch.all(last.time_decay <= first.time_decay + 1e-6)
    torch.testing.assert_close(first.time_first[:3], torch.tensor([0.0, 0.5, -0.5]) + math.log(0.3))
    assert first.time_mix_k[0] == 0 and first.time_mix_v[0] == 0 and last.time_mix_v[0] == pytest.approx(0.3)
    for zero in (first.key, first.receptance, first.output):
        assert not zero.weight.any()
    assert torch.allclose(first.value.weight @ first.value.weight.T, torch.eye(64), atol=1e-5)  # orthogonal
    ffn = ChannelMix4(64, 0, 4)
    assert (
        not ffn.value.weight.any() and not ffn.receptance.weight.any() and ffn.key.weight.shape == (256, 64)
    )


@torch.no_grad()
def test_rwkv7_published_initialisation():
    mixer = TimeMix7(256, 0, 4, head_size=64)
    log_decay = -math.exp(-0.5) * torch.sigmoid(mixer.w0)  # at init the LoRA is zero (w1 = 0)
    assert float(log_decay.min()) > -0.607 and float(log_decay.max()) < 0
    assert (
        mixer.w1.shape == (256, 32) and mixer.g1.shape == (256, 64) and not mixer.w1.any()
    )  # suggested sizes
    assert not hasattr(mixer, "v0") and hasattr(TimeMix7(256, 1, 4), "v0")  # no value residual in layer 0
    assert mixer.r_k.shape == (4, 64) and torch.all(mixer.r_k == -0.04) and torch.all(mixer.k_a == 1.02)
    assert not mixer.output.weight.any() and mixer.ln_x.eps == 64e-5
    assert mixer.ln_x.weight[0] == pytest.approx(0.25**0.7)
    lm = zoo.build("rwkv7", RWKV7Config(50, 64, 2))
    assert lm.embed.weight.abs().max() <= 1e-4 and lm.head.weight is not lm.embed.weight


@pytest.mark.parametrize("arch", ["rwkv4", "rwkv7"])
def test_blinkdl_round_trip_reads_the_config_from_shapes(arch, tmp_path):
    lm = tiny(arch).eval()
    path = save_blinkdl(lm, tmp_path / "tiny.pth")
    sd = torch.load(path, weights_only=True)
    assert (
        "emb.weight" in sd and "blocks.0.ln0.weight" in sd and "ln_out.weight" in sd and "head.weight" in sd
    )
    assert "blocks.2.att.key.weight" in sd and "blocks.2.ffn.value.weight" in sd
    mix = "blocks.1.att.time_mix_k" if arch == "rwkv4" else "blocks.1.att.x_r"
    assert sd[mix].shape == (1, 1, 32)
    back = load_blinkdl(path)
    assert {k: t.shape for k, t in back.state_dict().items()} == {
        k: t.shape for k, t in lm.state_dict().items()
    }
    idx = torch.randint(0, 23, (1, 30))
    with torch.no_grad():
        torch.testing.assert_close(back.logits(idx), lm.logits(idx), rtol=0, atol=0)


def test_blinkdl_load_errors_are_one_line(tmp_path):
    with pytest.raises(PaperzooError, match="no checkpoint"):
        load_blinkdl(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(PaperzooError, match="not a torch checkpoint"):
        load_blinkdl(tmp_path / "junk.pth")
    torch.save(
        {"emb.weight": torch.zeros(5, 4), "blocks.0.ffn.key.weight": torch.zeros(16, 4)}, tmp_path / "x.pth"
    )
    with pytest.raises(PaperzooError, match="neither RWKV-4"):
        load_blinkdl(tmp_path / "x.pth")
    with pytest.raises(PaperzooError, match="not an RWKV-4 or RWKV-7 LM"):
        save_blinkdl(zoo.build("gpt", zoo.config_class("gpt")(11, 8, n_layers=1, n_heads=2, d_model=16)),
                     tmp_path / "gpt.pth")  # fmt: skip
