"""Decoding RAG (Sec. 2.5) with common.decoding's beam search.

Lewis et al. 2020, "Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks", arXiv 2005.11401.

RAG-Token: an ordinary autoregressive generator whose transition is Eq. 2's mixture over the K documents,

    p'(y_i | x, y_<i) = Σ_z p(z | x) p_theta(y_i | x, z, y_<i),

so ``RagTokenDecoder`` plugs it into the standard beam search: a hypothesis row holds the K decoder states of its
input's documents (rows ``n * K .. n * K + K - 1`` of the generator's state), each step runs the generator on all
N * K of them and mixes the K next-token distributions (marginal.rag_token_next_log_probs).

RAG-Sequence: p(y | x) does not factor over tokens, so no single beam search fits. ``rag_sequence_decode`` is the
paper's Thorough Decoding: a beam search per document with p_theta(y | x, z) (``beam_size`` hypotheses each), the
union Y of the K beams as candidates, then log p(y | x) of Eq. 1 for every candidate with one teacher-forced pass
per (candidate, document). ``fast=True`` is Fast Decoding: p_theta(y | x, z) ≈ 0 for a y that z's beam did not
produce, and the beam's own log p_theta(y | x, z) otherwise, with no extra pass.

Shapes: a batch is (src (B, K, S), doc_scores (B, K)), as model.py builds them. The generator: the lab's
Transformer (``encode``, ``start_decoding``, ``decode_step``, ``reorder_decoding``, ``logits``), from the zoo.
Hypotheses are token ids without BOS and EOS; scores are log-probabilities (the per-document searches and the
RAG-Sequence ranking use no length penalty).
"""

from __future__ import annotations

import torch
from torch import nn

from common.decoding import Hypothesis, beam_search
from papers.rag.marginal import rag_sequence_log_likelihood, rag_token_next_log_probs
from papers.rag.model import generator_logits, pad_rows


class RagTokenDecoder:
    """common.decoding.Decoder of RAG-Token over batches (src (B, K, S), doc_scores (B, K)); at most ``max_len``
    tokens per output, EOS included."""

    def __init__(self, generator: nn.Module, max_len: int):
        self.generator, self.max_len = generator, max_len
        self.device = next(generator.parameters()).device

    def max_lengths(self, batch: tuple[torch.Tensor, torch.Tensor]) -> list[int]:
        return [self.max_len] * batch[0].shape[0]

    def start(self, batch: tuple[torch.Tensor, torch.Tensor], copies: int = 1) -> dict:
        src, doc_scores = batch
        b, k, s = src.shape
        memory, src_keep = self.generator.encode(src.reshape(b * k, s))  # (B*K, S, D), (B*K, 1, 1, S)
        rows = torch.arange(b * k, device=src.device).view(b, 1, k).expand(b, copies, k).reshape(-1)
        generator_state = self.generator.start_decoding(memory[rows], src_keep[rows])  # B*copies*K rows
        return {"generator": generator_state, "doc_scores": doc_scores.repeat_interleave(copies, dim=0)}

    def step(self, tokens: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        """tokens (N,) -> log p'(v | x, y_<i) (N, V) float32: each document's step, mixed by p(z | x)."""
        n, k = state["doc_scores"].shape
        logits, generator_state = self.generator.decode_step(tokens.repeat_interleave(k), state["generator"])
        mixture = rag_token_next_log_probs(state["doc_scores"], logits.view(n, k, -1))  # (N, V)
        return mixture.float(), {**state, "generator": generator_state}

    def reorder(self, state: dict, index: torch.Tensor) -> dict:
        """Hypothesis rows ``index`` (N,): the K generator rows of each, and its doc scores."""
        n, k = state["doc_scores"].shape
        rows = (index[:, None] * k + torch.arange(k, device=index.device)).reshape(-1)  # (N*K,)
        return {
            "generator": self.generator.reorder_decoding(state["generator"], rows),
            "doc_scores": state["doc_scores"].index_select(0, index),
        }


@torch.no_grad()
def rag_sequence_decode(
    generator: nn.Module,
    src: torch.Tensor,
    doc_scores: torch.Tensor,
    bos_id: int,
    eos_id: int,
    max_len: int,
    beam_size: int = 4,
    fast: bool = False,
) -> list[list[Hypothesis]]:
    """Per input, every candidate of its K per-document beams with log p(y | x) (Eq. 1), best first."""
    b, k, s = src.shape
    per_doc = RagTokenDecoder(generator, max_len)  # one document per row: plain p_theta(y | x, z)
    batch = (src.reshape(b * k, 1, s), doc_scores.new_zeros(b * k, 1))
    beams = beam_search(per_doc, batch, bos_id, eos_id, beam_size, alpha=0.0)  # B*K lists of (tokens, log p)
    prior = doc_scores.log_softmax(dim=-1)  # (B, K)
    out = []
    for i in range(b):
        found = [{tuple(tokens): score for tokens, score in beams[i * k + z]} for z in range(k)]
        candidates = sorted(set().union(*found))  # Y: the union of the K beams
        if fast:
            scores = [
                torch.stack([prior[i, z] + found[z][y] for z in range(k) if y in found[z]]).logsumexp(0)
                for y in candidates
            ]
        else:
            scores = _thorough_scores(generator, src[i], doc_scores[i], candidates, bos_id, eos_id, max_len)
        out.append(sorted(((list(y), float(p)) for y, p in zip(candidates, scores)), key=lambda h: -h[1]))
    return out


def _thorough_scores(generator, src, doc_scores, candidates, bos_id, eos_id, max_len) -> torch.Tensor:
    """log p(y | x) (C,) of Eq. 1 for candidates y of one input, src (K, S), doc_scores (K,): one teacher-forced
    pass per (candidate, document). A candidate cut at ``max_len`` without EOS is scored without it."""
    pad_id = generator.cfg.pad_id
    tgt_in = pad_rows([[bos_id, *y][:max_len] for y in candidates], pad_id)
    tgt_out = pad_rows([[*y, eos_id][:max_len] for y in candidates], pad_id)
    c = len(candidates)
    logits = generator_logits(generator, src.expand(c, *src.shape), tgt_in)  # (C, K, T, V)
    mask = torch.zeros_like(tgt_out, dtype=torch.bool)
    for row, y in enumerate(candidates):
        mask[row, : min(len(y) + 1, max_len)] = True
    return rag_sequence_log_likelihood(doc_scores.expand(c, -1), logits, tgt_out, mask)
