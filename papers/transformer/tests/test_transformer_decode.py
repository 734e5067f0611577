"""Greedy decoding, beam search (Sec. 6.1) and the copy task sanity check."""

import pytest
import torch

from papers.transformer.data import BOS_ID, COPY_VOCAB, EOS_ID, copy_task_batch
from papers.transformer.decode import beam_search, greedy_decode, length_penalty
from papers.transformer.model import Transformer, TransformerConfig
from papers.transformer.training import paper_optimizer


def _random_model(**overrides):
    torch.manual_seed(0)
    cfg = TransformerConfig(
        **{**dict(vocab_size=13, d_model=16, n_heads=2, d_ff=32, n_layers=2), **overrides}
    )
    return Transformer(cfg).eval()


def _src():
    src = torch.randint(4, 13, (5, 6), generator=torch.Generator().manual_seed(1))
    src[3, 4:] = 0
    return src


@pytest.mark.parametrize(
    "overrides", [{}, {"positions": "learned", "max_len": 9}, {"norm_first": True}, {"n_heads": 1}]
)
def test_decode_step_equals_the_full_decoder(overrides):
    """The KV-cached step at position t gives the logits of ``decode`` at t, also after reordering rows."""
    model = _random_model(**overrides)
    src = _src()
    tgt_in = torch.randint(4, 13, (5, 7), generator=torch.Generator().manual_seed(2))
    tgt_in[:, 0] = BOS_ID
    memory, src_keep = model.encode(src)
    full = model.decode(tgt_in, memory, src_keep)  # (B, T, V)
    state = model.start_decoding(memory, src_keep)
    for t in range(tgt_in.shape[1]):
        logits, state = model.decode_step(tgt_in[:, t], state)
        torch.testing.assert_close(logits, full[:, t], rtol=1e-5, atol=1e-5)
    # reordering: rows of one sentence repeated, then a permutation of the copies
    rep = 3
    memory_r, keep_r = memory.repeat_interleave(rep, 0), src_keep.repeat_interleave(rep, 0)
    tgt_r = tgt_in.repeat_interleave(rep, 0)
    tgt_r[1::rep, 2] = 4  # copies differ from position 2 on
    state = model.start_decoding(memory_r, keep_r)
    for t in range(4):
        _, state = model.decode_step(tgt_r[:, t], state)
    order = torch.arange(5 * rep).view(5, rep).flip(1).reshape(-1)  # swap copies within each sentence
    state = model.reorder_decoding(state, order)
    logits, _ = model.decode_step(tgt_r[order, 4], state)
    expected = model.decode(tgt_r[order, :5], memory_r, keep_r)[:, -1]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_greedy_decode_equals_recomputing_the_prefix():
    model = _random_model()
    src = _src()
    memory, src_keep = model.encode(src)
    ys = torch.full((src.shape[0], 1), BOS_ID)
    for _ in range(10):  # the reference: the whole prefix through the decoder at every step
        ys = torch.cat([ys, model.decode(ys, memory, src_keep)[:, -1].argmax(-1, keepdim=True)], dim=1)
    expected = [row[: row.index(EOS_ID)] if EOS_ID in row else row for row in ys[:, 1:].tolist()]
    assert greedy_decode(model, src, BOS_ID, EOS_ID, max_len=10) == expected


def test_length_penalty_is_gnmt():
    assert length_penalty(1, 0.6) == 1.0
    assert length_penalty(7, 0.6) == pytest.approx(2.0**0.6)
    assert length_penalty(7, 0.0) == 1.0


@pytest.mark.parametrize("overrides", [{}, {"positions": "learned", "max_len": 9}])
def test_beam_one_equals_greedy(overrides):
    model = _random_model(**overrides)
    src = _src()
    greedy = greedy_decode(model, src, BOS_ID, EOS_ID, max_len=12)
    assert greedy == beam_search(model, src, BOS_ID, EOS_ID, beam_size=1, max_len=12)


def test_beam_search_returns_its_best_penalised_hypothesis():
    model = _random_model()
    src = _src()
    hyps = beam_search(model, src, BOS_ID, EOS_ID, beam_size=4, alpha=0.6, max_len=8)
    assert len(hyps) == src.shape[0]

    def score(i, tokens):  # log P(tokens + EOS | src_i) / lp, or without EOS at the length limit
        full = tokens + ([EOS_ID] if len(tokens) < 8 else [])
        tgt_in = torch.tensor([[BOS_ID] + full[:-1]])
        logp = model.logits(src[i : i + 1], tgt_in).log_softmax(-1)[0]
        return logp[torch.arange(len(full)), full].sum().item() / length_penalty(len(full), 0.6)

    greedy = greedy_decode(model, src, BOS_ID, EOS_ID, max_len=8)
    for i, (b, g) in enumerate(zip(hyps, greedy)):
        assert EOS_ID not in b and BOS_ID not in b
        assert score(i, b) >= score(i, g) - 1e-5  # here beam search never does worse than greedy


@pytest.mark.slow
def test_copy_task_is_learned_exactly():
    """A 2-layer d=32 model learns to copy 10 random symbols (Annotated Transformer's sanity check)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic whatever the machine's core count
    try:
        torch.manual_seed(0)
        cfg = TransformerConfig(
            vocab_size=COPY_VOCAB, d_model=32, n_heads=4, d_ff=64, n_layers=2, dropout=0.0
        )
        model = Transformer(cfg)
        opt, sched = paper_optimizer(model, cfg.d_model, warmup_steps=100, factor=0.5)
        for step in range(600):
            loss = model(copy_task_batch(step, 32, seed=0))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    test = copy_task_batch(0, 100, seed=1)  # unseen sequences
    expected = test["src"].tolist()
    assert greedy_decode(model, test["src"], BOS_ID, EOS_ID) == expected
    assert beam_search(model, test["src"][:20], BOS_ID, EOS_ID, beam_size=4) == expected[:20]
