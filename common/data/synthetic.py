"""Seeded, deterministic synthetic tasks, generated in code (no files, no downloads).

Every generator is a pure function of ``(seed, split, index)``: batch ``index`` of a run is the
same whether the run was interrupted or not, on one process or on many. Papers add their own
generators here when more than one paper uses them.

Tasks
    selective_copying   Gu & Dao 2023 (Mamba), Sec. 4.1.1 / App. E.1: memorise the data tokens
                        scattered among noise tokens, output them in order after the markers.
    induction_heads     Olsson et al. 2022; Mamba Sec. 4.1.2: after "... k v ... k", predict v.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

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


@torch.no_grad()
def _accuracy(model, idx: torch.Tensor, targets: torch.Tensor, device, max_tokens: int) -> tuple[int, int]:
    """(correct, total) over target positions, in slices of at most ``max_tokens`` tokens."""
    step = max(1, max_tokens // idx.shape[1])
    correct = total = 0
    for i in range(0, idx.shape[0], step):
        x, y = idx[i : i + step].to(device), targets[i : i + step].to(device)
        mask = y != IGNORE_INDEX
        if mask[:, :-1].any():
            logits = model.logits(x)  # (b, L, V)
            pred = logits.argmax(-1)
        else:  # only the last position is scored: keep the (b, L, V) logits small
            pred = model.logits(x)[:, -1:].argmax(-1)
            y, mask = y[:, -1:], mask[:, -1:]
        correct += int((pred == y)[mask].sum())
        total += int(mask.sum())
    return correct, total


class SelectiveCopying:
    """Mamba Table 1 task. Reports ``test/acc``: per-token accuracy of the copied tokens."""

    def __init__(
        self, n_ctx: int, n_data: int = 16, vocab: int = 16, test_size: int = 512, eval_seed: int = 1234
    ):
        self.n_ctx, self.n_data, self.vocab, self.test_size, self.eval_seed = (
            n_ctx,
            n_data,
            vocab,
            test_size,
            eval_seed,
        )

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        idx, targets = selective_copying(
            generator(seed, split, index), batch_size, self.n_ctx, self.n_data, self.vocab
        )
        return {"idx": idx, "targets": targets}

    def evaluate(self, model, device) -> dict[str, float]:
        test = self.batch("test", 0, self.test_size, self.eval_seed)
        correct, total = _accuracy(model, test["idx"], test["targets"], device, max_tokens=2**16)
        return {"test/acc": correct / total}


@dataclass(frozen=True)
class CurriculumStage:
    """One stage of an InductionHeads curriculum: ``steps`` training batches of sequences of ``length``.

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


class InductionHeads:
    """Mamba Table 2 task: trained at ``train_len``, tested at every length in ``test_lengths``.

    Reports ``acc/L<n>`` for each test length, and ``acc/train_len`` / ``acc/train_len_x4`` (accuracy at
    the training length and at 4x it) so that claims read the same metric at every preset. Training
    draws fresh random data every step.

    Optional curriculum: ``stages``, a sequence of CurriculumStage; training batches walk through them
    in order (``steps`` batches each; the last stage continues to the end)."""

    def __init__(self, train_len: int = 256, vocab: int = 16, test_lengths: tuple[int, ...] = (64, 256, 1024),
                 test_size: int = 256, max_eval_tokens: int = 2**17, eval_seed: int = 1234,
                 stages: tuple[CurriculumStage, ...] = ()):  # fmt: skip
        self.train_len, self.vocab, self.test_lengths = train_len, vocab, tuple(test_lengths)
        self.test_size, self.max_eval_tokens, self.eval_seed = test_size, max_eval_tokens, eval_seed
        self.stages = tuple(stages)

    def stage(self, index: int) -> CurriculumStage:
        """The curriculum stage of training batch ``index``."""
        end = 0
        for stage in self.stages:
            end += stage.steps
            if index < end:
                return stage
        return self.stages[-1]

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        g = generator(seed, split, index)
        if not (self.stages and split == "train"):
            idx, targets = induction_heads(g, batch_size, self.train_len, self.vocab)
            return {"idx": idx, "targets": targets}
        stage = self.stage(index)
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
            n = max(
                16, min(self.test_size, 2 * self.max_eval_tokens // length)
            )  # at most 2 slices per length
            idx, targets = induction_heads(generator(self.eval_seed, "test", length), n, length, self.vocab)
            correct, total = _accuracy(model, idx, targets, device, self.max_eval_tokens)
            metrics[f"acc/L{length}"] = correct / total
        metrics["acc/train_len"] = metrics[f"acc/L{self.train_len}"]
        if f"acc/L{4 * self.train_len}" in metrics:
            metrics["acc/train_len_x4"] = metrics[f"acc/L{4 * self.train_len}"]
        return metrics
