"""The tasks of a declared comparison (``comparisons/architectures.yaml``, read by common.compare).

A task is declared by its ``kind`` and the options of that kind's class, checked against the class's
signature (an unknown option is a one-line error):

    lm                 common.data.corpus.LanguageModelingTask    val/loss on random windows (tinyshakespeare)
    long_documents     common.data.documents.LongDocumentTask     val/loss and val/loss_pos_L<hi>: the loss by
                                                                  position on the first block_size tokens of
                                                                  long documents (cpython-stdlib)
    mqar               common.data.synthetic.MQARByPairs          test/acc_p<n>: recall at n key-value pairs
    induction_heads    common.data.synthetic.InductionHeads       acc/L<n>: trained short, tested up to 16x
    selective_copying  common.data.synthetic.SelectiveCopying     test/acc
    state_tracking     common.data.synthetic.StateTracking        acc/L<n>, test/acc
    inference          InferenceCost (below)                      infer/ms_per_token_p<p>, infer/state_bytes_p<p>

Every task but inference reports ``val/loss`` (the learning-rate search ranks on it): a kind whose evaluation
has none gets the model's mean loss on ``VAL_BATCHES`` batches of its validation split (``WithValLoss``).
``max_len`` is the longest sequence a model of the task must hold (a GPT's learned position table),
``train_len`` the tokens of one training sequence (a run's token budget is steps x batch x train_len).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from common.data.corpus import LanguageModelingTask
from common.data.documents import LongDocumentTask
from common.data.synthetic import InductionHeads, MQARByPairs, SelectiveCopying, StateTracking
from common.errors import PaperzooError
from common.inference import generation_costs
from common.train import split_loss

VAL_BATCHES, VAL_BATCH_SIZE, VAL_SEED = 8, 32, 4321


class InferenceCost:
    """Not trained (its runs have ``train.max_steps: 0``): the cost of generating one more token at each of
    ``positions`` (common.inference.generation_costs, median of ``n_tokens`` steps) and the bytes of the state
    carried there (a KV cache grows with the position, a recurrent state does not). The weights do not matter.
    ``infer/ms_ratio`` and ``infer/state_ratio``: the last position's cost over the first's."""

    def __init__(
        self, positions: tuple[int, ...] = (64, 256, 1024, 4096), n_tokens: int = 32, vocab: int = 256
    ):
        if len(positions) < 2 or sorted(positions) != list(positions) or positions[0] < 1:
            raise PaperzooError(
                f"inference positions must rise from >= 1, at least two; got {list(positions)}"
            )
        self.positions, self.n_tokens, self.vocab_size = tuple(positions), n_tokens, vocab

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        raise PaperzooError("the inference task trains nothing: give its runs train.max_steps: 0")

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        costs = generation_costs(model, self.positions, self.n_tokens)
        metrics = {}
        for p, cost in costs.items():
            metrics[f"infer/ms_per_token_p{p}"] = cost["ms_per_token"]
            metrics[f"infer/state_bytes_p{p}"] = cost["state_bytes"]
        first, last = costs[self.positions[0]], costs[self.positions[-1]]
        metrics["infer/ms_ratio"] = last["ms_per_token"] / first["ms_per_token"]
        metrics["infer/state_ratio"] = last["state_bytes"] / first["state_bytes"]
        return metrics


class WithValLoss:
    """``task`` whose evaluation also reports ``val/loss``, when it does not already."""

    def __init__(self, task: Any):
        self.task, self.vocab_size = task, task.vocab_size

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        return self.task.batch(split, index, batch_size, seed)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        metrics = self.task.evaluate(model, device)
        if "val/loss" not in metrics:
            losses = []
            for i in range(VAL_BATCHES):
                batch = self.task.batch("val", i, VAL_BATCH_SIZE, VAL_SEED)
                loss, _ = split_loss(model({k: v.to(device) for k, v in batch.items()}))
                losses.append(float(loss.float()))
            metrics["val/loss"] = sum(losses) / len(losses)
        return metrics


@dataclass(frozen=True)
class Kind:
    cls: type
    max_len: Callable[[dict[str, Any]], int]  # of the bound options (with the class's defaults)
    train_len: Callable[[dict[str, Any]], int]


def _option(name: str) -> Callable[[dict[str, Any]], int]:
    return lambda options: options[name]


def _longest(train: str, tests: str) -> Callable[[dict[str, Any]], int]:
    return lambda options: max([options[train], *options[tests]])


KINDS = {
    "lm": Kind(LanguageModelingTask, _option("block_size"), _option("block_size")),
    "long_documents": Kind(LongDocumentTask, _option("block_size"), _option("block_size")),
    "mqar": Kind(MQARByPairs, _option("length"), _option("length")),
    "induction_heads": Kind(InductionHeads, _longest("train_len", "test_lengths"), _option("train_len")),
    "selective_copying": Kind(SelectiveCopying, _option("n_ctx"), _option("n_ctx")),
    "state_tracking": Kind(StateTracking, _longest("length", "test_lengths"), _option("length")),
    "inference": Kind(InferenceCost, lambda options: max(options["positions"]) + 1, lambda options: 0),
}


def _kind(kind: str, where: str) -> Kind:
    if kind not in KINDS:
        raise PaperzooError(f"{where}: unknown task kind '{kind}'; choose {', '.join(KINDS)}")
    return KINDS[kind]


def bound_options(kind: str, options: dict[str, Any], where: str) -> dict[str, Any]:
    """``options`` checked against the kind's class, with its defaults filled in."""
    cls = _kind(kind, where).cls
    try:
        bound = inspect.signature(cls).bind(**options)
    except TypeError as err:
        allowed = ", ".join(p for p in inspect.signature(cls).parameters)
        raise PaperzooError(f"{where}: {err} ({kind} takes {allowed})") from None
    bound.apply_defaults()
    return {k: tuple(v) if isinstance(v, list) else v for k, v in bound.arguments.items()}


def lengths(kind: str, options: dict[str, Any], where: str) -> tuple[int, int]:
    """(max_len, train_len) of a task: the longest sequence its models hold, the tokens of a training one."""
    spec, values = _kind(kind, where), bound_options(kind, options, where)
    return int(spec.max_len(values)), int(spec.train_len(values))


def build_task(kind: str, options: dict[str, Any]) -> Any:
    """The task of ``kind``; every kind but inference (which trains nothing) also reports val/loss."""
    task = _kind(kind, kind).cls(**bound_options(kind, options, kind))
    return task if isinstance(task, InferenceCost) else WithValLoss(task)
