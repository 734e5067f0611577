"""The paper's optimiser, learning-rate schedule and checkpoint averaging.

Vaswani et al. 2017, arXiv 1706.03762.

Sec. 5.3, Eq. 3: Adam(beta1 = 0.9, beta2 = 0.98, eps = 1e-9) with

    lrate = d_model^-0.5 * min(step_num^-0.5, step_num * warmup_steps^-1.5),    warmup_steps = 4000

i.e. linear warm-up, then decay with the inverse square root of the step (peak at step_num =
warmup_steps: (d_model * warmup_steps)^-0.5, 7.0e-4 for the base model).

Sec. 6.1: the base models average the last 5 checkpoints, the big models the last 20.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


def transformer_lr(step: int, d_model: int, warmup_steps: int = 4000, factor: float = 1.0) -> float:
    """Eq. 3 at LambdaLR's 0-based ``step``, i.e. for the paper's 1-based update ``step_num = step + 1``.

    Use with a base learning rate of 1.0 (``factor`` scales the whole curve)::

        LambdaLR(opt, functools.partial(transformer_lr, d_model=512, warmup_steps=4000))
    """
    step_num = step + 1
    return factor * d_model**-0.5 * min(step_num**-0.5, step_num * warmup_steps**-1.5)


def paper_optimizer(
    model: nn.Module, d_model: int, warmup_steps: int = 4000, factor: float = 1.0
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
    """Sec. 5.3: Adam(0.9, 0.98, 1e-9) driven by Eq. 3; call ``scheduler.step()`` after each update."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0, betas=(0.9, 0.98), eps=1e-9)
    schedule = functools.partial(transformer_lr, d_model=d_model, warmup_steps=warmup_steps, factor=factor)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def average_checkpoints(checkpoints: Sequence[dict | str | Path], key: str | None = None) -> dict:
    """Element-wise mean of model state dicts (Sec. 6.1), e.g. of the last N checkpoints.

    Each item is a state dict or a file written by ``torch.save``; ``key`` selects the state dict
    inside each file (``"model"`` for ``common.checkpoint`` files). Floating tensors are averaged
    in float64 and cast back; other tensors (integer buffers) must agree and are kept.
    """
    if not checkpoints:
        raise ValueError("average_checkpoints needs at least one checkpoint")
    states = []
    for item in checkpoints:
        state = item if isinstance(item, dict) else torch.load(item, map_location="cpu", weights_only=True)
        states.append(state[key] if key is not None else state)
    names = list(states[0])
    for state in states[1:]:
        if list(state) != names:
            raise ValueError("checkpoints to average hold different parameter names")
    averaged = {}
    for name in names:
        first = states[0][name]
        if first.is_floating_point():
            total = sum(state[name].double() for state in states)
            averaged[name] = (total / len(states)).to(first.dtype)
        else:
            if any(not torch.equal(state[name], first) for state in states[1:]):
                raise ValueError(f"non-floating tensor '{name}' differs between checkpoints")
            averaged[name] = first.clone()
    return averaged
