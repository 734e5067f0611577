"""MQAR and the group word problems of common.data.synthetic: layout, a slow reference, the group axioms,
argument errors, and evaluate() with an oracle (accuracy 1), a guesser (about chance) and a tiny GPT."""

import itertools

import pytest
import torch
from torch import nn

from common.data.synthetic import (
    IGNORE_INDEX,
    MQAR,
    PAD,
    StateTracking,
    compose,
    generator,
    group_elements,
    group_word_problem,
    mqar,
    multiplication_table,
    running_product,
    running_product_reference,
)
from common.models import zoo
from common.models.gpt import GPTConfig


class Stub(nn.Module):
    """A model whose logits are one-hot of ``predict(idx)``: (B, L) -> (B, L, V)."""

    def __init__(self, vocab, predict):
        super().__init__()
        self.vocab, self.predict = vocab, predict

    def logits(self, idx):
        return nn.functional.one_hot(self.predict(idx), self.vocab).float()


def _tiny_gpt(vocab, block_size):
    torch.manual_seed(0)
    return zoo.build("gpt", GPTConfig(vocab, block_size, n_layers=1, n_heads=2, d_model=16))


# ---- MQAR ------------------------------------------------------------------------------------------
def test_mqar_is_pure_in_seed_split_index():
    task = MQAR(length=64, n_pairs=8, vocab=128)
    a, b = task.batch("train", 3, 16, 0), task.batch("train", 3, 16, 0)
    assert torch.equal(a["idx"], b["idx"]) and torch.equal(a["targets"], b["targets"])
    for other in (task.batch("train", 4, 16, 0), task.batch("val", 3, 16, 0), task.batch("train", 3, 16, 1)):
        assert not torch.equal(a["idx"], other["idx"])


@pytest.mark.parametrize("n_queries", [None, 3])
def test_mqar_layout(n_queries):
    length, n, vocab = 50, 8, 40  # odd leftover (50 - 16 = 34 = 17 slots of 2): the last token is PAD
    idx, targets = mqar(generator(0, "train", 0), 64, length, n, vocab, n_queries)
    q = n if n_queries is None else n_queries
    assert idx.shape == targets.shape == (64, length) and idx.dtype == targets.dtype == torch.long
    keys, values = idx[:, 0 : 2 * n : 2], idx[:, 1 : 2 * n : 2]
    assert ((keys >= 1) & (keys < vocab // 2)).all() and ((values >= vocab // 2) & (values < vocab)).all()
    for row in range(64):
        k, v = keys[row].tolist(), values[row].tolist()
        assert len(set(k)) == n and len(set(v)) == n  # distinct within the sequence
        scored = (targets[row] != IGNORE_INDEX).nonzero().flatten().tolist()
        assert len(scored) == q and all(t >= 2 * n and (t - 2 * n) % 2 == 0 for t in scored)
        asked = [idx[row, t].item() for t in scored]
        assert len(set(asked)) == q and set(asked) <= set(k)  # distinct keys of this sequence
        for t, key in zip(scored, asked, strict=True):
            assert targets[row, t].item() == v[k.index(key)]  # the value paired with that key
        rest = torch.ones(length, dtype=torch.bool)
        rest[: 2 * n], rest[scored] = False, False
        assert (idx[row, rest] == PAD).all() and (targets[row, : 2 * n] == IGNORE_INDEX).all()
    # the queries land all over the query region, in random order
    assert (targets[:, -2] != IGNORE_INDEX).any() and (targets[:, 2 * n] != IGNORE_INDEX).any()
    assert (idx[:, -1] == PAD).all()


def test_mqar_argument_errors_are_clear():
    with pytest.raises(ValueError, match=r"need vocab >= 2 \* n_pairs \+ 2 = 18"):
        MQAR(length=64, n_pairs=8, vocab=17)
    with pytest.raises(ValueError, match=r"need length >= 2 \* n_pairs \+ 2 \* n_queries = 32"):
        MQAR(length=31, n_pairs=8, vocab=64)
    with pytest.raises(ValueError, match="n_queries <= n_pairs"):
        MQAR(length=64, n_pairs=4, vocab=64, n_queries=5)
    MQAR(length=32, n_pairs=8, vocab=18)  # the bounds themselves are fine
    assert mqar(generator(0, "train", 0), 4, 32, 8, 18)[1].ne(IGNORE_INDEX).sum() == 32


def _recall(idx, n):
    """The MQAR oracle: at each position after the context, the value of the key there (PAD otherwise)."""
    keys, values = idx[:, 0 : 2 * n : 2], idx[:, 1 : 2 * n : 2]  # (B, n)
    hit = idx[:, :, None] == keys[:, None, :]  # (B, L, n)
    return (hit.long() * values[:, None, :]).sum(-1)  # (B, L)


def test_mqar_evaluate_oracle_guesser_and_tiny_gpt():
    task = MQAR(length=64, n_pairs=8, vocab=64, test_size=256, max_eval_tokens=4096)  # 4 slices
    assert task.evaluate(Stub(64, lambda idx: _recall(idx, 8)), "cpu") == {"test/acc": 1.0}
    guess = Stub(64, lambda idx: torch.randint(32, 64, idx.shape, generator=torch.Generator().manual_seed(0)))
    assert task.evaluate(guess, "cpu")["test/acc"] < 0.1  # chance 1/32
    metrics = task.evaluate(_tiny_gpt(task.vocab_size, 64), "cpu")
    assert set(metrics) == {"test/acc"} and 0.0 <= metrics["test/acc"] <= 1.0


# ---- state tracking ----------------------------------------------------------------------------------
def test_group_elements_and_the_s3_table_is_a_group():
    sizes = {name: len(group_elements(name)) for name in ("parity", "S3", "S5", "A5")}
    assert sizes == {"parity": 2, "S3": 6, "S5": 120, "A5": 60}
    for name in sizes:
        assert group_elements(name)[0] == tuple(range(len(group_elements(name)[0])))  # identity = token 0
    s5 = set(group_elements("S5"))
    a5 = set(group_elements("A5"))
    assert (
        a5 < s5 and (1, 0, 2, 3, 4) not in a5 and compose((1, 0, 2, 3, 4), (0, 2, 1, 3, 4)) in a5
    )  # even only
    assert compose((1, 2, 0), (1, 0, 2)) == (2, 1, 0)  # (a ∘ b)[i] = a[b[i]]: b first

    table, G = multiplication_table(group_elements("S3")), range(6)
    assert (table[0] == torch.arange(6)).all() and (table[:, 0] == torch.arange(6)).all()  # identity
    assert all((table[a] == 0).sum() == 1 for a in G)  # every element has an inverse
    assert all(
        sorted(table[a].tolist()) == list(G) == sorted(table[:, a].tolist()) for a in G
    )  # Latin square
    assert all(table[table[a, b], c] == table[a, table[b, c]] for a, b, c in itertools.product(G, G, G))
    assert not torch.equal(table, table.T)  # non-abelian: the order of composition matters
    assert torch.equal(multiplication_table(group_elements("parity")), torch.tensor([[0, 1], [1, 0]]))


@pytest.mark.parametrize("group", ["S3", "S5", "A5"])
def test_states_are_the_composition_of_the_tokens(group):
    task = StateTracking(group, length=40)
    batch = task.batch("train", 0, 4, 0)
    elements = group_elements(group)
    assert batch["idx"].shape == batch["targets"].shape == (4, 40) and task.vocab_size == len(elements)
    for tokens, states in zip(batch["idx"].tolist(), batch["targets"].tolist(), strict=True):
        state = elements[0]  # the identity
        for token, target in zip(tokens, states, strict=True):
            state = compose(state, elements[token])  # s_t = s_{t-1} ∘ g_t
            assert elements[target] == state


def test_parity_is_the_cumulative_sum_mod_2():
    batch = StateTracking("parity", length=300).batch("train", 7, 32, 0)
    assert set(batch["idx"].unique().tolist()) == {0, 1}
    assert torch.equal(batch["targets"], batch["idx"].cumsum(1) % 2)


@pytest.mark.parametrize("length", [1, 2, 5, 64, 1000])
def test_prefix_scan_equals_the_loop(length):
    table = multiplication_table(group_elements("S5"))
    idx, states = group_word_problem(generator(0, "train", length), 8, length, table)
    assert torch.equal(states, running_product_reference(idx, table))
    assert torch.equal(running_product(idx, table), states)


def test_state_tracking_is_pure_and_argument_errors_are_clear():
    task = StateTracking("A5", length=16)
    assert torch.equal(task.batch("val", 2, 8, 5)["idx"], task.batch("val", 2, 8, 5)["idx"])
    assert not torch.equal(task.batch("val", 2, 8, 5)["idx"], task.batch("val", 3, 8, 5)["idx"])
    with pytest.raises(ValueError, match="unknown group 'S4'; choose one of parity, S3, S5, A5"):
        StateTracking("S4", length=16)
    with pytest.raises(ValueError, match="lengths must be >= 1"):
        StateTracking("S3", length=16, test_lengths=(0,))


def test_state_tracking_evaluate_oracle_guesser_and_tiny_gpt():
    task = StateTracking("S5", length=32, test_lengths=(16, 64), test_size=64, max_eval_tokens=1024)
    keys = {"acc/L16", "acc/L32", "acc/L64", "test/acc", "test/seq_acc"}
    oracle = Stub(120, lambda idx: running_product_reference(idx, task.table))
    assert task.evaluate(oracle, "cpu") == dict.fromkeys(keys, 1.0)
    last = task.evaluate(Stub(120, lambda idx: idx), "cpu")  # the current token: right only at t = 0
    assert set(last) == keys and abs(last["acc/L32"] - 1 / 32) < 0.02 and last["test/seq_acc"] == 0.0
    assert last["test/acc"] == last["acc/L32"]
    metrics = task.evaluate(_tiny_gpt(task.vocab_size, 64), "cpu")
    assert set(metrics) == keys and all(0.0 <= v <= 1.0 for v in metrics.values())
    parity = StateTracking("parity", length=64).evaluate(Stub(2, lambda idx: idx), "cpu")
    assert abs(parity["test/acc"] - 0.5) < 0.05  # the current bit is the parity half the time
