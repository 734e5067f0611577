"""What `nox -s reproduce-template` trains: the MLP (method) and a linear model (baseline) on rings."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config import BaseConfig, TrainConfig, train_config
from common.experiment import Run

from .model import Classifier
from .task import RingsTask


@dataclass
class RingsConfig:
    noise: float = 0.1
    test_size: int = 2000


@dataclass
class ModelConfig:
    hidden: int = 64
    layers: int = 2


@dataclass
class Config(BaseConfig):
    rings: RingsConfig = field(default_factory=RingsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def plan(cfg: Config) -> list[Run]:
    task = RingsTask(cfg.rings.noise, cfg.rings.test_size)
    train = train_config(cfg.train)
    hidden, layers = cfg.model.hidden, cfg.model.layers
    return [
        Run("rings", "mlp", lambda: Classifier(hidden=hidden, layers=layers), task, train,
            {"hidden": hidden, "layers": layers}),
        Run("rings", "linear", lambda: Classifier(hidden=0), task, train, {"hidden": 0}),
    ]  # fmt: skip
