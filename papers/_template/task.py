"""Two noisy concentric rings in the plane: class 0 inside, class 1 outside.

Not linearly separable, so a linear classifier stays near chance while one hidden layer solves it.
Batches are a pure function of (seed, split, index) (see common.data.synthetic.generator).

    batch = {"x": (B, 2) float, "y": (B,) long}
"""

from __future__ import annotations

import math

import torch
from torch import nn

from common.data.synthetic import generator


class RingsTask:
    def __init__(self, noise: float = 0.1, test_size: int = 2000, seed: int = 0):
        self.noise, self.test_size, self.seed = noise, test_size, seed

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        g = generator(seed, split, index)
        y = torch.randint(0, 2, (batch_size,), generator=g)  # (B,)
        radius = 1.0 + y.float() + self.noise * torch.randn(batch_size, generator=g)  # (B,)
        angle = 2 * math.pi * torch.rand(batch_size, generator=g)  # (B,)
        x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)  # (B, 2)
        return {"x": x, "y": y}

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        test = self.batch("test", 0, self.test_size, self.seed)
        logits = model.logits(test["x"].to(device))  # (N, 2)
        return {"test/acc": (logits.argmax(-1).cpu() == test["y"]).float().mean().item()}
