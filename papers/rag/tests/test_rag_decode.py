"""RAG decoding (Sec. 2.5) on a tiny zoo Transformer in float64: RagTokenDecoder's steps are Eq. 2's mixture of
the teacher-forced generator (also after beam reordering), beam search scores are RAG-Token log-likelihoods, and
RAG-Sequence's Thorough Decoding scores candidates by Eq. 1, Fast Decoding from below."""

import pytest
import torch

from common.decoding import beam_search, greedy
from common.models import zoo
from papers.rag.decode import RagTokenDecoder, rag_sequence_decode
from papers.rag.marginal import rag_token_log_likelihood, rag_token_next_log_probs
from papers.rag.model import generator_logits, pad_rows

V, PAD, BOS, EOS = 12, 0, 1, 2
B, K, S, MAX_LEN = 2, 3, 5, 5


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    tiny = {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 1, "dropout": 0.0, "pad_id": PAD}
    model = zoo.build("transformer", tiny, vocab_size=V).double().eval()
    with torch.no_grad():  # a likelier EOS, so that some hypotheses end in it before MAX_LEN
        model.embed.weight[EOS] *= 1.8
    return model


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, V, (B, K, S), generator=g)
    src[1, 2, 3:] = PAD
    doc_scores = 2 * torch.randn(B, K, generator=g, dtype=torch.float64)
    return src, doc_scores


def teacher_forced(generator, src, doc_scores, hyps):
    """log p(y | x) of RAG-Token (Eq. 2) for one hypothesis per input, y + [eos] unless cut at MAX_LEN."""
    tgt_in = pad_rows([[BOS, *y][:MAX_LEN] for y in hyps], PAD)
    tgt_out = pad_rows([[*y, EOS][:MAX_LEN] for y in hyps], PAD)
    mask = torch.zeros_like(tgt_out, dtype=torch.bool)
    for row, y in enumerate(hyps):
        mask[row, : min(len(y) + 1, MAX_LEN)] = True
    logits = generator_logits(generator, src, tgt_in)
    return rag_token_log_likelihood(doc_scores, logits, tgt_out, mask)


def test_steps_are_the_teacher_forced_mixture_also_after_reordering(generator):
    src, doc_scores = inputs()
    decoder = RagTokenDecoder(generator, MAX_LEN)
    copies = 2
    tgt_in = torch.randint(3, V, (B * copies, 4), generator=torch.Generator().manual_seed(1))
    tgt_in[:, 0] = BOS
    rows = torch.arange(B).repeat_interleave(copies)
    expected = rag_token_next_log_probs(
        doc_scores[rows], generator_logits(generator, src[rows], tgt_in)
    )  # (B*copies, T, V)
    state = decoder.start((src, doc_scores), copies=copies)
    swap = torch.arange(B * copies).view(B, copies).flip(1).reshape(-1)  # exchange the copies of each input
    for t in range(tgt_in.shape[1]):
        if t == 2:  # beam search continues each survivor's parent: the rows' histories swap with them
            state, tgt_in, expected = decoder.reorder(state, swap), tgt_in[swap], expected[swap]
        log_probs, state = decoder.step(tgt_in[:, t], state)
        assert log_probs.dtype == torch.float32
        torch.testing.assert_close(log_probs, expected[:, t].float(), rtol=0, atol=1e-5)


def test_beam_scores_are_rag_token_log_likelihoods(generator):
    src, doc_scores = inputs(seed=1)
    decoder = RagTokenDecoder(generator, MAX_LEN)
    n_best = beam_search(decoder, (src, doc_scores), BOS, EOS, beam_size=3, alpha=0.0)
    assert any(len(y) < MAX_LEN for hyps in n_best for y, _ in hyps)  # some end in EOS, some at MAX_LEN
    for rank in range(3):
        hyps = [hyps[rank][0] for hyps in n_best]
        scores = torch.tensor([hyps[rank][1] for hyps in n_best], dtype=torch.float64)
        torch.testing.assert_close(
            scores, teacher_forced(generator, src, doc_scores, hyps), rtol=0, atol=1e-5
        )
    best = [hyps[0][0] for hyps in beam_search(decoder, (src, doc_scores), BOS, EOS, beam_size=1)]
    assert best == greedy(decoder, (src, doc_scores), BOS, EOS)


def test_rag_sequence_thorough_and_fast_decoding(generator):
    src, doc_scores = inputs(seed=2)
    thorough = rag_sequence_decode(generator, src, doc_scores, BOS, EOS, MAX_LEN, beam_size=2)
    fast = rag_sequence_decode(generator, src, doc_scores, BOS, EOS, MAX_LEN, beam_size=2, fast=True)
    for exact, approx in zip(thorough, fast):
        assert [s for _, s in exact] == sorted((s for _, s in exact), reverse=True)
        assert sorted(y for y, _ in exact) == sorted(y for y, _ in approx)  # the union of the K beams
        assert 2 < len(exact) <= 2 * K  # the beams of different documents differ here
        approx_of = {tuple(y): s for y, s in approx}
        # Fast Decoding drops the documents whose beam missed y: a lower bound of Eq. 1
        assert all(approx_of[tuple(y)] <= s + 1e-6 for y, s in exact)
        assert any(approx_of[tuple(y)] < s - 1e-3 for y, s in exact)


def test_one_document_makes_both_variants_plain_beam_search(generator):
    src, doc_scores = inputs(seed=3)
    src, doc_scores = src[:, :1], doc_scores[:, :1]
    token = beam_search(
        RagTokenDecoder(generator, MAX_LEN), (src, doc_scores), BOS, EOS, beam_size=2, alpha=0.0
    )
    for fast in (False, True):
        sequence = rag_sequence_decode(generator, src, doc_scores, BOS, EOS, MAX_LEN, beam_size=2, fast=fast)
        for a, b in zip(token, sequence):
            assert [y for y, _ in a] == [y for y, _ in b]
            torch.testing.assert_close(
                torch.tensor([s for _, s in a]), torch.tensor([s for _, s in b]), rtol=0, atol=1e-5
            )
