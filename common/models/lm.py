"""Decoder-only language-model shell shared by every sequence-mixer paper.

    tokens (B, L) -> embedding (B, L, D) [+ positions] -> N x Block -> final norm -> tied head (B, L, V)

A Block is pre-norm residual (GPT-2 / Mamba style):

    x = x + mixer(norm1(x))            # token mixing: attention, Mamba, RWKV, TTT, ...
    x = x + mlp(norm2(x))              # channel mixing, optional (Mamba blocks have none)

A *mixer* is any ``nn.Module`` with

    forward(x: (B, L, D)) -> (B, L, D)                      parallel / training form
    init_state(batch_size, device, dtype) -> state          KV cache or recurrent state
    step(x: (B, D), state) -> (y: (B, D), new_state)        one token: the recurrent form

so that every paper gets the same loss, generation and step-vs-parallel tests for free.
The model contract of ``common.train``: ``model(batch) -> loss`` with
``batch = {"idx": (B, L) long, "targets": (B, L) long, -100 = ignored}`` and optionally ``"start"``
(B,) long: the absolute position of each sequence's first token (default 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


def make_norm(kind: str, d_model: int) -> nn.Module:
    if kind == "rms":
        return nn.RMSNorm(d_model, eps=1e-5)
    if kind == "layer":
        return nn.LayerNorm(d_model)
    raise ValueError(f"unknown norm '{kind}'; choose 'rms' or 'layer'")


def sinusoidal_positions(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """Vaswani et al. 2017, Sec. 3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)."""
    half = torch.arange(0, d_model, 2, device=positions.device, dtype=torch.float32)
    inv_freq = torch.exp(-math.log(10000.0) * half / d_model)  # (D/2,)
    angles = positions.float()[:, None] * inv_freq[None, :]  # (L, D/2)
    pe = torch.zeros(positions.numel(), d_model, device=positions.device)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return pe  # (L, D)


class GeluMLP(nn.Module):
    """GPT-2 feed-forward: Linear(D, 4D) -> GELU -> Linear(4D, D) -> dropout."""

    def __init__(self, d_model: int, hidden: int | None = None, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        hidden = hidden or 4 * d_model
        self.fc = nn.Linear(d_model, hidden, bias=bias)
        self.proj = nn.Linear(hidden, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, d_model: int, mixer: nn.Module, mlp: nn.Module | None, norm: str):
        super().__init__()
        self.norm1 = make_norm(norm, d_model)
        self.mixer = mixer
        self.norm2 = make_norm(norm, d_model) if mlp is not None else None
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D)
        x = x + self.mixer(self.norm1(x))
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x

    def step(self, x: torch.Tensor, state):  # x: (B, D)
        y, state = self.mixer.step(self.norm1(x), state)
        x = x + y
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x, state


class CausalLM(nn.Module):
    """Embedding -> blocks -> norm -> tied head, with a loss, a recurrent step and sampling."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        mixer_factory: Callable[[int], nn.Module],
        mlp_factory: Callable[[int], nn.Module] | None = None,
        norm: str = "rms",
        positions: str = "none",
        max_len: int = 0,
        dropout: float = 0.0,
        tie_weights: bool = True,
    ):
        super().__init__()
        if positions not in ("none", "learned", "sinusoidal"):
            raise ValueError(f"unknown positions '{positions}'; choose none, learned or sinusoidal")
        if positions == "learned" and max_len <= 0:
            raise ValueError("learned positions need max_len > 0")
        self.vocab_size, self.d_model, self.positions, self.max_len = vocab_size, d_model, positions, max_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos_embed = nn.Embedding(max_len, d_model) if positions == "learned" else None
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, mixer_factory(i), mlp_factory(i) if mlp_factory else None, norm)
            for i in range(n_layers)
        )
        self.norm_f = make_norm(norm, d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed.weight, std=0.01)
        if tie_weights:
            self.head.weight = self.embed.weight

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _embed(self, idx: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        """Token + position embedding; ``start``: the absolute position of ``idx[:, 0]``, one for the
        batch or one per sequence (B,)."""
        x = self.embed(idx)  # (B, L, D)
        if self.positions != "none":
            pos = torch.arange(idx.shape[1], device=idx.device)  # (L,)
            pos = pos + (start.to(idx.device)[:, None] if torch.is_tensor(start) else start)  # (L,) or (B, L)
            if self.pos_embed is not None:
                if int(pos.max()) >= self.max_len:
                    raise ValueError(f"sequence length {int(pos.max()) + 1} exceeds max_len {self.max_len}")
                x = x + self.pos_embed(pos)
            else:
                pe = sinusoidal_positions(pos.flatten(), self.d_model).view(*pos.shape, self.d_model)
                x = x + pe.to(x.dtype)
        return self.drop(x)

    def logits(self, idx: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:  # (B, L) -> (B, L, V)
        x = self._embed(idx, start)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm_f(x))

    def forward(self, batch: dict) -> torch.Tensor:
        logits = self.logits(batch["idx"], batch.get("start", 0))  # (B, L, V)
        return F.cross_entropy(
            logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=IGNORE_INDEX
        )

    # ---- recurrent form -------------------------------------------------------------------
    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        device = device or self.embed.weight.device
        dtype = dtype or self.embed.weight.dtype
        return {"pos": 0, "layers": [b.mixer.init_state(batch_size, device, dtype) for b in self.blocks]}

    def step(self, token: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """One token (B,) -> next-token logits (B, V); O(1) in the position for recurrent mixers."""
        x = self._embed(token[:, None], start=state["pos"])[:, 0]  # (B, D)
        layers = []
        for block, layer_state in zip(self.blocks, state["layers"]):
            x, layer_state = block.step(x, layer_state)
            layers.append(layer_state)
        return self.head(self.norm_f(x)), {"pos": state["pos"] + 1, "layers": layers}

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue ``idx`` (B, L) by ``max_new_tokens`` using the recurrent form (cache / state)."""
        state = self.init_state(idx.shape[0])
        for t in range(idx.shape[1]):
            logits, state = self.step(idx[:, t], state)
        out = [idx]
        for _ in range(max_new_tokens):
            if greedy:
                nxt = logits.argmax(-1)
            else:
                logits = logits.float() / max(temperature, 1e-8)
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, -1), 1, generator=generator)[:, 0]
            out.append(nxt[:, None])
            logits, state = self.step(nxt, state)
        return torch.cat(out, dim=1)
