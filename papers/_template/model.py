"""The method (an MLP with hidden layers) and its baseline (a linear classifier).

Model contract of common.train: ``model(batch) -> loss``; ``model.logits(x)`` for evaluation.
``ClassifierConfig`` is the schema node of the ``model`` section of the config (each hyperparameter is
written once: in the yaml, read by the model). An architecture other papers may use as a baseline is
registered in the model zoo: ``@common.models.zoo.register("my_arch", MyArchConfig)`` on its builder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ClassifierConfig:
    hidden: int = 64  # 0: the linear baseline
    layers: int = 2


class Classifier(nn.Module):
    """hidden=0 is the linear baseline; otherwise `layers` hidden ReLU layers of width `hidden`."""

    def __init__(self, in_dim: int = 2, n_classes: int = 2, hidden: int = 64, layers: int = 2):
        super().__init__()
        dims = [in_dim] + [hidden] * (layers if hidden else 0)
        body: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            body += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*body, nn.Linear(dims[-1], n_classes))

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # (B, in_dim) -> (B, n_classes)
        return self.net(x)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(self.logits(batch["x"]), batch["y"])
