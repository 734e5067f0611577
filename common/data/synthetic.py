"""Seeded, deterministic synthetic tasks, generated in code (no files, no downloads).

Every generator is a pure function of ``(seed, split, index)``: batch ``index`` of a run is the
same whether the run was interrupted or not, on one process or on many. Papers add their own
generators here when more than one paper uses them.

Tasks
    selective_copying   Gu & Dao 2023 (Mamba), Sec. 4.1.1 / App. E.1: memorise the data tokens
                        scattered among noise tokens, output them in order after the markers.
    induction_heads     Olsson et al. 2022; Mamba Sec. 4.1.2: after "... k v ... k", predict v.
    mqar                Arora et al. 2023 (Zoology, arXiv 2312.04927), Sec. 3: multi-query associative
                        recall. ``k1 v1 k2 v2 ... kn vn`` then the queried keys at random positions; at
                        each query key the model predicts that key's value; ``MQARByPairs`` trains and
                        tests over several numbers of pairs.
    group_word_problem  State tracking (Merrill et al. 2024, "The Illusion of State", arXiv 2404.08819;
                        RWKV-7, arXiv 2503.14456): tokens g_1 .. g_L of a finite group G; at every position
                        t the target is the running product s_t = g_1 g_2 ... g_t. Groups: parity (Z_2),
                        S3, S5 and A5 (the smallest non-solvable group: its word problem is NC^1-complete).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import torch

from common.claims import TRIALS

IGNORE_INDEX = -100
SPLITS = {"train": 0, "val": 1, "test": 2}


def generator(seed: int, split: str, index: int) -> torch.Generator:
    """A torch.Generator determined by (seed, split, index) and nothing else."""
    digest = hashlib.blake2b(f"{seed}/{SPLITS.get(split, split)}/{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


# ---- selective copying -----------------------------------------------------------------------
NOISE, MARKER = 0, 1  # selective copying: data tokens are 2 .. vocab-1


def selective_copying(g: torch.Generator, batch_size: int, n_ctx: int, n_data: int = 16, vocab: int = 16):
    """(idx, targets), each (B, n_ctx + n_data).

    The context holds ``n_data`` data tokens at random positions among noise tokens; then come
    ``n_data`` marker tokens, at which the model must emit the data tokens in order. Only those
    positions carry a target; the rest are IGNORE_INDEX.
    """
    positions = (
        torch.rand(batch_size, n_ctx, generator=g).argsort(dim=1)[:, :n_data].sort(dim=1).values
    )  # (B, n)
    tokens = torch.randint(2, vocab, (batch_size, n_data), generator=g)  # (B, n)
    context = torch.full((batch_size, n_ctx), NOISE).scatter_(1, positions, tokens)  # (B, n_ctx)
    idx = torch.cat([context, torch.full((batch_size, n_data), MARKER)], dim=1)  # (B, n_ctx + n)
    targets = torch.full_like(idx, IGNORE_INDEX)
    targets[:, n_ctx:] = tokens
    return idx, targets


def induction_heads(
    g: torch.Generator, batch_size: int, length: int, vocab: int = 16, first_before: int | None = None
):
    """(idx, targets), each (B, length): random tokens with a trigger token (vocab - 1) placed once,
    followed by a value; the sequence ends with the trigger again and the target is that value.

    The first trigger lies anywhere before position ``length - 2``, or before ``first_before`` when
    given: a small value puts the two triggers far apart in every sequence."""
    trigger = vocab - 1
    idx = torch.randint(0, trigger, (batch_size, length), generator=g)  # (B, L), no trigger yet
    first = torch.randint(0, min(first_before or length - 2, length - 2), (batch_size,), generator=g)  # (B,)
    rows = torch.arange(batch_size)
    idx[rows, first] = trigger
    idx[:, -1] = trigger
    targets = torch.full_like(idx, IGNORE_INDEX)
    targets[:, -1] = idx[rows, first + 1]
    return idx, targets


def _accuracy(model, idx: torch.Tensor, targets: torch.Tensor, device, max_tokens: int) -> tuple[int, int]:
    """(correct, total) over target positions, in slices of at most ``max_tokens`` tokens."""
    last_only = not (targets[:, :-1] != IGNORE_INDEX).any()  # keep the (b, L, V) logits small
    pred = _predictions(model, idx, device, max_tokens, last_only)
    targets = targets[:, -1:] if last_only else targets
    mask = targets != IGNORE_INDEX
    return int((pred == targets)[mask].sum()), int(mask.sum())


def eval_sequences(length: int, test_size: int, max_eval_tokens: int, floor: int = 16) -> int:
    """Sequences tested at ``length``: ``test_size``, cut to 2 slices of ``max_eval_tokens`` at long lengths
    but never below ``floor`` (then more slices). Each sequence is one Bernoulli trial: n correct of n bounds
    the accuracy below by the Wilson 95% interval, 80.6% for n = 16, 94.3% for n = 64."""
    return max(floor, min(test_size, 2 * max_eval_tokens // length))


@torch.no_grad()
def _predictions(model, idx: torch.Tensor, device, max_tokens: int, last_only: bool = False) -> torch.Tensor:
    """(B, L) argmax predictions on the CPU ((B, 1): the last position only), in slices of at most
    ``max_tokens`` tokens."""
    step = max(1, max_tokens // idx.shape[1])
    logits = (model.logits(idx[i : i + step].to(device)) for i in range(0, len(idx), step))
    return torch.cat([(x[:, -1:] if last_only else x).argmax(-1).cpu() for x in logits])


class SelectiveCopying:
    """Mamba Table 1 task. Reports ``test/acc``: per-token accuracy of the copied tokens, at ``n_ctx``.

    Optional curriculum: ``stages``, a sequence of CurriculumStage whose ``length`` is the context
    length of its training batches (``batch_size`` 0: the run's batch size); the last stage continues
    to the end. Testing is always at ``n_ctx``."""

    def __init__(self, n_ctx: int, n_data: int = 16, vocab: int = 16, test_size: int = 512, eval_seed: int = 1234,
                 stages: tuple[CurriculumStage, ...] = ()):  # fmt: skip
        self.n_ctx, self.n_data, self.vocab = n_ctx, n_data, vocab
        self.test_size, self.eval_seed, self.stages = test_size, eval_seed, tuple(stages)

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        n_ctx = self.n_ctx
        if self.stages and split == "train":
            stage = curriculum_stage(self.stages, index)
            n_ctx, batch_size = stage.length, stage.batch_size or batch_size
        idx, targets = selective_copying(
            generator(seed, split, index), batch_size, n_ctx, self.n_data, self.vocab
        )
        return {"idx": idx, "targets": targets}

    def evaluate(self, model, device) -> dict[str, float]:
        test = self.batch("test", 0, self.test_size, self.eval_seed)
        correct, total = _accuracy(model, test["idx"], test["targets"], device, max_tokens=2**16)
        return {"test/acc": correct / total}


@dataclass(frozen=True)
class CurriculumStage:
    """One stage of a length curriculum (InductionHeads, SelectiveCopying): ``steps`` training batches of
    sequences of ``length`` (SelectiveCopying: the context length; ``first`` and ``shift`` are InductionHeads').

    ``batch_size`` 0 keeps the tokens per batch of the run (``batch_size * train_len // length``
    sequences); the first trigger lies in the first ``first`` fraction of the sequence (1.0: anywhere;
    0.1: every example needs a memory of at least 0.9 * length steps); ``shift`` places each sequence
    at a random absolute position that ends within the training length (a ``"start"`` (B,) entry in
    the batch), so that a short stage trains every position a model with absolute positions is
    tested at."""

    length: int
    steps: int
    batch_size: int = 0
    first: float = 1.0
    shift: bool = False


def curriculum_stage(stages: tuple[CurriculumStage, ...], index: int) -> CurriculumStage:
    """The stage of training batch ``index``: ``steps`` batches each, in order; the last one continues."""
    end = 0
    for stage in stages:
        end += stage.steps
        if index < end:
            return stage
    return stages[-1]


class InductionHeads:
    """Mamba Table 2 task: trained at ``train_len``, tested at every length in ``test_lengths``.

    Reports ``acc/L<n>`` for each test length with its number of test sequences ``n/acc/L<n>`` (each one
    Bernoulli trial, whose Wilson interval the report shows), and ``acc/train_len`` / ``acc/train_len_x4``
    (accuracy at the training length and at 4x it) so that claims read the same metric at every preset. Training
    draws fresh random data every step.

    Optional curriculum: ``stages``, a sequence of CurriculumStage; training batches walk through them
    in order (``steps`` batches each; the last stage continues to the end)."""

    def __init__(self, train_len: int = 256, vocab: int = 16, test_lengths: tuple[int, ...] = (64, 256, 1024),
                 test_size: int = 256, max_eval_tokens: int = 2**17, eval_seed: int = 1234,
                 stages: tuple[CurriculumStage, ...] = (), min_test_size: int = 16):  # fmt: skip
        self.train_len, self.vocab, self.test_lengths = train_len, vocab, tuple(test_lengths)
        self.test_size, self.max_eval_tokens, self.eval_seed = test_size, max_eval_tokens, eval_seed
        self.min_test_size = min_test_size
        self.stages = tuple(stages)

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        g = generator(seed, split, index)
        if not (self.stages and split == "train"):
            idx, targets = induction_heads(g, batch_size, self.train_len, self.vocab)
            return {"idx": idx, "targets": targets}
        stage = curriculum_stage(self.stages, index)
        n = stage.batch_size or max(1, batch_size * self.train_len // stage.length)
        first_before = max(1, int(stage.first * (stage.length - 2)))
        idx, targets = induction_heads(g, n, stage.length, self.vocab, first_before)
        batch = {"idx": idx, "targets": targets}
        if stage.shift:  # ends within train_len
            last_start = max(0, self.train_len - stage.length)
            batch["start"] = torch.randint(0, last_start + 1, (n,), generator=g)  # (B,)
        return batch

    def evaluate(self, model, device) -> dict[str, float]:
        metrics = {}
        for length in sorted({*self.test_lengths, self.train_len}):
            n = eval_sequences(length, self.test_size, self.max_eval_tokens, self.min_test_size)
            idx, targets = induction_heads(generator(self.eval_seed, "test", length), n, length, self.vocab)
            correct, total = _accuracy(model, idx, targets, device, self.max_eval_tokens)
            metrics[f"acc/L{length}"] = correct / total
            metrics[f"{TRIALS}acc/L{length}"] = total  # one trial per sequence: the report's Wilson interval
        metrics["acc/train_len"] = metrics[f"acc/L{self.train_len}"]
        if f"acc/L{4 * self.train_len}" in metrics:
            metrics["acc/train_len_x4"] = metrics[f"acc/L{4 * self.train_len}"]
        return metrics


# ---- multi-query associative recall (Zoology) ---------------------------------------------------
PAD = 0  # MQAR: the filler token; keys are 1 .. vocab//2 - 1, values vocab//2 .. vocab-1


def _check_mqar(length: int, n_pairs: int, vocab: int, n_queries: int) -> None:
    if n_pairs < 1 or not 1 <= n_queries <= n_pairs:
        raise ValueError(
            f"MQAR needs 1 <= n_queries <= n_pairs; got n_pairs={n_pairs}, n_queries={n_queries}"
        )
    if vocab < 2 * n_pairs + 2:
        raise ValueError(
            f"MQAR vocab={vocab} is too small for {n_pairs} distinct keys in [1, vocab//2) and distinct "
            f"values in [vocab//2, vocab): need vocab >= 2 * n_pairs + 2 = {2 * n_pairs + 2}"
        )
    if length < 2 * n_pairs + 2 * n_queries:
        raise ValueError(
            f"MQAR length={length} cannot hold {n_pairs} key-value pairs and {n_queries} query slots of 2 "
            f"tokens: need length >= 2 * n_pairs + 2 * n_queries = {2 * n_pairs + 2 * n_queries}"
        )


def _distinct(g: torch.Generator, batch_size: int, n: int, k: int) -> torch.Tensor:
    """(B, k): k distinct integers of [0, n) per row, in random order (the k largest of n uniforms)."""
    return torch.rand(batch_size, n, generator=g).topk(k, dim=1).indices


def mqar(
    g: torch.Generator, batch_size: int, length: int, n_pairs: int, vocab: int, n_queries: int | None = None
):
    """(idx, targets), each (B, length), as Zoology's ``multiquery_ar`` lays them out::

        k1 v1 k2 v2 ... kn vn | . . q1 . . . q2 . ...      q: a key of the context, '.': PAD
        targets:                    v(q1)     v(q2)        at the query positions only

    Keys are distinct within a sequence and drawn from [1, vocab//2), values (distinct too) from
    [vocab//2, vocab), so the two halves of the vocabulary never mix. ``n_queries`` distinct keys
    (default: all n_pairs) are asked in random order, each in its own slot of two tokens (the query key,
    then PAD) of the part after the context; the target sits at the query key (next-token prediction),
    so the value itself never appears after the context. Zoology draws the slots with a power law that
    favours short gaps and fills PAD with random tokens; here slots are uniform and PAD is a token."""
    n_queries = n_pairs if n_queries is None else n_queries
    _check_mqar(length, n_pairs, vocab, n_queries)
    half, ctx = vocab // 2, 2 * n_pairs
    keys = _distinct(g, batch_size, half - 1, n_pairs) + 1  # (B, n) in [1, half)
    values = _distinct(g, batch_size, vocab - half, n_pairs) + half  # (B, n) in [half, vocab)
    asked = _distinct(g, batch_size, n_pairs, n_queries)  # (B, q) which pairs are queried, in order
    slots = _distinct(g, batch_size, (length - ctx) // 2, n_queries)  # (B, q) their 2-token slots
    idx = torch.full((batch_size, length), PAD)
    idx[:, 0:ctx:2], idx[:, 1:ctx:2] = keys, values
    where = ctx + 2 * slots  # (B, q) positions of the query keys
    idx.scatter_(1, where, keys.gather(1, asked))
    targets = torch.full_like(idx, IGNORE_INDEX).scatter_(1, where, values.gather(1, asked))
    return idx, targets


class MQAR:
    """Zoology's MQAR task (their Fig. 2 sweeps length 64 .. 512 and 4 .. 64 pairs, vocab 8192).

    Reports ``test/acc``: the fraction of all queries of the test set answered with the right value.
    ``vocab_size`` is the model's vocabulary (= ``vocab``)."""

    def __init__(self, length: int, n_pairs: int, vocab: int, n_queries: int | None = None,
                 test_size: int = 1024, eval_seed: int = 1234, max_eval_tokens: int = 2**17):  # fmt: skip
        self.n_queries = n_pairs if n_queries is None else n_queries
        _check_mqar(length, n_pairs, vocab, self.n_queries)
        self.length, self.n_pairs, self.vocab, self.vocab_size = length, n_pairs, vocab, vocab
        self.test_size, self.eval_seed, self.max_eval_tokens = test_size, eval_seed, max_eval_tokens

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        g = generator(seed, split, index)
        idx, targets = mqar(g, batch_size, self.length, self.n_pairs, self.vocab, self.n_queries)
        return {"idx": idx, "targets": targets}

    def evaluate(self, model, device) -> dict[str, float]:
        test = self.batch("test", 0, self.test_size, self.eval_seed)
        correct, total = _accuracy(model, test["idx"], test["targets"], device, self.max_eval_tokens)
        return {"test/acc": correct / total}


class MQARByPairs:
    """MQAR over several numbers of key-value pairs (Zoology's Fig. 2 x-axis): training batch ``index``
    holds ``pairs[index % len(pairs)]`` pairs, all queried; ``test/acc_p<n>`` is the recall at n pairs on
    its own test set, ``test/acc`` their mean. Sequences of every count have ``length`` tokens."""

    def __init__(self, length: int, pairs: tuple[int, ...], vocab: int, test_size: int = 512,
                 eval_seed: int = 1234, max_eval_tokens: int = 2**17):  # fmt: skip
        if not pairs:
            raise ValueError("MQARByPairs needs at least one number of pairs")
        self.tasks = {n: MQAR(length, n, vocab, None, test_size, eval_seed, max_eval_tokens) for n in pairs}
        self.pairs, self.vocab_size = tuple(pairs), vocab

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        return self.tasks[self.pairs[index % len(self.pairs)]].batch(split, index, batch_size, seed)

    def evaluate(self, model, device) -> dict[str, float]:
        metrics = {
            f"test/acc_p{n}": task.evaluate(model, device)["test/acc"] for n, task in self.tasks.items()
        }
        metrics["test/acc"] = sum(metrics.values()) / len(metrics)
        return metrics


# ---- state tracking: word problems of finite groups -------------------------------------------
# Every group is a group of permutations of {0 .. n-1}, its elements listed in itertools.permutations
# order (the identity first, so it is token 0). Parity is S_2 = Z_2: token 1 flips, the state is the XOR.
GROUPS = {"parity": (2, False), "S3": (3, False), "S5": (5, False), "A5": (5, True)}  # name: (n, even only)


def _is_even(p: tuple[int, ...]) -> bool:
    return sum(p[i] > p[j] for i in range(len(p)) for j in range(i + 1, len(p))) % 2 == 0


def group_elements(group: str) -> list[tuple[int, ...]]:
    """The elements of ``group`` as permutation tuples p (p maps i to p[i]); element k is token k."""
    if group not in GROUPS:
        raise ValueError(f"unknown group {group!r}; choose one of {', '.join(GROUPS)}")
    n, even_only = GROUPS[group]
    return [p for p in itertools.permutations(range(n)) if _is_even(p) or not even_only]


def compose(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """a ∘ b: first b, then a, i.e. (a ∘ b)[i] = a[b[i]]."""
    return tuple(a[i] for i in b)


def multiplication_table(elements: list[tuple[int, ...]]) -> torch.Tensor:
    """(|G|, |G|) long: table[i, j] = the token of elements[i] ∘ elements[j]."""
    token = {p: k for k, p in enumerate(elements)}
    return torch.tensor([[token[compose(a, b)] for b in elements] for a in elements])


def running_product_reference(idx: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """(B, L) tokens -> (B, L) states: states[:, 0] = idx[:, 0], states[:, t] = states[:, t-1] ∘ idx[:, t],
    one position at a time."""
    states = idx.clone()
    for t in range(1, idx.shape[1]):
        states[:, t] = table[states[:, t - 1], idx[:, t]]  # (B,)
    return states


def running_product(idx: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The same as ``running_product_reference`` by a parallel prefix scan (Hillis & Steele 1986): after
    the step with offset d, states[t] is the product of tokens t-2d+1 .. t, so log2(L) table look-ups
    of the whole (B, L) batch replace the L sequential ones. Earlier factors stay on the left, which is
    what makes it exact for non-abelian groups."""
    states, d = idx, 1
    while d < idx.shape[1]:
        states = torch.cat([states[:, :d], table[states[:, :-d], states[:, d:]]], dim=1)  # (B, L)
        d *= 2
    return states


def group_word_problem(g: torch.Generator, batch_size: int, length: int, table: torch.Tensor):
    """(idx, targets), each (B, length): uniform random group elements g_1 .. g_L and, at every position t,
    the state s_t = g_1 ∘ g_2 ∘ ... ∘ g_t (s_t = s_{t-1} ∘ g_t: as a map, g_t acts first)."""
    idx = torch.randint(0, table.shape[0], (batch_size, length), generator=g)  # (B, L)
    return idx, running_product(idx, table)


class StateTracking:
    """Group word problems (``group`` in GROUPS) trained at ``length``, tested at each of ``test_lengths``.

    Tokens and states share one vocabulary of ``vocab_size`` = |G| tokens (2, 6, 120, 60). Reports
    ``acc/L<n>``, the per-position accuracy of the state at test length n (and at the training length),
    ``test/acc``, the same at the training length, and ``test/seq_acc``, the fraction of test sequences of
    the training length whose states are all right. Chance is 1/|G| per position."""

    def __init__(self, group: str, length: int, test_lengths: tuple[int, ...] = (), test_size: int = 512,
                 eval_seed: int = 1234, max_eval_tokens: int = 2**17):  # fmt: skip
        self.elements = group_elements(group)
        if length < 1 or any(n < 1 for n in test_lengths):
            raise ValueError(f"lengths must be >= 1; got length={length}, test_lengths={tuple(test_lengths)}")
        self.group, self.length, self.test_lengths = group, length, tuple(test_lengths)
        self.table, self.vocab_size = multiplication_table(self.elements), len(self.elements)
        self.test_size, self.eval_seed, self.max_eval_tokens = test_size, eval_seed, max_eval_tokens

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        idx, targets = group_word_problem(generator(seed, split, index), batch_size, self.length, self.table)
        return {"idx": idx, "targets": targets}

    def evaluate(self, model, device) -> dict[str, float]:
        metrics = {}
        for length in sorted({*self.test_lengths, self.length}):
            n = eval_sequences(length, self.test_size, self.max_eval_tokens)
            g = generator(self.eval_seed, "test", length)
            idx, targets = group_word_problem(g, n, length, self.table)
            right = _predictions(model, idx, device, self.max_eval_tokens) == targets  # (n, L)
            metrics[f"acc/L{length}"] = right.float().mean().item()
            if length == self.length:
                metrics["test/seq_acc"] = right.all(1).float().mean().item()
        metrics["test/acc"] = metrics[f"acc/L{self.length}"]
        return metrics
