"""RAG-Sequence (Eq. 1) and RAG-Token (Eq. 2): the vectorised marginals against the per-example loops (values
and gradients wrt doc scores and logits, float64), limiting cases, and parity with Hugging Face transformers'
RagSequenceForGeneration.get_nll and RagTokenForGeneration.marginalize / get_nll on a tiny random RagConfig."""

import pytest
import torch

from common.errors import PaperzooError
from papers.rag.marginal import (
    rag_sequence_log_likelihood,
    rag_sequence_log_likelihood_ref,
    rag_sequence_nll,
    rag_token_log_likelihood,
    rag_token_log_likelihood_ref,
    rag_token_next_log_probs,
    rag_token_nll,
)

B, K, T, V = 3, 4, 6, 11
TOL = 1e-10


def make_inputs(seed=0, pad_tail=(0, 2, 4)):
    """Scores (B, K), logits (B, K, T, V) with grad, targets (B, T) and a mask with pad_tail[b] padded positions."""
    g = torch.Generator().manual_seed(seed)
    scores = (2 * torch.randn(B, K, generator=g, dtype=torch.float64)).requires_grad_()
    logits = (3 * torch.randn(B, K, T, V, generator=g, dtype=torch.float64)).requires_grad_()
    target = torch.randint(0, V, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    for b, n in enumerate(pad_tail):
        mask[b, T - n :] = False
    return scores, logits, target, mask


@pytest.mark.parametrize(
    "fast, ref",
    [
        (rag_sequence_log_likelihood, rag_sequence_log_likelihood_ref),
        (rag_token_log_likelihood, rag_token_log_likelihood_ref),
    ],
    ids=["sequence", "token"],
)
def test_fast_path_matches_reference_values_and_gradients(fast, ref):
    scores, logits, target, mask = make_inputs()
    weights = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float64)  # distinct per-example weights
    outs, grads = [], []
    for fn in (fast, ref):
        out = fn(scores, logits, target, mask)  # (B,)
        outs.append(out)
        grads.append(torch.autograd.grad((out * weights).sum(), (scores, logits)))
    assert outs[0].shape == (B,)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=TOL)
    for g_fast, g_ref in zip(*grads):
        torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=TOL)
    assert grads[0][1][2, :, T - 4 :].abs().max() == 0  # padded positions get no gradient


def test_losses_are_the_batch_mean_of_the_sequence_nll():
    scores, logits, target, mask = make_inputs()
    seq = rag_sequence_log_likelihood(scores, logits, target, mask)
    tok = rag_token_log_likelihood(scores, logits, target, mask)
    torch.testing.assert_close(rag_sequence_nll(scores, logits, target, mask), -seq.mean(), rtol=0, atol=TOL)
    torch.testing.assert_close(rag_token_nll(scores, logits, target, mask), -tok.mean(), rtol=0, atol=TOL)


def test_doc_score_gradient_is_prior_minus_posterior():
    """What trains the retriever (Sec. 2.4): d(-log p(y|x)) / d score_z = p(z|x) - p(z|x,y) for RAG-Sequence,
    summed over positions of p(z|x) - p(z|x,y_<=t's token) for RAG-Token; divided by B for the batch mean."""
    scores, logits, target, mask = make_inputs(seed=4)
    index = target[:, None, :, None].expand(-1, K, -1, 1)
    token = torch.where(
        mask[:, None], logits.log_softmax(-1).gather(-1, index)[..., 0], 0
    ).detach()  # (B, K, T)
    prior = scores.detach().softmax(-1)  # (B, K)
    posterior = (prior.log() + token.sum(-1)).softmax(-1)  # (B, K)
    grad = torch.autograd.grad(rag_sequence_nll(scores, logits, target, mask), scores)[0]
    torch.testing.assert_close(grad, (prior - posterior) / B, rtol=0, atol=TOL)
    per_token = (prior.log()[:, :, None] + token).softmax(1)  # (B, K, T): p(z | x, y_t)
    expected = ((prior[:, :, None] - per_token) * mask[:, None]).sum(-1) / B
    grad = torch.autograd.grad(rag_token_nll(scores, logits, target, mask), scores)[0]
    torch.testing.assert_close(grad, expected, rtol=0, atol=TOL)


def test_limiting_cases():
    """One document: both are the generator's plain log-likelihood. Documents that all give the same
    generator distribution: both equal it too, whatever the prior. Otherwise they differ."""
    scores, logits, target, mask = make_inputs(seed=1)
    index = target[:, None, :, None].expand(-1, K, -1, 1)
    plain = torch.where(mask[:, None], logits.log_softmax(-1).gather(-1, index)[..., 0], 0).sum(-1)  # (B, K)
    for fn in (rag_sequence_log_likelihood, rag_token_log_likelihood):
        one_doc = fn(scores[:, :1], logits[:, :1], target, mask)
        torch.testing.assert_close(one_doc, plain[:, 0], rtol=0, atol=TOL)
        same = fn(scores, logits[:, :1].expand(-1, K, -1, -1), target, mask)
        torch.testing.assert_close(same, plain[:, 0], rtol=0, atol=TOL)
    seq = rag_sequence_log_likelihood(scores, logits, target, mask)
    tok = rag_token_log_likelihood(scores, logits, target, mask)
    assert (seq - tok).abs().min() > 1e-3


def test_token_mixture_is_a_distribution():
    scores, logits, _, _ = make_inputs(seed=2)
    mixture = rag_token_next_log_probs(scores, logits)  # (B, T, V)
    assert mixture.shape == (B, T, V)
    torch.testing.assert_close(mixture.exp().sum(-1), torch.ones(B, T, dtype=torch.float64), rtol=0, atol=TOL)
    step = rag_token_next_log_probs(scores, logits[:, :, 0])  # (B, K, V) -> (B, V): one decoding step
    torch.testing.assert_close(step, mixture[:, 0], rtol=0, atol=TOL)


def test_bad_shapes_are_one_line_errors():
    scores, logits, target, mask = make_inputs()
    with pytest.raises(PaperzooError, match=r"logits must be \(B, K, T, V\)"):
        rag_sequence_nll(scores, logits[:, :2], target, mask)
    with pytest.raises(PaperzooError, match=r"target and mask must be \(B, T\)"):
        rag_token_nll(scores, logits, target[:, :3], mask[:, :3])
    with pytest.raises(PaperzooError, match="mask must be a bool tensor"):
        rag_token_nll(scores, logits, target, mask.long())


# ---- parity with transformers ---------------------------------------------------------------------------------

PAD = 1  # BART's pad id


@pytest.fixture(scope="module")
def hf_rag():
    """RagSequenceForGeneration and RagTokenForGeneration of a tiny random RagConfig (DPR question encoder, BART
    generator, vocab V, n_docs K), built from configs only: no download, no retriever."""
    transformers = pytest.importorskip("transformers")
    question_encoder = transformers.DPRConfig(
        vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=16,
    )  # fmt: skip
    generator = transformers.BartConfig(
        vocab_size=V, d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16, max_position_embeddings=16,
        bos_token_id=0, pad_token_id=PAD, eos_token_id=2, decoder_start_token_id=2,
    )  # fmt: skip
    config = transformers.RagConfig(
        question_encoder=question_encoder.to_dict(), generator=generator.to_dict(), n_docs=K,
        label_smoothing=0.0, reduce_loss=False, exclude_bos_score=False,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.RagSequenceForGeneration(config), transformers.RagTokenForGeneration(config)


def hf_inputs(seed=3):
    """HF's view of one batch: ``labels`` (B, T + 1) are also the decoder inputs, so the logits at position t
    predict labels[:, t + 1]; HF's get_nll shifts the labels left by one and appends a pad. Ours take that shifted
    target and mask = (target != pad) explicitly. Each row keeps at least two real tokens after the shift: HF's
    RAG-Sequence adds log p(z | x) at position 1 (so that exclude_bos_score can drop position 0), so a row whose
    position 1 is padding would lose the document prior there, a corner case we do not reproduce."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(3, V, (B, T + 1), generator=g)  # real tokens never equal pad, bos or eos
    labels[0, 0] = 0  # a BOS in one row only: HF's use_bos is False, exclude_bos_score would not apply anyway
    labels[1, 5:] = PAD
    labels[2, 3:] = PAD
    seq_logits = 3 * torch.randn(B * K, T + 1, V, generator=g, dtype=torch.float64)  # HF: (B * n_docs, ., V)
    doc_scores = 2 * torch.randn(B, K, generator=g, dtype=torch.float64)
    target = torch.cat([labels[:, 1:], torch.full((B, 1), PAD)], dim=1)  # (B, T + 1), HF's left shift
    return labels, seq_logits, doc_scores, target, target != PAD


def test_rag_sequence_matches_transformers_get_nll(hf_rag):
    labels, seq_logits, doc_scores, target, mask = hf_inputs()
    hf = hf_rag[0].get_nll(seq_logits, doc_scores, labels, reduce_loss=False, epsilon=0.0, n_docs=K)  # (B,)
    ours = rag_sequence_log_likelihood(doc_scores, seq_logits.view(B, K, T + 1, V), target, mask)
    assert (ours + hf).abs().max() <= 1e-6
    loss = rag_sequence_nll(doc_scores, seq_logits.view(B, K, T + 1, V), target, mask)
    assert abs(float(loss) - float(hf.mean())) <= 1e-6


def test_rag_token_matches_transformers_marginalize_and_get_nll(hf_rag):
    labels, seq_logits, doc_scores, target, mask = hf_inputs()
    hf_mixture = hf_rag[1].marginalize(seq_logits, doc_scores, n_docs=K)  # (B, T + 1, V)
    ours_mixture = rag_token_next_log_probs(doc_scores, seq_logits.view(B, K, T + 1, V))
    assert (ours_mixture - hf_mixture).abs().max() <= 1e-6
    hf = hf_rag[1].get_nll(seq_logits, doc_scores, labels, reduce_loss=False, epsilon=0.0, n_docs=K)  # (B,)
    ours = rag_token_log_likelihood(doc_scores, seq_logits.view(B, K, T + 1, V), target, mask)
    assert (ours + hf).abs().max() <= 1e-6
    loss = rag_token_nll(doc_scores, seq_logits.view(B, K, T + 1, V), target, mask)
    assert abs(float(loss) - float(hf.mean())) <= 1e-6
