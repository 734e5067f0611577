"""The generator side of RAG on a tiny zoo Transformer: [x ; sep ; z] inputs, one generator pass per (input,
document) pair with no leak through padding, the RAG-Sequence / RAG-Token loss and its gradients."""

import pytest
import torch

from common.errors import PaperzooError
from common.models import zoo
from papers.rag.marginal import rag_sequence_nll, rag_token_nll
from papers.rag.model import generator_logits, join_inputs, pad_rows, rag_loss

V, PAD, BOS, EOS, SEP = 12, 0, 1, 2, 3
TINY = {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 1, "dropout": 0.0, "pad_id": PAD}


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return zoo.build("transformer", TINY, vocab_size=V).double().eval()


def batch():
    """Two questions with three passages each (ragged lengths), targets [bos] + y and y + [eos]."""
    questions = [[4, 5, 6], [7, 8]]
    passages = [[[9, 10], [11, 4, 5, 6, 7], [8]], [[5, 5, 5], [6], [10, 11, 9, 8]]]
    src = join_inputs(questions, passages, SEP, PAD, max_len=7)
    ys = [[6, 7, 8], [9]]
    tgt_in = pad_rows([[BOS, *y] for y in ys], PAD)
    tgt_out = pad_rows([[*y, EOS] for y in ys], PAD)
    doc_scores = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.5, -0.5]], dtype=torch.float64, requires_grad=True)
    return src, doc_scores, tgt_in, tgt_out


def test_join_inputs_puts_the_question_first_and_cuts_the_passage():
    src = batch()[0]
    assert src.shape == (2, 3, 7)
    assert src[0, 1].tolist() == [4, 5, 6, SEP, 11, 4, 5]  # cut at max_len from the passage's end
    assert src[1, 1].tolist() == [7, 8, SEP, 6, PAD, PAD, PAD]
    with pytest.raises(PaperzooError, match="the same number K of passages"):
        join_inputs([[4], [5]], [[[6]], [[7], [8]]], SEP, PAD, max_len=7)


def test_generator_runs_once_per_document_without_leaks(generator):
    src, _, tgt_in, _ = batch()
    logits = generator_logits(generator, src, tgt_in)  # (B, K, T, V)
    assert logits.shape == (2, 3, 4, V)
    for b in range(2):
        length = int((tgt_in[b] != PAD).sum())
        for z in range(3):
            alone = src[b, z][src[b, z] != PAD][None]  # the pair on its own, unpadded
            expected = generator.logits(alone, tgt_in[b, :length][None])[0]
            torch.testing.assert_close(logits[b, z, :length], expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("variant, nll", [("sequence", rag_sequence_nll), ("token", rag_token_nll)])
def test_rag_loss_is_the_marginal_nll_and_trains_both_sides(generator, variant, nll):
    src, doc_scores, tgt_in, tgt_out = batch()
    loss = rag_loss(generator, src, doc_scores, tgt_in, tgt_out, variant)
    expected = nll(doc_scores, generator_logits(generator, src, tgt_in), tgt_out, tgt_out != PAD)
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    generator.zero_grad(set_to_none=True)
    grad_scores = torch.autograd.grad(loss, doc_scores, retain_graph=True)[0]
    loss.backward()
    assert grad_scores.abs().min() > 0  # every retrieved document's score is trained
    assert generator.embed.weight.grad.abs().sum() > 0
    generator.zero_grad(set_to_none=True)


def test_unknown_variant_is_a_one_line_error(generator):
    with pytest.raises(PaperzooError, match="unknown RAG variant 'mixture'"):
        rag_loss(generator, *batch(), variant="mixture")
