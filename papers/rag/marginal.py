"""RAG's marginalisation of the generator over the retrieved documents, in log space.

Lewis et al. 2020, "Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks", arXiv 2005.11401.

Retriever (Sec. 2.2): p_eta(z | x) ∝ exp(d(z)^T q(x)), truncated to the top K documents, so over the K
retrieved documents                       log p(z | x) = log_softmax_z(doc_scores)
RAG-Sequence (Eq. 1): one document for the whole output,
                                          log p(y | x) = logsumexp_z [ log p(z | x) + Σ_i log p(y_i | x, z, y_<i) ]
RAG-Token (Eq. 2): a document per token, the next-token distribution is the mixture
                                          p'(y_i | x, y_<i) = Σ_z p(z | x) p(y_i | x, z, y_<i)
                                          log p(y | x)  = Σ_i logsumexp_z [ log p(z | x) + log p(y_i | x, z, y_<i) ]
Training (Sec. 2.4): minimise Σ_j -log p(y_j | x_j) over the training pairs; the losses here are the mean over
the batch of the per-example sequence NLL (summed over tokens, not averaged: the marginal of Eq. 1 is only
defined for a whole sequence), the minibatch estimate of that sum divided by B.

Shapes (B examples, K retrieved documents, T target positions, V vocabulary):

    doc_scores (B, K)         retriever scores d(z)^T q(x) of the retrieved documents (unnormalised)
    logits     (B, K, T, V)   generator logits, document z as its context; position t predicts target[:, t]
    target     (B, T)         token ids y_1 .. y_T (right-padded)
    mask       (B, T) bool    True on the real tokens; padded positions contribute nothing
    -> log p(y | x)   (B,)

``*_ref`` are readable loops over examples, documents and positions; the others are the vectorised fast
paths (the tests check one against the other, values and gradients, in float64).
"""

from __future__ import annotations

import torch

from common.errors import PaperzooError


def _check(doc_scores: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> None:
    if doc_scores.dim() != 2:
        raise PaperzooError(f"doc_scores must be (B, K); got {tuple(doc_scores.shape)}")
    b, k = doc_scores.shape
    if logits.dim() != 4 or tuple(logits.shape[:2]) != (b, k):
        raise PaperzooError(f"logits must be (B, K, T, V) = ({b}, {k}, T, V); got {tuple(logits.shape)}")
    if mask.dtype != torch.bool:
        raise PaperzooError(f"mask must be a bool tensor (True on real tokens); got {mask.dtype}")
    if tuple(target.shape) != (b, logits.shape[2]) or target.shape != mask.shape:
        raise PaperzooError(
            f"target and mask must be (B, T) = ({b}, {logits.shape[2]}); "
            f"got {tuple(target.shape)} and {tuple(mask.shape)}"
        )


def doc_log_prior(doc_scores: torch.Tensor) -> torch.Tensor:
    """log p(z | x) (B, K): the retriever distribution restricted to the K retrieved documents (Sec. 2.2)."""
    return doc_scores.log_softmax(dim=-1)


def target_log_probs(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log p(y_t | x, z, y_<t) (B, K, T) for every document z, zero on padded positions."""
    logp = logits.log_softmax(dim=-1)  # (B, K, T, V)
    index = target[:, None, :, None].expand(-1, logits.shape[1], -1, 1)  # (B, K, T, 1)
    token = logp.gather(-1, index)[..., 0]  # (B, K, T)
    return token.masked_fill(~mask[:, None, :], 0.0)


def rag_sequence_log_likelihood(doc_scores, logits, target, mask) -> torch.Tensor:
    """Eq. 1: log p(y | x) (B,) = logsumexp_z [ log p(z | x) + Σ_t log p(y_t | x, z, y_<t) ]."""
    _check(doc_scores, logits, target, mask)
    per_doc = doc_log_prior(doc_scores) + target_log_probs(logits, target, mask).sum(-1)  # (B, K)
    return per_doc.logsumexp(dim=-1)  # (B,)


def rag_token_next_log_probs(doc_scores: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Eq. 2's mixture: log p'(v | x, y_<t) = logsumexp_z [ log p(z | x) + log p(v | x, z, y_<t) ].

    doc_scores (B, K), logits (B, K, ..., V) -> (B, ..., V), a normalised distribution over v at each position.
    """
    prior = doc_log_prior(doc_scores).view(*doc_scores.shape, *([1] * (logits.dim() - 2)))  # (B, K, 1.., 1)
    return (prior + logits.log_softmax(dim=-1)).logsumexp(dim=1)


def rag_token_log_likelihood(doc_scores, logits, target, mask) -> torch.Tensor:
    """Eq. 2: log p(y | x) (B,) = Σ_t logsumexp_z [ log p(z | x) + log p(y_t | x, z, y_<t) ]; the mixture is
    taken at the target tokens only, (B, K, T) rather than rag_token_next_log_probs' (B, K, T, V)."""
    _check(doc_scores, logits, target, mask)
    per_doc = doc_log_prior(doc_scores)[:, :, None] + target_log_probs(logits, target, mask)  # (B, K, T)
    return per_doc.logsumexp(dim=1).masked_fill(~mask, 0.0).sum(-1)  # (B,)


def rag_sequence_nll(doc_scores, logits, target, mask) -> torch.Tensor:
    """Sec. 2.4 with Eq. 1: mean over the batch of -log p(y | x), a scalar."""
    return -rag_sequence_log_likelihood(doc_scores, logits, target, mask).mean()


def rag_token_nll(doc_scores, logits, target, mask) -> torch.Tensor:
    """Sec. 2.4 with Eq. 2: mean over the batch of -log p(y | x), a scalar."""
    return -rag_token_log_likelihood(doc_scores, logits, target, mask).mean()


# ---- readable references: one example, one document, one position at a time --------------------------------


def _log_sum_exp(terms: list[torch.Tensor]) -> torch.Tensor:
    """log Σ_j exp(a_j) of 0-d tensors, shifted by their maximum."""
    top = max(a.detach() for a in terms)
    return top + torch.log(sum(torch.exp(a - top) for a in terms))


def _log_prior_ref(scores: torch.Tensor) -> list[torch.Tensor]:
    """log p(z | x) = s_z - log Σ_z' exp(s_z') for the K scores (K,) of one example."""
    norm = _log_sum_exp(list(scores))
    return [s - norm for s in scores]


def _log_prob_ref(logits: torch.Tensor, token: int) -> torch.Tensor:
    """log softmax(logits)[token] of one position's logits (V,)."""
    return logits[token] - _log_sum_exp(list(logits))


def rag_sequence_log_likelihood_ref(doc_scores, logits, target, mask) -> torch.Tensor:
    """Eq. 1, one example at a time: a product over tokens inside each document, then a mixture."""
    _check(doc_scores, logits, target, mask)
    out = []
    for b in range(doc_scores.shape[0]):
        prior = _log_prior_ref(doc_scores[b])
        per_doc = []
        for z in range(doc_scores.shape[1]):
            seq = prior[z]
            for t in range(target.shape[1]):
                if mask[b, t]:
                    seq = seq + _log_prob_ref(logits[b, z, t], int(target[b, t]))
            per_doc.append(seq)
        out.append(_log_sum_exp(per_doc))
    return torch.stack(out)


def rag_token_log_likelihood_ref(doc_scores, logits, target, mask) -> torch.Tensor:
    """Eq. 2, one example at a time: a mixture over documents at each token, then a product over tokens."""
    _check(doc_scores, logits, target, mask)
    out = []
    for b in range(doc_scores.shape[0]):
        prior = _log_prior_ref(doc_scores[b])
        total = doc_scores.new_zeros(())
        for t in range(target.shape[1]):
            if mask[b, t]:
                y = int(target[b, t])
                total = total + _log_sum_exp(
                    [prior[z] + _log_prob_ref(logits[b, z, t], y) for z in range(doc_scores.shape[1])]
                )
        out.append(total)
    return torch.stack(out)
