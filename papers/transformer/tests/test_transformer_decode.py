"""Greedy decoding and beam search (Sec. 6.1; common.decoding via TransformerDecoder), the copy task."""

import pytest
import torch

from common.config import Optimizer, Schedule, TrainConfig
from common.decoding import beam_search, greedy, length_penalty
from common.train import build_optimizer, build_scheduler
from papers.transformer.data import BOS_ID, COPY_VOCAB, EOS_ID, copy_task_batch
from papers.transformer.decode import TransformerDecoder
from papers.transformer.model import Transformer, TransformerConfig


def _random_model(**overrides):
    torch.manual_seed(0)
    cfg = TransformerConfig(
        **{**dict(vocab_size=13, d_model=16, n_heads=2, d_ff=32, n_layers=2), **overrides}
    )
    return Transformer(cfg).eval()


def greedy_decode(model, src, max_len=None):
    return greedy(TransformerDecoder(model, max_len), src, BOS_ID, EOS_ID)


def best_of_beam(model, src, beam_size, alpha=0.6, max_len=None):
    n_best = beam_search(TransformerDecoder(model, max_len), src, BOS_ID, EOS_ID, beam_size, alpha)
    return [hyps[0][0] for hyps in n_best]


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
    assert greedy_decode(model, src, max_len=10) == expected


def test_length_penalty_is_gnmt():
    assert length_penalty(1, 0.6) == 1.0
    assert length_penalty(7, 0.6) == pytest.approx(2.0**0.6)
    assert length_penalty(7, 0.0) == 1.0


@pytest.mark.parametrize("overrides", [{}, {"positions": "learned", "max_len": 9}])
def test_beam_one_equals_greedy(overrides):
    model = _random_model(**overrides)
    src = _src()
    assert greedy_decode(model, src, max_len=12) == best_of_beam(model, src, 1, max_len=12)


def test_beam_search_returns_scored_n_best_lists():
    model = _random_model()
    src = _src()
    n_best = beam_search(TransformerDecoder(model, max_len=8), src, BOS_ID, EOS_ID, beam_size=4, alpha=0.6)
    assert len(n_best) == src.shape[0]

    def score(i, tokens):  # log P(tokens + EOS | src_i) / lp, or without EOS at the length limit
        full = tokens + ([EOS_ID] if len(tokens) < 8 else [])
        tgt_in = torch.tensor([[BOS_ID] + full[:-1]])
        logp = model.logits(src[i : i + 1], tgt_in).log_softmax(-1)[0]
        return logp[torch.arange(len(full)), full].sum().item() / length_penalty(len(full), 0.6)

    greedy_hyps = greedy_decode(model, src, max_len=8)
    for i, (hyps, g) in enumerate(zip(n_best, greedy_hyps)):
        assert len(hyps) >= 1 and [s for _, s in hyps] == sorted((s for _, s in hyps), reverse=True)
        for tokens, s in hyps:  # each score is the hypothesis's penalised log-probability
            assert EOS_ID not in tokens and BOS_ID not in tokens
            assert s == pytest.approx(score(i, tokens), abs=1e-5)
        assert hyps[0][1] >= score(i, g) - 1e-5  # here beam search never does worse than greedy
    top2 = beam_search(TransformerDecoder(model, max_len=8), src, BOS_ID, EOS_ID, 4, 0.6, n_best=2)
    assert top2 == [hyps[:2] for hyps in n_best]


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
        train_cfg = TrainConfig(optimizer=Optimizer.adam, beta2=0.98, eps=1e-9, weight_decay=0.0, lr=0.5,
                                schedule=Schedule.noam, noam_d_model=cfg.d_model, warmup_steps=100)  # fmt: skip
        opt = build_optimizer(model, train_cfg, torch.device("cpu"))  # Sec. 5.3: Adam, Eq. 3
        sched = build_scheduler(opt, train_cfg)
        # exact on all 100 test sequences from step 225 on an Intel Xeon (torch 2.13.0 CPU, 1 thread), but 99 of
        # 100 at step 300 on an AMD EPYC: twice the steps, so that the test holds on either CPU
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
    assert greedy_decode(model, test["src"]) == expected
    assert best_of_beam(model, test["src"][:20], 4) == expected[:20]
