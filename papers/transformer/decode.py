"""Greedy decoding and beam search for the encoder-decoder.

Vaswani et al. 2017, arXiv 1706.03762, Sec. 6.1: beam search with beam size 4 and length penalty
alpha = 0.6, maximum output length = input length + 50, terminating early when possible.
The length penalty is GNMT's (Wu et al. 2016, arXiv 1609.08144, Eq. 14):

    lp(Y) = ((5 + |Y|) / 6)^alpha,        score(Y) = log P(Y | X) / lp(Y)

|Y| counts the generated tokens including the final EOS. The search keeps K live hypotheses. At
step t it ranks the extensions of all of them by log P (all have length t + 1, so this is also the
rank by score), takes the best 2K, sets aside those among the best K that end in EOS as finished
(scored with the penalty) and keeps the best K others alive. A sentence is done when its best
extension is EOS (OpenNMT-py's end condition) or at its length limit, where the best K extensions
are finished as they are; the answer is the finished hypothesis with the highest score. With K = 1
this is exactly greedy decoding.

The encoder runs once; the decoder runs one position per step with its key/value caches
(``Transformer.decode_step``; beam search reorders the caches to each survivor's parent). Both decoders return token ids without BOS and EOS, one list per sentence; ``translate``
goes from raw source sentences to detokenised output.
"""

from __future__ import annotations

import torch

from papers.transformer.data import BOS_ID, EOS_ID, detokenize, pad_right
from papers.transformer.model import Transformer


def _length_limits(model: Transformer, src: torch.Tensor, max_len: int | None) -> list[int]:
    """Per sentence: ``max_len`` or its source length + 50, capped by the learned position table."""
    if max_len is None:
        limits = ((src != model.cfg.pad_id).sum(dim=1) + 50).tolist()
    else:
        limits = [max_len] * src.shape[0]
    if model.pos_embed is not None:  # the decoder input (BOS + limit - 1 tokens) must fit
        limits = [min(n, model.cfg.max_len) for n in limits]
    return limits


def _strip(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


@torch.no_grad()
def greedy_decode(
    model: Transformer, src: torch.Tensor, bos_id: int, eos_id: int, max_len: int | None = None
) -> list[list[int]]:
    """Pick the most probable next token until EOS or the length limit (default: source length + 50)."""
    memory, src_keep = model.encode(src)  # (B, S, D)
    state = model.start_decoding(memory, src_keep)
    limits = torch.tensor(_length_limits(model, src, max_len), device=src.device)  # (B,)
    ys = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1)
    finished = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
    for t in range(int(limits.max())):
        logits, state = model.decode_step(ys[:, -1], state)  # (B, V)
        nxt = logits.argmax(-1)  # (B,)
        nxt = nxt.masked_fill(finished, model.cfg.pad_id)
        ys = torch.cat([ys, nxt[:, None]], dim=1)
        finished |= (nxt == eos_id) | (limits <= t + 1)
        if finished.all():
            break
    return [_strip(row[:limit], eos_id) for row, limit in zip(ys[:, 1:].tolist(), limits.tolist())]


def length_penalty(length: int, alpha: float) -> float:
    """GNMT lp(Y) = ((5 + |Y|) / 6)^alpha."""
    return ((5 + length) / 6) ** alpha


@torch.no_grad()
def beam_search(
    model: Transformer,
    src: torch.Tensor,
    bos_id: int,
    eos_id: int,
    beam_size: int = 4,
    alpha: float = 0.6,
    max_len: int | None = None,
) -> list[list[int]]:
    """Beam search with the GNMT length penalty; returns the best finished hypothesis per sentence."""
    b, k = src.shape[0], beam_size
    limits = _length_limits(model, src, max_len)
    memory, src_keep = model.encode(src)
    memory, src_keep = memory.repeat_interleave(k, dim=0), src_keep.repeat_interleave(k, dim=0)  # (B*K, ...)
    state = model.start_decoding(memory, src_keep)
    seqs = torch.full((b * k, 1), bos_id, dtype=torch.long, device=src.device)  # (B*K, t)
    scores = torch.zeros(b, k, device=src.device)  # log P of each live hypothesis
    scores[:, 1:] = float("-inf")  # all beams start identical: keep only the first
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]  # (score, tokens)
    done = [False] * b
    batch_idx = torch.arange(b, device=src.device)[:, None]
    for t in range(max(limits)):
        logits, state = model.decode_step(seqs[:, -1], state)  # (B*K, V)
        logp = logits.float().log_softmax(-1)
        vocab = logp.shape[-1]
        cand = (scores[:, :, None] + logp.view(b, k, vocab)).view(b, k * vocab)  # (B, K*V)
        top_scores, top_idx = cand.topk(2 * k, dim=1)  # (B, 2K), best first
        top_beam, top_tok = top_idx // vocab, top_idx % vocab
        is_eos = top_tok == eos_id
        prefixes = seqs.view(b, k, -1)[batch_idx, top_beam, 1:].tolist()  # (B, 2K, t) without BOS
        step_scores, step_toks = top_scores.tolist(), top_tok.tolist()
        penalty = length_penalty(t + 1, alpha)
        for i in range(b):
            if done[i]:
                continue
            at_limit = t + 1 >= limits[i]
            for r in range(k):  # the best K extensions: those ending in EOS (all of them at the limit) finish
                ends = step_toks[i][r] == eos_id
                if (ends or at_limit) and step_scores[i][r] > float("-inf"):
                    tokens = prefixes[i][r] + ([] if ends else [step_toks[i][r]])
                    finished[i].append((step_scores[i][r] / penalty, tokens))
            done[i] = at_limit or step_toks[i][0] == eos_id
        if all(done):
            break
        # the best K extensions that did not end in EOS stay alive (at most K of 2K can be EOS)
        scores, keep = top_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1)  # (B, K)
        parent = top_beam.gather(1, keep)  # (B, K): the beam each survivor extends
        seqs = torch.cat([seqs.view(b, k, -1)[batch_idx, parent],
                          top_tok.gather(1, keep)[..., None]], dim=2).view(b * k, -1)  # fmt: skip
        state = model.reorder_decoding(state, (batch_idx * k + parent).view(-1))
    return [max(f, key=lambda hyp: hyp[0])[1] for f in finished]


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
    device = model.embed.weight.device
    ids = [enc.ids + [EOS_ID] for enc in tok.encode_batch(sentences, add_special_tokens=False)]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths batch together
    out: list[str] = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        src = pad_right([ids[i] for i in chunk], model.cfg.pad_id).to(device)
        if beam_size == 1:
            hyps = greedy_decode(model, src, BOS_ID, EOS_ID)
        else:
            hyps = beam_search(model, src, BOS_ID, EOS_ID, beam_size=beam_size, alpha=alpha)
        for i, hyp in zip(chunk, hyps):
            out[i] = detokenize(tok, hyp)
    return out
