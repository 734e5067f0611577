"""The paper's optimiser, learning-rate schedule and checkpoint averaging.

Vaswani et al. 2017, arXiv 1706.03762.

Sec. 5.3, Eq. 3: Adam(beta1 = 0.9, beta2 = 0.98, eps = 1e-9) with

    lrate = d_model^-0.5 * min(step_num^-0.5, step_num * warmup_steps^-1.5),    warmup_steps = 4000

i.e. linear warm-up, then decay with the inverse square root of the step (peak at step_num =
warmup_steps: (d_model * warmup_steps)^-0.5, 7.0e-4 for the base model).

Sec. 6.1 (the base models average the last 5 checkpoints, the big models the last 20) is the shared
loop's ``train.average_last`` (common.train, common.checkpoint.average_checkpoints).
"""

from __future__ import annotations

import functools

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
