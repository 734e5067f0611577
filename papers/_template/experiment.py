"""What `nox -s reproduce-template` trains: the MLP (method) and a linear model (baseline) on rings."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.config import BaseConfig, TrainConfig, to_plain, train_config
from common.experiment import Run

from .model import Classifier, ClassifierConfig
from .task import RingsTask


@dataclass
class RingsConfig:
    noise: float = 0.1
    test_size: int = 2000


@dataclass
class Config(BaseConfig):
    rings: RingsConfig = field(default_factory=RingsConfig)
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def plan(cfg: Config) -> list[Run]:
    task = RingsTask(cfg.rings.noise, cfg.rings.test_size)  # synthetic; a corpus: wrap it in LazyTask
    train = train_config(cfg.train)
    model = to_plain(cfg.model)  # the model's params are the config's (logged by the lab)
    return [
        Run("rings", "mlp", lambda: Classifier(**model), task, train),
        Run("rings", "linear", lambda: Classifier(**{**model, "hidden": 0}), task, train, {"hidden": 0}),
    ]
