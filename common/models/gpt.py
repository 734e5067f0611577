"""GPT-2: the decoder-only Transformer language model, on the shared ``CausalLM`` shell.

Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2), Sec. 2.3: the
decoder of Vaswani et al. 2017 (arXiv 1706.03762) with layer norm moved to the input of each
sub-block (pre-LN), a final layer norm after the last block, and residual projections initialised
with std scaled by 1/sqrt(N) for N residual layers (N = 2 * n_layers: attention and MLP per block).

    idx (B, L) -> wte(idx) + wpe(pos) -> dropout -> N x [x += attn(ln_1(x)); x += mlp(ln_2(x))]
               -> ln_f -> tied head (B, L, V)

Attention: ``common.models.attention.CausalSelfAttention``; MLP: ``common.models.lm.GeluMLP``
(GELU with the tanh approximation, HF's ``gelu_new``); LayerNorm eps 1e-5 as in GPT-2. In the model zoo as
``gpt`` (``zoo.build("gpt", GPTConfig(...))``).

Hugging Face interoperability: ``load_hf_gpt2(dir)`` reads a ``GPT2LMHeadModel`` directory holding
``config.json`` + ``model.safetensors``; ``save_hf_gpt2(model, cfg, dir)`` writes one that
``transformers.GPT2LMHeadModel.from_pretrained(dir)`` loads. HF stores its projections as ``Conv1D``
whose weight is (in, out), the transpose of ``nn.Linear``'s (out, in). To start from the real GPT-2
(needs internet)::

    from huggingface_hub import snapshot_download
    model = load_hf_gpt2(snapshot_download("gpt2", allow_patterns=["config.json", "model.safetensors"]))
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from common.models.attention import CausalSelfAttention
from common.models.lm import CausalLM, GeluMLP
from common.models.zoo import register


@dataclass
class GPTConfig:
    vocab_size: int
    block_size: int  # maximum context = number of learned positions
    n_layers: int
    n_heads: int
    d_model: int
    dropout: float = 0.0  # embedding, attention-probability, residual and MLP dropout
    bias: bool = True


@register("gpt", GPTConfig)
def build_gpt(cfg: GPTConfig) -> CausalLM:
    """A GPT-2 style ``CausalLM`` with GPT-2 initialisation."""
    model = CausalLM(
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        mixer_factory=lambda i: CausalSelfAttention(cfg.d_model, cfg.n_heads, cfg.dropout, cfg.bias),
        mlp_factory=lambda i: GeluMLP(cfg.d_model, 4 * cfg.d_model, cfg.dropout, cfg.bias),
        norm="layer",
        positions="learned",
        max_len=cfg.block_size,
        dropout=cfg.dropout,
        tie_weights=True,
    )
    _init_gpt2(model, cfg.n_layers)
    return model


def _init_gpt2(model: CausalLM, n_layers: int) -> None:
    """normal(0, 0.02) for linear and embedding weights, zero biases; residual projections 0.02/sqrt(2N)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    for block in model.blocks:
        for proj in (block.mixer.proj, block.mlp.proj):
            nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * n_layers))


# ---- Hugging Face GPT2LMHeadModel format ------------------------------------------------------

# (HF name, ours, is a Conv1D weight that must be transposed) per layer; {i} is the layer index.
_LAYER_KEYS = [
    ("h.{i}.ln_1.weight", "blocks.{i}.norm1.weight", False),
    ("h.{i}.ln_1.bias", "blocks.{i}.norm1.bias", False),
    ("h.{i}.attn.c_attn.weight", "blocks.{i}.mixer.qkv.weight", True),
    ("h.{i}.attn.c_attn.bias", "blocks.{i}.mixer.qkv.bias", False),
    ("h.{i}.attn.c_proj.weight", "blocks.{i}.mixer.proj.weight", True),
    ("h.{i}.attn.c_proj.bias", "blocks.{i}.mixer.proj.bias", False),
    ("h.{i}.ln_2.weight", "blocks.{i}.norm2.weight", False),
    ("h.{i}.ln_2.bias", "blocks.{i}.norm2.bias", False),
    ("h.{i}.mlp.c_fc.weight", "blocks.{i}.mlp.fc.weight", True),
    ("h.{i}.mlp.c_fc.bias", "blocks.{i}.mlp.fc.bias", False),
    ("h.{i}.mlp.c_proj.weight", "blocks.{i}.mlp.proj.weight", True),
    ("h.{i}.mlp.c_proj.bias", "blocks.{i}.mlp.proj.bias", False),
]
_GLOBAL_KEYS = [
    ("wte.weight", "embed.weight", False),
    ("wpe.weight", "pos_embed.weight", False),
    ("ln_f.weight", "norm_f.weight", False),
    ("ln_f.bias", "norm_f.bias", False),
]
# HF checkpoints may also hold the causal-mask buffers and the (tied) head; none are parameters here.
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "lm_head.weight")


def hf_key_map(n_layers: int) -> list[tuple[str, str, bool]]:
    """(HF GPT-2 key, our key, transposed: a Conv1D weight) for every tensor of an ``n_layers`` model."""
    layer = [(h.format(i=i), o.format(i=i), t) for i in range(n_layers) for h, o, t in _LAYER_KEYS]
    return _GLOBAL_KEYS + layer


def gpt_config_from_hf(hf: dict, dropout: float = 0.0) -> GPTConfig:
    """Translate a HF GPT-2 ``config.json`` dict, refusing settings this architecture does not have."""
    supported = {  # name: (HF default, values this architecture implements)
        "activation_function": ("gelu_new", ("gelu_new", "gelu_pytorch_tanh")),
        "layer_norm_epsilon": (1e-5, (1e-5,)),
        "n_inner": (None, (None, 4 * hf["n_embd"])),
        "scale_attn_weights": (True, (True,)),
        "scale_attn_by_inverse_layer_idx": (False, (False,)),
        "tie_word_embeddings": (True, (True,)),
    }
    for name, (default, allowed) in supported.items():
        if hf.get(name, default) not in allowed:
            raise ValueError(
                f"unsupported GPT-2 config {name}={hf[name]!r}; this implementation needs {allowed}"
            )
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf["n_positions"],
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        d_model=hf["n_embd"],
        dropout=dropout,
    )


def load_hf_gpt2(path: str | Path, dropout: float = 0.0) -> CausalLM:
    """Build a GPT from a HF GPT-2 directory (``config.json`` + ``model.safetensors``)."""
    path = Path(path)
    cfg = gpt_config_from_hf(json.loads((path / "config.json").read_text()), dropout)
    tensors = {k.removeprefix("transformer."): v for k, v in load_file(path / "model.safetensors").items()}
    model = build_gpt(cfg)
    ours = {}
    for hf_key, our_key, transpose in hf_key_map(cfg.n_layers):
        if hf_key not in tensors:
            raise KeyError(f"{path / 'model.safetensors'} has no tensor '{hf_key}'")
        tensor = tensors.pop(hf_key)
        ours[our_key] = tensor.t() if transpose else tensor
    unexpected = [k for k in tensors if not k.endswith(_IGNORED_SUFFIXES)]
    if unexpected:
        raise KeyError(f"unexpected tensors in {path / 'model.safetensors'}: {unexpected[:5]}")
    ours["head.weight"] = ours["embed.weight"]  # tied
    model.load_state_dict(ours, strict=True)
    return model


def save_hf_gpt2(model: CausalLM, cfg: GPTConfig, path: str | Path) -> None:
    """Write ``model`` as a HF ``GPT2LMHeadModel`` directory (``config.json`` + ``model.safetensors``)."""
    if not cfg.bias:
        raise ValueError("the HF GPT-2 format has biases everywhere; cannot save a bias=False model")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    tensors = {
        f"transformer.{hf_key}": (state[our_key].t() if transpose else state[our_key]).contiguous().cpu()
        for hf_key, our_key, transpose in hf_key_map(cfg.n_layers)
    }
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
    }
    (path / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
