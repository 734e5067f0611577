"""The Transformer encoder-decoder.

Vaswani et al. 2017, "Attention Is All You Need", arXiv 1706.03762.

    src (B, S) -> Embed*sqrt(d) + PE -> dropout -> N x EncoderLayer              -> memory (B, S, D)
    tgt_in (B, T) -> Embed*sqrt(d) + PE -> dropout -> N x DecoderLayer(memory)   -> (B, T, D)
                 -> tied output projection (B, T, V) -> label-smoothed cross entropy against tgt_out

Sec. 3.1   encoder layer = self-attention + feed-forward; decoder layer adds encoder-decoder attention
           between them and masks future positions in its self-attention (Sec. 3.2.3).
           Each sub-layer is wrapped as LayerNorm(x + Dropout(Sublayer(x))) (post-LN, Sec. 3.1 +
           Sec. 5.4 residual dropout); ``norm_first=True`` gives the pre-LN variant
           x + Dropout(Sublayer(LayerNorm(x))) with a final LayerNorm after each stack.
Sec. 3.2   multi-head attention: ``common.models.attention.MultiHeadAttention``.
Eq. 2      FFN(x) = max(0, x W1 + b1) W2 + b2, inner size d_ff.
Sec. 3.4   one embedding matrix shared by source, target (joint BPE vocabulary) and the pre-softmax
           projection; embeddings multiplied by sqrt(d_model).
Sec. 3.5   sinusoidal positional encoding (``positions="learned"``: Table 3 row (E)).
Sec. 5.4   dropout P_drop = 0.1 on sub-layer outputs and on embedding + positional sums;
           label smoothing eps_ls = 0.1.

Incremental decoding (``start_decoding`` / ``decode_step`` / ``reorder_decoding``): the decoder
runs one position at a time with a cache of each layer's self-attention keys and values and the
encoder-decoder keys and values computed once, so a step costs O(t) attention instead of
recomputing the prefix; ``decode_step`` equals the last position of ``decode`` (tested).

In the model zoo as ``transformer`` (``zoo.build("transformer", TransformerConfig(...))``).

Batch contract of the shared loop, ``model(batch) -> loss``: ``{"src": (B, S), "tgt_in": (B, T),
"tgt_out": (B, T)}`` right-padded with ``pad_id``; tgt_in = [bos] + y and tgt_out = y + [eos].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.models.attention import MultiHeadAttention, attention, merge_heads, split_heads
from common.models.lm import position_embedding
from common.models.zoo import register


@dataclass
class TransformerConfig:
    vocab_size: int  # joint source/target vocabulary
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_layers: int = 6  # N, in the encoder and in the decoder
    dropout: float = 0.1  # P_drop
    attn_dropout: float = 0.0  # on attention probabilities; not in the paper, hence 0
    label_smoothing: float = 0.1  # eps_ls
    positions: str = "sinusoidal"  # or "learned"
    max_len: int = 256  # size of the learned position table
    norm_first: bool = False  # False: post-LN as in the paper; True: pre-LN
    pad_id: int = 0


def label_smoothed_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, eps: float = 0.1, ignore_index: int = -100
) -> torch.Tensor:
    """Cross entropy against q = (1 - eps) * onehot(target) + eps / V (Szegedy et al. 2016; Sec. 5.4).

    -sum_j q_j log p_j = (1 - eps) * (-log p_target) + eps * mean_j(-log p_j), averaged over the
    positions whose target is not ``ignore_index``. logits (..., V), target (...).
    """
    logp = F.log_softmax(logits.float(), dim=-1)  # (..., V)
    keep = target != ignore_index
    nll = -logp.gather(-1, target.masked_fill(~keep, 0)[..., None])[..., 0]  # (...)
    smooth = -logp.mean(dim=-1)  # (...)
    loss = (1.0 - eps) * nll + eps * smooth
    return (loss * keep).sum() / keep.sum().clamp_min(1)


class FeedForward(nn.Module):
    """Eq. 2: max(0, x W1 + b1) W2 + b2."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff)
        self.w2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.relu(self.w1(x)))


class Residual(nn.Module):
    """A sub-layer connection: post-LN LayerNorm(x + Dropout(f(x))) or pre-LN x + Dropout(f(LayerNorm(x)))."""

    def __init__(self, d_model: int, dropout: float, norm_first: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.norm_first = norm_first

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.norm_first:
            return x + self.drop(sublayer(self.norm(x)))
        return self.norm(x + self.drop(sublayer(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff)
        self.res_attn = Residual(cfg.d_model, cfg.dropout, cfg.norm_first)
        self.res_ffn = Residual(cfg.d_model, cfg.dropout, cfg.norm_first)

    def forward(self, x: torch.Tensor, src_keep: torch.Tensor) -> torch.Tensor:  # (B, S, D)
        x = self.res_attn(x, lambda h: self.self_attn(h, h, mask=src_keep))
        return self.res_ffn(x, self.ffn)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, cfg.attn_dropout)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff)
        self.res_self = Residual(cfg.d_model, cfg.dropout, cfg.norm_first)
        self.res_cross = Residual(cfg.d_model, cfg.dropout, cfg.norm_first)
        self.res_ffn = Residual(cfg.d_model, cfg.dropout, cfg.norm_first)

    def forward(self, y: torch.Tensor, memory: torch.Tensor, src_keep: torch.Tensor) -> torch.Tensor:
        # Targets are right-padded, so the causal mask already hides padding from every real position.
        y = self.res_self(y, lambda h: self.self_attn(h, h, causal=True))  # (B, T, D)
        y = self.res_cross(y, lambda h: self.cross_attn(h, memory, mask=src_keep))
        return self.res_ffn(y, self.ffn)


@register("transformer", TransformerConfig)
class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        if cfg.positions not in ("sinusoidal", "learned"):
            raise ValueError(f"unknown positions '{cfg.positions}'; choose sinusoidal or learned")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)  # shared by src, tgt and the output
        self.pos_embed = nn.Embedding(cfg.max_len, cfg.d_model) if cfg.positions == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        # pre-LN stacks end un-normalised; post-LN layers already end in a LayerNorm
        self.enc_norm = nn.LayerNorm(cfg.d_model) if cfg.norm_first else nn.Identity()
        self.dec_norm = nn.LayerNorm(cfg.d_model) if cfg.norm_first else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform matrices, zero biases; embeddings N(0, 1/d) so Embed*sqrt(d) has unit scale."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2 and "embed" not in name:
                nn.init.xavier_uniform_(p)
        nn.init.normal_(self.embed.weight, std=self.cfg.d_model**-0.5)
        if self.pos_embed is not None:
            nn.init.normal_(self.pos_embed.weight, std=self.cfg.d_model**-0.5)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _embed(self, tokens: torch.Tensor, start: int = 0) -> torch.Tensor:  # (B, L) -> (B, L, D)
        """Embed * sqrt(d_model) + the positions start .. start + L - 1 (Sec. 3.4, 3.5), then dropout."""
        x = self.embed(tokens) * math.sqrt(self.cfg.d_model)
        pe = position_embedding(tokens.shape[1], start, self.cfg.d_model, self.pos_embed, tokens.device)
        return self.drop(x + pe.to(x.dtype))

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, S) -> memory (B, S, D) and the source keep-mask (B, 1, 1, S)."""
        src_keep = (src != self.cfg.pad_id)[:, None, None, :]
        x = self._embed(src)
        for layer in self.encoder:
            x = layer(x, src_keep)
        return self.enc_norm(x), src_keep

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, src_keep: torch.Tensor) -> torch.Tensor:
        """tgt_in (B, T) -> next-token logits (B, T, V) through the tied output projection."""
        y = self._embed(tgt_in)
        for layer in self.decoder:
            y = layer(y, memory, src_keep)
        return F.linear(self.dec_norm(y), self.embed.weight)

    # ---- incremental decoding ------------------------------------------------------------------
    def start_decoding(self, memory: torch.Tensor, src_keep: torch.Tensor) -> dict:
        """The decoding state of N rows: memory (N, S, D), src_keep (N, 1, 1, S); no position decoded yet."""
        cross = []
        for layer in self.decoder:
            attn = layer.cross_attn
            cross.append((split_heads(attn.k_proj(memory), attn.n_heads),
                          split_heads(attn.v_proj(memory), attn.n_heads)))  # fmt: skip
        caches = [
            layer.self_attn.init_state(memory.shape[0], memory.device, memory.dtype) for layer in self.decoder
        ]
        return {"pos": 0, "src_keep": src_keep, "cross": cross, "self": caches}

    def decode_step(self, tokens: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """Next-token logits (N, V) after ``tokens`` (N,) at position ``state["pos"]``; the state advances."""
        x = self._embed(tokens[:, None], start=state["pos"])  # (N, 1, D)
        caches = []
        for layer, (ck, cv), cache in zip(self.decoder, state["cross"], state["self"]):
            ca = layer.cross_attn

            def self_attn(h, sa=layer.self_attn, cache=cache):  # the KV-cached step of MultiHeadAttention
                y, grown = sa.prefill(h, cache)
                caches.append(grown)
                return y

            def cross_attn(h, ca=ca, ck=ck, cv=cv):
                q = split_heads(ca.q_proj(h), ca.n_heads)
                return ca.out_proj(merge_heads(attention(q, ck, cv, mask=state["src_keep"])))

            x = layer.res_self(x, self_attn)
            x = layer.res_cross(x, cross_attn)
            x = layer.res_ffn(x, layer.ffn)
        logits = F.linear(self.dec_norm(x[:, 0]), self.embed.weight)  # (N, V)
        return logits, {**state, "pos": state["pos"] + 1, "self": caches}

    @staticmethod
    def reorder_decoding(state: dict, index: torch.Tensor) -> dict:
        """Keep rows ``index`` (N,) of the self-attention caches (beam search: each new row's parent).

        Only valid when every row and its parent share the encoder memory (beams of one sentence).
        """
        caches = [{name: kv.index_select(0, index) for name, kv in cache.items()} for cache in state["self"]]
        return {**state, "self": caches}

    def logits(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory, src_keep = self.encode(src)
        return self.decode(tgt_in, memory, src_keep)

    def forward(self, batch: dict) -> torch.Tensor:
        logits = self.logits(batch["src"], batch["tgt_in"])  # (B, T, V)
        return label_smoothed_cross_entropy(
            logits, batch["tgt_out"], eps=self.cfg.label_smoothing, ignore_index=self.cfg.pad_id
        )
