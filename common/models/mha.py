"""MHA-Abs: multi-head attention LM with absolute positions, the attention baseline of Gu & Dao 2023
("Mamba", arXiv 2312.00752, Table 2: induction heads).

    idx (B, L) -> embedding + sinusoidal (Vaswani et al. 2017, Sec. 3.5) or learned positions
               -> N x [x += attn(LN(x)); x += mlp(LN(x))] -> LN -> tied head (B, L, V)

Pre-LN blocks of ``common.models.attention.CausalSelfAttention`` and ``common.models.lm.GeluMLP`` (4D hidden)
with PyTorch's default initialisation (GPT's is ``common.models.gpt``). In the model zoo as ``mha``.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.models.attention import CausalSelfAttention
from common.models.lm import CausalLM, GeluMLP
from common.models.zoo import register


@dataclass
class MHAConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    positions: str = "sinusoidal"  # or "learned" (then max_len rows)
    max_len: int = 0


@register("mha", MHAConfig)
def build_mha_lm(cfg: MHAConfig) -> CausalLM:
    return CausalLM(
        cfg.vocab_size, cfg.d_model, cfg.n_layers,
        mixer_factory=lambda i: CausalSelfAttention(cfg.d_model, cfg.n_heads),
        mlp_factory=lambda i: GeluMLP(cfg.d_model),
        norm="layer", positions=cfg.positions, max_len=cfg.max_len,
    )  # fmt: skip
