"""The template's own tests: they must pass unchanged in every copy made by `nox -s new-paper`."""

import torch

from common.config import TrainConfig
from common.train import train
from papers._template.model import Classifier
from papers._template.task import RingsTask


def test_batches_are_pure_in_seed_split_index():
    task = RingsTask()
    a, b = task.batch("train", 7, 16, seed=3), task.batch("train", 7, 16, seed=3)
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    assert not torch.equal(a["x"], task.batch("train", 8, 16, seed=3)["x"])
    assert not torch.equal(a["x"], task.batch("test", 7, 16, seed=3)["x"])


def test_linear_baseline_has_no_hidden_layer():
    assert sum(p.numel() for p in Classifier(hidden=0).parameters()) == 2 * 2 + 2


def test_mlp_learns_rings_and_linear_does_not():
    task = RingsTask(test_size=500)
    cfg = TrainConfig(max_steps=150, batch_size=64, lr=0.01, min_lr=0.001, warmup_steps=10, weight_decay=0.0,
                      ckpt_every=0)  # fmt: skip
    torch.manual_seed(0)
    mlp = train(Classifier(hidden=32, layers=2), task, cfg, progress=False)
    torch.manual_seed(0)
    linear = train(Classifier(hidden=0), task, cfg, progress=False)
    assert mlp.metrics["test/acc"] > 0.9
    assert linear.metrics["test/acc"] < 0.7
