"""Greedy decoding and beam search for any autoregressive model behind the small ``Decoder`` protocol.

Vaswani et al. 2017, arXiv 1706.03762, Sec. 6.1: beam search with beam size 4 and length penalty
alpha = 0.6, terminating early when possible. The length penalty is GNMT's (Wu et al. 2016,
arXiv 1609.08144, Eq. 14):

    lp(Y) = ((5 + |Y|) / 6)^alpha,        score(Y) = log P(Y | X) / lp(Y)

|Y| counts the generated tokens including the final EOS. The search keeps K live hypotheses. At
step t it ranks the extensions of all of them by log P (all have length t + 1, so this is also the
rank by score), takes the best 2K, sets aside those among the best K that end in EOS as finished
(scored with the penalty) and keeps the best K others alive. An input is done when its best
extension is EOS (OpenNMT-py's end condition) or at its length limit, where the best K extensions
are finished as they are. With K = 1 the best hypothesis is exactly greedy decoding's.

A model plugs in through a ``Decoder`` (the Transformer's: papers/transformer/decode.py; a decoder-only
LM continuing prompts: ``PromptDecoder``): it owns
its inputs (a padded source, retrieved passages, ...) and its incremental state (key/value caches);
the search sees only rows of N = B * copies hypotheses, row ``i * copies + j`` a copy of input i.
Hypotheses are token ids without BOS and EOS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from common.models.lm import CausalLM

Hypothesis = tuple[list[int], float]  # (token ids, score), best first in an n-best list


class Decoder(Protocol):
    device: torch.device

    def max_lengths(self, batch: Any) -> list[int]:
        """The most tokens (EOS included) each of the B inputs of ``batch`` may generate."""
        ...

    def start(self, batch: Any, copies: int = 1) -> Any:
        """The state of B * copies rows (each input repeated ``copies`` times), nothing decoded yet."""
        ...

    def step(self, tokens: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """tokens (N,) at the next position -> next-token log-probabilities (N, V) float32, new state."""
        ...

    def reorder(self, state: Any, index: torch.Tensor) -> Any:
        """Keep rows ``index`` (N,) of the state: beam search continues each survivor's parent."""
        ...


def length_penalty(length: int, alpha: float) -> float:
    """GNMT lp(Y) = ((5 + |Y|) / 6)^alpha."""
    return ((5 + length) / 6) ** alpha


def _strip(tokens: list[int], eos_id: int) -> list[int]:
    return tokens[: tokens.index(eos_id)] if eos_id in tokens else tokens


@torch.no_grad()
def greedy(decoder: Decoder, batch: Any, bos_id: int, eos_id: int) -> list[list[int]]:
    """The most probable next token until EOS or the input's length limit; token ids per input."""
    limits = decoder.max_lengths(batch)
    state = decoder.start(batch)
    limit = torch.tensor(limits, device=decoder.device)  # (B,)
    ys = torch.full((len(limits), 1), bos_id, dtype=torch.long, device=decoder.device)  # (B, t)
    finished = torch.zeros(len(limits), dtype=torch.bool, device=decoder.device)
    for t in range(max(limits)):
        log_probs, state = decoder.step(ys[:, -1], state)  # (B, V)
        nxt = log_probs.argmax(-1).masked_fill(finished, eos_id)  # (B,); finished rows only mark time
        ys = torch.cat([ys, nxt[:, None]], dim=1)
        finished |= (nxt == eos_id) | (limit <= t + 1)
        if finished.all():
            break
    return [_strip(row[:n], eos_id) for row, n in zip(ys[:, 1:].tolist(), limits)]


@torch.no_grad()
def beam_search(
    decoder: Decoder,
    batch: Any,
    bos_id: int,
    eos_id: int,
    beam_size: int = 4,
    alpha: float = 0.6,
    n_best: int | None = None,
) -> list[list[Hypothesis]]:
    """Per input, its finished hypotheses (at most ``n_best``, default all) as (tokens, score), best first."""
    limits = decoder.max_lengths(batch)
    b, k, device = len(limits), beam_size, decoder.device
    state = decoder.start(batch, copies=k)
    seqs = torch.full((b * k, 1), bos_id, dtype=torch.long, device=device)  # (B*K, t)
    scores = torch.zeros(b, k, device=device)  # log P of each live hypothesis
    scores[:, 1:] = float("-inf")  # all beams start identical: keep only the first
    finished: list[list[Hypothesis]] = [[] for _ in range(b)]
    done = [False] * b
    batch_idx = torch.arange(b, device=device)[:, None]
    for t in range(max(limits)):
        logp, state = decoder.step(seqs[:, -1], state)  # (B*K, V)
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
                    finished[i].append((tokens, step_scores[i][r] / penalty))
            done[i] = at_limit or step_toks[i][0] == eos_id
        if all(done):
            break
        # the best K extensions that did not end in EOS stay alive (at most K of 2K can be EOS)
        scores, keep = top_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1)  # (B, K)
        parent = top_beam.gather(1, keep)  # (B, K): the beam each survivor extends
        seqs = torch.cat([seqs.view(b, k, -1)[batch_idx, parent],
                          top_tok.gather(1, keep)[..., None]], dim=2).view(b * k, -1)  # fmt: skip
        state = decoder.reorder(state, (batch_idx * k + parent).view(-1))
    # a stable sort: among equal scores the hypothesis finished first stays first
    return [sorted(hyps, key=lambda hyp: hyp[1], reverse=True)[:n_best] for hyps in finished]


def _take_rows(state, index: torch.Tensor):
    """Rows ``index`` of every tensor of a (nested) decoding state."""
    if torch.is_tensor(state):
        return state.index_select(0, index)
    if isinstance(state, dict):
        return {k: _take_rows(v, index) for k, v in state.items()}
    if isinstance(state, (tuple, list)):
        return type(state)(_take_rows(v, index) for v in state)
    return state


class PromptDecoder:
    """The ``Decoder`` of a ``common.models.lm.CausalLM`` continuing B prompts of one length P, (B, P): the
    prompts are prefilled in one parallel pass, then one recurrent step per token, at most ``limit`` tokens
    (EOS included). The search's first token (its "BOS") follows the prompt, e.g. a separator."""

    def __init__(self, model: CausalLM, limit: int):
        self.model, self.limit = model, limit
        self.device = model.embed.weight.device

    def max_lengths(self, prompts: torch.Tensor) -> list[int]:
        return [self.limit] * prompts.shape[0]

    def start(self, prompts: torch.Tensor, copies: int = 1):
        prompts = prompts.repeat_interleave(copies, dim=0)
        return self.model.prefill(prompts, self.model.init_state(prompts.shape[0]))[1]

    def step(self, tokens: torch.Tensor, state):
        logits, state = self.model.step(tokens, state)  # (N, V)
        return logits.float().log_softmax(-1), state

    def reorder(self, state, index: torch.Tensor):
        return {**state, "layers": _take_rows(state["layers"], index)}
