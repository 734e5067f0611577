"""Parity with the official runtime, the `rwkv` pip package (code nobody here wrote): our tiny random RWKV-4
and RWKV-7 LMs, saved in RWKV-LM's format, give the package's logits over 64 tokens, from its sequence forward
and token by token; and a checkpoint written here by name and shape (not by save_blinkdl) loads into ours
with the package's logits. Nothing is downloaded."""

import pytest
import torch

from common.models import zoo
from papers.rwkv.blinkdl import load_blinkdl, save_blinkdl
from papers.rwkv.model import RWKV4Config, RWKV7Config
from papers.rwkv.official import official_logits

pytest.importorskip("rwkv")

V, C, F, LAYERS = 37, 64, 224, 2
TOKENS = torch.randint(0, V, (64,), generator=torch.Generator().manual_seed(3)).tolist()


def assert_matches_official(lm, path):
    with torch.no_grad():
        ours = lm.logits(torch.tensor([TOKENS]))[0]
    theirs = official_logits(path, TOKENS)
    assert ours.std() > 0.1  # the logits say something: a wrong model cannot pass by accident
    torch.testing.assert_close(theirs["seq"], ours, rtol=0, atol=1e-4)
    torch.testing.assert_close(theirs["steps"], ours, rtol=0, atol=1e-4)


def randomised(lm, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lm.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return lm.eval()


@pytest.mark.slow
@pytest.mark.parametrize("arch,config", [
    ("rwkv4", RWKV4Config(V, C, LAYERS, F)),
    ("rwkv7", RWKV7Config(V, C, LAYERS, head_size=32, ffn_hidden=F, decay_lora=16, a_lora=16, v_lora=8,
                          gate_lora=16)),
])  # fmt: skip
def test_our_checkpoint_runs_in_the_official_package(arch, config, tmp_path):
    torch.manual_seed(0)
    lm = randomised(zoo.build(arch, config))
    assert_matches_official(lm, save_blinkdl(lm, tmp_path / f"{arch}.pth"))


def rwkv_lm_checkpoint(version: int) -> dict[str, torch.Tensor]:
    """An RWKV-LM state dict built by name and shape, as RWKV-LM's trainer saves one."""
    g = torch.Generator().manual_seed(version)
    rand = lambda *shape, scale=0.3, mean=0.0: mean + scale * torch.randn(*shape, generator=g)  # noqa: E731
    vec = lambda **kw: rand(1, 1, C, **kw)  # noqa: E731
    sd = {"emb.weight": rand(V, C, scale=1.0), "blocks.0.ln0.weight": rand(C, mean=1.0),
          "blocks.0.ln0.bias": rand(C), "ln_out.weight": rand(C, mean=1.0), "ln_out.bias": rand(C),
          "head.weight": rand(V, C)}  # fmt: skip
    for i in range(LAYERS):
        b = f"blocks.{i}."
        sd |= {b + "ln1.weight": rand(C, mean=1.0), b + "ln1.bias": rand(C), b + "ln2.weight": rand(C, mean=1.0),
               b + "ln2.bias": rand(C), b + "ffn.key.weight": rand(F, C), b + "ffn.value.weight": rand(C, F)}  # fmt: skip
        sd |= {b + f"att.{m}.weight": rand(C, C) for m in ("key", "value", "receptance", "output")}
        if version == 4:
            sd |= {b + "att.time_decay": rand(C, scale=1.0), b + "att.time_first": rand(C, scale=1.0)}
            sd |= {b + f"att.time_mix_{m}": vec(mean=0.5) for m in "kvr"}
            sd |= {b + "ffn.time_mix_k": vec(mean=0.5), b + "ffn.time_mix_r": vec(mean=0.5),
                   b + "ffn.receptance.weight": rand(C, C)}  # fmt: skip
        else:  # two heads of 32; LoRA ranks 16 (v: 8); v0/v1/v2 in layer 0 too, as newer RWKV-LM saves them
            sd |= {b + f"att.x_{m}": vec(mean=0.5) for m in "rwkvag"}
            for name, rank in (("w", 16), ("a", 16), ("v", 8), ("g", 16)):
                sd |= {b + f"att.{name}1": rand(C, rank), b + f"att.{name}2": rand(rank, C)}
                if name != "g":
                    sd[b + f"att.{name}0"] = vec()
            sd |= {b + "att.k_k": vec(mean=0.7), b + "att.k_a": vec(mean=1.0), b + "att.r_k": rand(2, 32),
                   b + "att.ln_x.weight": rand(C, mean=1.0), b + "att.ln_x.bias": rand(C), b + "ffn.x_k": vec(mean=0.5)}  # fmt: skip
    return sd


@pytest.mark.slow
@pytest.mark.parametrize("version", [4, 7])
def test_a_checkpoint_in_rwkv_lm_format_loads_into_ours(version, tmp_path):
    path = tmp_path / f"rwkv{version}.pth"
    torch.save(rwkv_lm_checkpoint(version), path)
    lm = load_blinkdl(path).eval()
    assert type(lm.blocks[0].mixer).__name__ == f"TimeMix{version}" and len(lm.blocks) == LAYERS
    assert_matches_official(lm, path)
