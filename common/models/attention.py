"""Scaled dot-product and multi-head attention.

Vaswani et al. 2017, "Attention Is All You Need", arXiv 1706.03762.

Eq. 1 (Sec. 3.2.1), scaled dot-product attention:

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V

Sec. 3.2.2, multi-head attention with h heads of size d_k = d_v = d_model / h:

    MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O,   head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V)

Sec. 3.2.3: decoder self-attention masks future positions (set to -inf before the softmax).

Shapes: q (B, H, Lq, Dh), k and v (B, H, Lk, Dh). ``mask`` is a boolean *keep* mask broadcastable to
(B, H, Lq, Lk): True = may attend. ``causal=True`` lets query i see keys j <= i + (Lk - Lq), i.e. the
causal diagonal is aligned to the bottom-right, which is what a KV cache needs (Lq new queries after
Lk - Lq cached keys) and the usual lower triangle when Lq == Lk. A query row with no key to attend to
(e.g. a padded query whose keys are all padding) outputs zeros instead of NaN.

``attention_ref`` is the explicit formula; ``attention`` is the fast path through
``torch.nn.functional.scaled_dot_product_attention`` with identical semantics (tests compare them).

KV cache (the recurrent form of masked self-attention, ``common.models.lm``'s mixer protocol):
``cached_attention`` appends the keys and values of Lq new positions to a cache
``{"k": (B, H, t, Dh), "v": (B, H, t, Dh)}`` and lets them attend causally to the t + Lq keys, so one
parallel pass fills the cache for a prompt (prefill) and each later token costs O(t). Both
``CausalSelfAttention`` (GPT) and ``MultiHeadAttention`` (the Transformer decoder) decode through it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _keep_mask(mask: torch.Tensor | None, causal: bool, lq: int, lk: int, device) -> torch.Tensor | None:
    """Combine the padding keep-mask and the causal mask into one boolean keep-mask (..., Lq, Lk)."""
    if causal:
        tri = torch.ones(lq, lk, dtype=torch.bool, device=device).tril(diagonal=lk - lq)  # (Lq, Lk)
        mask = tri if mask is None else mask & tri
    return mask


def _guard_empty_rows(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows with no key to attend to: let them attend everywhere (no NaN), and return which rows to zero."""
    row_ok = keep.any(dim=-1, keepdim=True)  # (..., Lq, 1)
    return keep | ~row_ok, row_ok


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Eq. 1, written out: softmax(Q K^T / sqrt(d_k) + mask) V. Returns (B, H, Lq, Dh)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, Lq, Lk)
    keep = _keep_mask(mask, causal, q.shape[-2], k.shape[-2], q.device)
    if keep is None:
        probs = scores.softmax(dim=-1)
        row_ok = None
    else:
        keep, row_ok = _guard_empty_rows(keep)
        probs = scores.masked_fill(~keep, float("-inf")).softmax(dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    out = probs @ v  # (B, H, Lq, Dh)
    return out if row_ok is None else out * row_ok


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Same as ``attention_ref`` through fused SDPA kernels. Returns (B, H, Lq, Dh)."""
    lq, lk = q.shape[-2], k.shape[-2]
    if mask is None and (not causal or lq == lk):
        # SDPA's own is_causal is top-left aligned, which equals ours only for Lq == Lk.
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)
    keep, row_ok = _guard_empty_rows(_keep_mask(mask, causal, lq, lk, q.device))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout_p)
    return out * row_ok


def empty_cache(batch_size: int, n_heads: int, d_head: int, device=None, dtype=None) -> dict:
    """A KV cache holding no position yet: k, v (B, H, 0, Dh)."""
    empty = torch.zeros(batch_size, n_heads, 0, d_head, device=device, dtype=dtype)
    return {"k": empty, "v": empty}


def cached_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: dict, dropout_p: float = 0.0
) -> tuple[torch.Tensor, dict]:
    """q, k, v (B, H, Lq, Dh) of Lq new positions after the cache's t: causal attention over the t + Lq
    keys -> (out (B, H, Lq, Dh), cache grown to t + Lq positions)."""
    k = torch.cat([cache["k"], k], dim=2)  # (B, H, t + Lq, Dh)
    v = torch.cat([cache["v"], v], dim=2)
    # a single new query may see every key: no mask needed
    out = attention(q, k, v, causal=q.shape[-2] > 1, dropout_p=dropout_p)
    return out, {"k": k, "v": v}


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, H, L, D / H)."""
    b, length, d = x.shape
    return x.view(b, length, n_heads, d // n_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, Dh) -> (B, L, H * Dh)."""
    b, h, length, dh = x.shape
    return x.transpose(1, 2).reshape(b, length, h * dh)


class MultiHeadAttention(nn.Module):
    """Sec. 3.2.2 multi-head attention for self-attention (x_kv is x_q) and encoder-decoder attention.

    ``dropout`` is applied to the attention probabilities (as ``torch.nn.MultiheadAttention`` does);
    the paper's residual dropout belongs to the surrounding sub-layer.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)  # W^Q for all heads
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)  # W^K
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)  # W^V
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)  # W^O

    def forward(
        self,
        x_q: torch.Tensor,
        x_kv: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """x_q (B, Lq, D), x_kv (B, Lk, D), mask keep-mask broadcastable to (B, H, Lq, Lk) -> (B, Lq, D)."""
        q = split_heads(self.q_proj(x_q), self.n_heads)  # (B, H, Lq, Dh)
        k = split_heads(self.k_proj(x_kv), self.n_heads)  # (B, H, Lk, Dh)
        v = split_heads(self.v_proj(x_kv), self.n_heads)  # (B, H, Lk, Dh)
        p = self.dropout if self.training else 0.0
        out = attention(q, k, v, mask=mask, causal=causal, dropout_p=p)  # (B, H, Lq, Dh)
        return self.out_proj(merge_heads(out))

    # ---- masked self-attention with a KV cache (incremental decoding) -------------------------
    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        return empty_cache(batch_size, self.n_heads, self.q_proj.in_features // self.n_heads, device, dtype)

    def prefill(self, x: torch.Tensor, cache: dict) -> tuple[torch.Tensor, dict]:
        """Causal self-attention of x (B, L, D) after the cached positions -> (B, L, D), grown cache."""
        q, k, v = (split_heads(proj(x), self.n_heads) for proj in (self.q_proj, self.k_proj, self.v_proj))
        out, cache = cached_attention(q, k, v, cache, self.dropout if self.training else 0.0)
        return self.out_proj(merge_heads(out)), cache


class CausalSelfAttention(nn.Module):
    """GPT-style masked self-attention (Sec. 3.2.3) as a ``common.models.lm`` mixer.

    One fused input projection ``qkv`` (D -> 3D, in q, k, v order, GPT-2's ``c_attn``), output
    projection ``proj`` (GPT-2's ``c_proj``), attention-probability dropout and residual dropout.

    Recurrent form: the state is the KV cache ``{"k": (B, H, t, Dh), "v": (B, H, t, Dh)}``; ``prefill``
    appends L positions in one parallel pass, ``step`` one, so step t costs O(t) and the cache grows by
    one entry per token.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.resid_drop = nn.Dropout(dropout)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (B, L, D)
        return split_heads(q, self.n_heads), split_heads(k, self.n_heads), split_heads(v, self.n_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
        q, k, v = self._qkv(x)  # (B, H, L, Dh)
        p = self.dropout if self.training else 0.0
        out = attention(q, k, v, causal=True, dropout_p=p)  # (B, H, L, Dh)
        return self.resid_drop(self.proj(merge_heads(out)))

    def init_state(self, batch_size: int, device=None, dtype=None) -> dict:
        return empty_cache(batch_size, self.n_heads, self.qkv.in_features // self.n_heads, device, dtype)

    def prefill(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """x (B, L, D) attends to the cache and causally to itself; returns (y (B, L, D), grown cache)."""
        q, k, v = self._qkv(x)  # (B, H, L, Dh)
        out, state = cached_attention(q, k, v, state, self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(merge_heads(out))), state

    def step(self, x: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """One token x (B, D) attends to the cache plus itself; returns (y (B, D), grown cache)."""
        y, state = self.prefill(x[:, None], state)
        return y[:, 0], state
