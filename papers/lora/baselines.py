"""The adaptation baselines LoRA is compared with (Hu et al. 2021, arXiv 2106.09685, Sec. 5.1), for our GPT.

Each freezes a pretrained ``CausalLM`` (``common.models.gpt``) except what it trains, and returns the
number of trainable parameters (tied weights counted once):

    full_ft        fine-tuning (FT): every parameter
    ft_top         FT^Top2 (Li & Liang 2021): only the last k = 2 blocks and the final layer norm. The output
                   head is tied to the token embedding, so training it would also change the input layer;
                   it stays frozen (with an untied head one would add it)
    bitfit         BitFit (Zaken et al. 2021): every bias, LayerNorm biases included
    inject_adapters  Adapter^H (Houlsby et al. 2019): a bottleneck after the attention output projection
                   and after the MLP, before the residual add, plus the layer norms (which Houlsby et al.
                   train too), so |Θ| = L_adpt (2 d m + m + d) + 2 L_LN d as in the paper's Sec. 5.1

``HoulsbyAdapter``: y = x + W_up f(W_down x + b_down) + b_up with W_down (m, d), W_up (d, m), m << d,
f = GELU. Near-identity at initialisation: weights from a normal with std 1e-2 truncated at two standard
deviations and zero biases, as Houlsby et al. describe, so the adapted model starts near the pretrained one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from common.models.lm import CausalLM
from papers.lora.lora import n_trainable


def freeze_all_but(model: nn.Module, predicate: Callable[[str], bool]) -> int:
    """Train exactly the parameters whose qualified name satisfies ``predicate``; returns their number."""
    for name, p in model.named_parameters():
        p.requires_grad_(predicate(name))
    return n_trainable(model)


def full_ft(model: nn.Module) -> int:
    """FT: every parameter trainable."""
    return freeze_all_but(model, lambda name: True)


def ft_top(model: CausalLM, k: int = 2) -> int:
    """FT^Top-k: the last ``k`` blocks and the final norm (the tied head/embedding stays frozen)."""
    top = tuple(f"blocks.{i}." for i in range(len(model.blocks) - k, len(model.blocks)))
    return freeze_all_but(model, lambda name: name.startswith((*top, "norm_f.")))


def bitfit(model: nn.Module) -> int:
    """BitFit: only the bias terms."""
    return freeze_all_but(model, lambda name: name.rpartition(".")[2] == "bias")


class HoulsbyAdapter(nn.Module):
    """Bottleneck residual adapter d -> m -> d, near-identity at initialisation."""

    def __init__(self, d_model: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(d_model, bottleneck)
        self.up = nn.Linear(bottleneck, d_model)
        self.act = nn.GELU()
        for linear in (self.down, self.up):
            nn.init.trunc_normal_(linear.weight, std=1e-2, a=-2e-2, b=2e-2)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d) -> (..., d)
        return x + self.up(self.act(self.down(x)))


def inject_adapters(model: CausalLM, bottleneck: int, train_norms: bool = True) -> int:
    """Adapter^H: each block's ``mixer.proj`` and ``mlp.proj`` become Sequential(proj, adapter); the
    adapters (and, with ``train_norms``, the layer norms) are trained, all else frozen. Wrapping the
    projection rather than the sub-layer keeps the recurrent ``step`` / ``prefill`` forms adapted too."""
    for block in model.blocks:
        for owner in (block.mixer, block.mlp):
            owner.proj = nn.Sequential(owner.proj, HoulsbyAdapter(owner.proj.out_features, bottleneck))
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, HoulsbyAdapter) or (
            train_norms and isinstance(module, (nn.LayerNorm, nn.RMSNorm))
        ):
            module.requires_grad_(True)
    return n_trainable(model)
