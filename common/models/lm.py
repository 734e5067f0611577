"""Decoder-only language-model shell shared by every sequence-mixer paper.

    tokens (B, L) -> embedding (B, L, D) [+ positions] [-> embed norm] -> N x Block -> final norm
                  -> tied head (B, L, V)

A Block is pre-norm residual (GPT-2 / Mamba / RWKV style):

    x = x + mixer(norm1(x))            # token mixing: attention, Mamba, RWKV time mix, TTT, ...
    x = x + mlp(norm2(x))              # channel mixing, optional (Mamba blocks have none)

A *mixer* is any ``nn.Module`` with

    forward(x: (B, L, D)) -> (B, L, D)                        parallel / training form
    init_state(batch_size, device, dtype) -> state            KV cache or recurrent state
    step(x: (B, D), state) -> (y: (B, D), new_state)          one token: the recurrent form
    prefill(x: (B, L, D), state) -> (y: (B, L, D), new_state) optional: L tokens after ``state`` in
                                                              one parallel pass (else: L steps)

A channel mixer (``mlp``) is a plain ``forward(x) -> y`` module (``GeluMLP``: stateless, applied to
(B, L, D) and to (B, D) alike), or may implement the same ``init_state`` / ``step`` / ``prefill`` when
it needs the past (RWKV's channel mix token-shifts). A block's state is (mixer state, mlp state), the
latter None for a stateless mlp.

Hooks, each passed only to the methods that name it as a keyword argument (checked once per function):

    start   the absolute position of x[:, 0] (int, or (B,) long: one per sequence) in forward,
            prefill and step, so that e.g. rotary positions work on shifted batches
    ctx     a dict shared by all blocks during one forward / prefill / step of the LM, fresh each
            call: layer 0 may store values that later layers read (RWKV-7's v_first)

and ``CausalLM(embed_norm=True)`` normalises the embeddings before the first block (RWKV's ln0).

So every paper gets the same loss, generation (prompt prefilled in one parallel pass, then one
``step`` per token) and the mixer checks of ``common.testing.check_mixer`` for free.
The model contract of ``common.train``: ``model(batch) -> loss`` with
``batch = {"idx": (B, L) long, "targets": (B, L) long, -100 = ignored}`` and optionally ``"start"``
(B,) long: the absolute position of each sequence's first token (default 0).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100
HOOKS = ("start", "ctx")


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


def position_embedding(
    length: int, start: int | torch.Tensor, d_model: int, table: nn.Embedding | None, device
) -> torch.Tensor:
    """Absolute positions start .. start + length - 1: rows of a learned ``table``, or the sinusoids of
    Sec. 3.5 when ``table`` is None. ``start``: int -> (L, D); (B,) tensor -> (B, L, D)."""
    pos = torch.arange(length, device=device)  # (L,)
    pos = pos + (start.to(device)[:, None] if torch.is_tensor(start) else start)  # (L,) or (B, L)
    if table is not None:
        if int(pos.max()) >= table.num_embeddings:
            raise ValueError(f"sequence length {int(pos.max()) + 1} exceeds max_len {table.num_embeddings}")
        return table(pos)
    return sinusoidal_positions(pos.flatten(), d_model).view(*pos.shape, d_model)


@functools.cache
def _hook_names(function: Callable) -> frozenset[str]:
    return frozenset(inspect.signature(function).parameters) & set(HOOKS)


def _hooks(method: Callable, start, ctx) -> dict[str, Any]:
    """The hooks ``method`` (a bound method) asks for."""
    names = _hook_names(getattr(method, "__func__", method))
    return {name: value for name, value in (("start", start), ("ctx", ctx)) if name in names}


def init_state(module: nn.Module | None, batch_size: int, device, dtype):
    """``module.init_state(...)``; None for a stateless module (a plain MLP) or no module."""
    return module.init_state(batch_size, device, dtype) if hasattr(module, "init_state") else None


def _prefills(module: nn.Module | None) -> bool:
    return module is None or hasattr(module, "prefill") or not hasattr(module, "step")


def state_tensors(state) -> list[torch.Tensor]:
    """Every tensor of a (nested tuple / list / dict) state, e.g. to measure its size."""
    if torch.is_tensor(state):
        return [state]
    if isinstance(state, dict):
        state = list(state.values())
    if isinstance(state, (tuple, list)):
        return [t for part in state for t in state_tensors(part)]
    return []  # None, or a position


def state_bytes(state) -> int:
    """The memory of a state's tensors (an LM's ``state["layers"]``: KV caches or recurrent states)."""
    return sum(t.numel() * t.element_size() for t in state_tensors(state))


def step(module: nn.Module, x: torch.Tensor, state, start=0, ctx=None):
    """One token x (B, D) at position ``start``: ``module.step`` or, for a stateless module, its forward."""
    if hasattr(module, "step"):
        return module.step(x, state, **_hooks(module.step, start, ctx))
    return module(x, **_hooks(module.forward, start, ctx)), state


def prefill(module: nn.Module, x: torch.Tensor, state, start=0, ctx=None):
    """x (B, L, D) after ``state``, from position ``start``: ``module.prefill`` if it has one, else L
    steps (or the forward, for a stateless module). Returns (y (B, L, D), state after the L tokens)."""
    if hasattr(module, "prefill"):
        return module.prefill(x, state, **_hooks(module.prefill, start, ctx))
    if not hasattr(module, "step"):
        return module(x, **_hooks(module.forward, start, ctx)), state
    ys = []
    for t in range(x.shape[1]):
        y, state = step(module, x[:, t], state, start + t, ctx)
        ys.append(y)
    return torch.stack(ys, dim=1), state


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

    def forward(
        self, x: torch.Tensor, start: int | torch.Tensor = 0, ctx: dict | None = None
    ) -> torch.Tensor:
        x = x + self.mixer(self.norm1(x), **_hooks(self.mixer.forward, start, ctx))  # (B, L, D)
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x), **_hooks(self.mlp.forward, start, ctx))
        return x

    def init_state(self, batch_size: int, device, dtype) -> tuple:
        return init_state(self.mixer, batch_size, device, dtype), init_state(
            self.mlp, batch_size, device, dtype
        )

    def step(self, x: torch.Tensor, state: tuple, start=0, ctx=None):  # x: (B, D)
        return self._recurrent(step, x, state, start, ctx)

    def prefill(self, x: torch.Tensor, state: tuple, start=0, ctx=None):  # x: (B, L, D)
        return self._recurrent(prefill, x, state, start, ctx)

    def _recurrent(self, form: Callable, x: torch.Tensor, state: tuple, start, ctx):
        mixer_state, mlp_state = state
        y, mixer_state = form(self.mixer, self.norm1(x), mixer_state, start, ctx)
        x = x + y
        if self.mlp is not None:
            y, mlp_state = form(self.mlp, self.norm2(x), mlp_state, start, ctx)
            x = x + y
        return x, (mixer_state, mlp_state)


class CausalLM(nn.Module):
    """Embedding -> blocks -> norm -> tied head, with a loss, a recurrent step, prefill and sampling."""

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
        embed_norm: bool = False,
    ):
        super().__init__()
        if positions not in ("none", "learned", "sinusoidal"):
            raise ValueError(f"unknown positions '{positions}'; choose none, learned or sinusoidal")
        if positions == "learned" and max_len <= 0:
            raise ValueError("learned positions need max_len > 0")
        self.vocab_size, self.d_model, self.positions, self.max_len = vocab_size, d_model, positions, max_len
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos_embed = nn.Embedding(max_len, d_model) if positions == "learned" else None
        self.embed_norm = make_norm(norm, d_model) if embed_norm else None
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
        """Token + position embedding (+ embed norm); ``start``: the absolute position of ``idx[:, 0]``,
        one for the batch or one per sequence (B,)."""
        x = self.embed(idx)  # (B, L, D)
        if self.positions != "none":
            x = x + position_embedding(idx.shape[1], start, self.d_model, self.pos_embed, idx.device).to(
                x.dtype
            )
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return self.drop(x)

    def logits(self, idx: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:  # (B, L) -> (B, L, V)
        x, ctx = self._embed(idx, start), {}
        for block in self.blocks:
            x = block(x, start, ctx)
        return self.head(self.norm_f(x))

    def forward(self, batch: dict) -> torch.Tensor:
        logits = self.logits(batch["idx"], batch.get("start", 0))  # (B, L, V)
        return F.cross_entropy(
            logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=IGNORE_INDEX
        )

    # ---- recurrent form -------------------------------------------------------------------
    def init_state(self, batch_size: int, device=None, dtype=None, start: int | torch.Tensor = 0) -> dict:
        """The state before the token at absolute position ``start`` (int, or (B,) per sequence)."""
        device = device or self.embed.weight.device
        dtype = dtype or self.embed.weight.dtype
        return {"pos": start, "layers": [b.init_state(batch_size, device, dtype) for b in self.blocks]}

    def step(self, token: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """One token (B,) -> next-token logits (B, V); O(1) in the position for recurrent mixers."""
        logits, state = self._recurrent(step, token[:, None], state, lambda x: x[:, 0])
        return logits, state

    def prefill(self, idx: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """Tokens (B, L) after ``state`` -> logits (B, L, V) and the state after them: one parallel pass
        when every mixer and mlp has ``prefill`` (or is stateless), else L steps of the whole LM (the
        ``ctx`` of a step holds one position)."""
        if all(_prefills(m) for b in self.blocks for m in (b.mixer, b.mlp)):
            return self._recurrent(prefill, idx, state, lambda x: x)
        logits = []
        for t in range(idx.shape[1]):
            step_logits, state = self.step(idx[:, t], state)
            logits.append(step_logits)
        return torch.stack(logits, dim=1), state

    def _recurrent(self, form: Callable, idx: torch.Tensor, state: dict, shape: Callable):
        start, ctx = state["pos"], {}
        x = shape(self._embed(idx, start))  # (B, D) for a step, (B, L, D) for a prefill
        layers = []
        for block, layer_state in zip(self.blocks, state["layers"]):
            x, layer_state = form(block, x, layer_state, start, ctx)
            layers.append(layer_state)
        return self.head(self.norm_f(x)), {"pos": start + idx.shape[1], "layers": layers}

    @torch.inference_mode()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue ``idx`` (B, L) by ``max_new_tokens``: the prompt in one parallel ``prefill``, then one
        recurrent ``step`` (cache / state) per new token."""
        logits, state = self.prefill(idx, self.init_state(idx.shape[0]))
        logits = logits[:, -1]  # (B, V)
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
