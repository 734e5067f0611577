"""The encoder-decoder behind common.decoding's ``Decoder`` protocol, and ``translate``.

Vaswani et al. 2017, arXiv 1706.03762, Sec. 6.1: beam size 4, length penalty alpha = 0.6 (the
search itself is common.decoding's), maximum output length = input length + 50. The encoder runs
once per source batch; the decoder runs one position per step with its key/value caches
(``Transformer.start_decoding`` / ``decode_step``; beam search reorders the caches to each
survivor's parent with ``reorder_decoding``). ``translate`` goes from raw source sentences to
detokenised output.
"""

from __future__ import annotations

import torch

from common.decoding import beam_search, greedy
from papers.transformer.data import BOS_ID, EOS_ID, detokenize, pad_right
from papers.transformer.model import Transformer


class TransformerDecoder:
    """common.decoding.Decoder of a Transformer over a padded source batch src (B, S)."""

    def __init__(self, model: Transformer, max_len: int | None = None):
        self.model, self.max_len = model, max_len
        self.device = model.embed.weight.device

    def max_lengths(self, src: torch.Tensor) -> list[int]:
        """Per sentence: ``max_len`` or its source length + 50, capped by the learned position table."""
        if self.max_len is None:
            limits = ((src != self.model.cfg.pad_id).sum(dim=1) + 50).tolist()
        else:
            limits = [self.max_len] * src.shape[0]
        if self.model.pos_embed is not None:  # the decoder input (BOS + limit - 1 tokens) must fit
            limits = [min(n, self.model.cfg.max_len) for n in limits]
        return limits

    def start(self, src: torch.Tensor, copies: int = 1) -> dict:
        memory, src_keep = self.model.encode(src)  # (B, S, D), (B, 1, 1, S)
        if copies > 1:
            memory, src_keep = (
                memory.repeat_interleave(copies, dim=0),
                src_keep.repeat_interleave(copies, dim=0),
            )
        return self.model.start_decoding(memory, src_keep)

    def step(self, tokens: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        logits, state = self.model.decode_step(tokens, state)  # (N, V)
        return logits.float().log_softmax(-1), state

    def reorder(self, state: dict, index: torch.Tensor) -> dict:
        return self.model.reorder_decoding(state, index)


@torch.no_grad()
def translate(
    model: Transformer,
    tok,
    sentences: list[str],
    beam_size: int = 4,
    alpha: float = 0.6,
    batch_size: int = 64,
) -> list[str]:
    """Detokenised translations of raw source sentences (``beam_size=1``: greedy decoding)."""
    model.eval()
    decoder = TransformerDecoder(model)
    ids = [enc.ids + [EOS_ID] for enc in tok.encode_batch(sentences, add_special_tokens=False)]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths batch together
    out: list[str] = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        src = pad_right([ids[i] for i in chunk], model.cfg.pad_id).to(decoder.device)
        if beam_size == 1:
            hyps = greedy(decoder, src, BOS_ID, EOS_ID)
        else:
            hyps = [n_best[0][0] for n_best in beam_search(decoder, src, BOS_ID, EOS_ID, beam_size, alpha, 1)]
        for i, hyp in zip(chunk, hyps):
            out[i] = detokenize(tok, hyp)
    return out
