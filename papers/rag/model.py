"""RAG's generator side: each retrieved passage joined to the input, one seq2seq pass per document, the marginal
loss.

Lewis et al. 2020, "Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks", arXiv 2005.11401.

Sec. 2.3   the generator p_theta(y_i | x, z, y_<i) is a seq2seq model (BART-large in the paper; here the lab's
           encoder-decoder Transformer, built by name through the model zoo); "we simply concatenate" the input x
           and the retrieved content z. Here the input comes first, [x ; sep ; z], truncated to ``max_len``
           tokens from the passage's end, so that a long passage never cuts the question.
Sec. 2.4   training minimises Σ_j -log p(y_j | x_j) with the marginals of Eq. 1 (RAG-Sequence) or Eq. 2
           (RAG-Token) (papers/rag/marginal.py); the doc scores carry the gradient into the query encoder
           (papers/rag/retrieval.py, ``DenseRetriever.doc_scores``).

Shapes (B inputs, K documents each, S source and T target positions, V vocabulary):

    src (B, K, S)       [x ; sep ; z_k] right-padded with the generator's pad id
    tgt_in (B, T)       [bos] + y,   tgt_out (B, T): y + [eos]   (right-padded)
    logits (B, K, T, V) the generator's next-token logits given document k

The generator is any module with the Transformer's ``logits(src (N, S), tgt_in (N, T)) -> (N, T, V)`` and
``cfg.pad_id`` (``zoo.build("transformer", cfg, vocab_size=...)``); decode.py adds its incremental calls.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from common.errors import PaperzooError
from papers.rag.marginal import rag_sequence_nll, rag_token_nll

VARIANTS = {"sequence": rag_sequence_nll, "token": rag_token_nll}


def pad_rows(rows: list[list[int]], pad_id: int) -> torch.Tensor:
    """Token id lists -> (N, longest) right-padded with ``pad_id``."""
    return pad_sequence(
        [torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True, padding_value=pad_id
    )


def join_inputs(
    questions: list[list[int]], passages: list[list[list[int]]], sep_id: int, pad_id: int, max_len: int
) -> torch.Tensor:
    """B questions x and their K retrieved passages z (token ids) -> src (B, K, S): [x ; sep ; z_k][:max_len]."""
    if len({len(zs) for zs in passages}) != 1 or len(passages) != len(questions):
        raise PaperzooError("join_inputs needs the same number K of passages for each of the B questions")
    rows = [(x + [sep_id] + z)[:max_len] for x, zs in zip(questions, passages) for z in zs]
    return pad_rows(rows, pad_id).view(len(questions), len(passages[0]), -1)


def generator_logits(generator: nn.Module, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
    """src (B, K, S), tgt_in (B, T) -> logits (B, K, T, V): the generator once per (input, document) pair."""
    b, k, s = src.shape
    logits = generator.logits(src.reshape(b * k, s), tgt_in.repeat_interleave(k, dim=0))  # (B*K, T, V)
    return logits.view(b, k, *logits.shape[1:])


def rag_loss(
    generator: nn.Module,
    src: torch.Tensor,
    doc_scores: torch.Tensor,
    tgt_in: torch.Tensor,
    tgt_out: torch.Tensor,
    variant: str = "token",
) -> torch.Tensor:
    """Sec. 2.4: the batch mean of -log p(y | x) under RAG-Sequence (Eq. 1) or RAG-Token (Eq. 2), a scalar that
    trains the generator and, through doc_scores (B, K), the query encoder."""
    if variant not in VARIANTS:
        raise PaperzooError(f"unknown RAG variant '{variant}'; choose one of {', '.join(VARIANTS)}")
    logits = generator_logits(generator, src, tgt_in)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp16 / bf16 -> fp32; fp64 stays
    return VARIANTS[variant](doc_scores, logits, tgt_out, tgt_out != generator.cfg.pad_id)
