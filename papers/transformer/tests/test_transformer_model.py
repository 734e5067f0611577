"""Transformer encoder-decoder: loss, LR schedule, masks, variants, checkpoint averaging."""

import math

import pytest
import torch
import torch.nn.functional as F

from common.checkpoint import average_checkpoints
from common.config import Optimizer, Schedule, TrainConfig
from common.train import build_optimizer, lr_multiplier, train
from papers.transformer.model import Transformer, TransformerConfig, label_smoothed_cross_entropy
from papers.transformer.task import CopyTask

TINY = dict(vocab_size=23, d_model=16, n_heads=2, d_ff=32, n_layers=2, dropout=0.0)


def _batch(seed=0, b=3, s=7, t=6, vocab=23):
    g = torch.Generator().manual_seed(seed)
    batch = {
        "src": torch.randint(4, vocab, (b, s), generator=g),
        "tgt_in": torch.randint(4, vocab, (b, t), generator=g),
        "tgt_out": torch.randint(4, vocab, (b, t), generator=g),
    }
    batch["src"][1, 4:] = 0  # padding
    batch["tgt_in"][2, 3:] = 0
    batch["tgt_out"][2, 3:] = 0
    return batch


def test_label_smoothed_loss_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 9, generator=g, dtype=torch.float64)
    target = torch.randint(0, 9, (4, 5), generator=g)
    target[0, :2] = -100
    eps, v = 0.1, 9
    keep = target != -100
    q = torch.full((int(keep.sum()), v), eps / v, dtype=torch.float64)  # smoothed target distribution
    q[torch.arange(q.shape[0]), target[keep]] += 1 - eps
    expected = -(q * F.log_softmax(logits[keep], -1)).sum(-1).mean()
    got = label_smoothed_cross_entropy(logits, target, eps=eps)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    torch_ls = F.cross_entropy(logits.flatten(0, 1), target.flatten(), label_smoothing=eps)
    torch.testing.assert_close(got.double(), torch_ls, rtol=1e-6, atol=1e-6)
    plain = F.cross_entropy(logits.flatten(0, 1), target.flatten())
    torch.testing.assert_close(label_smoothed_cross_entropy(logits, target, eps=0.0).double(), plain)


def eq3(step_num: int, d_model: int, warmup_steps: int) -> float:
    """Sec. 5.3, Eq. 3: lrate = d_model^-0.5 * min(step_num^-0.5, step_num * warmup_steps^-1.5)."""
    return d_model**-0.5 * min(step_num**-0.5, step_num * warmup_steps**-1.5)


def test_lr_schedule_values():
    d, w = 512, 4000
    cfg = TrainConfig(schedule=Schedule.noam, noam_d_model=d, warmup_steps=w)
    for step in (0, 1, w // 2 - 1, w - 2, w - 1, w, 4 * w - 1, 100_000):
        assert lr_multiplier(cfg, step) == pytest.approx(eq3(step + 1, d, w))  # LambdaLR's step is 0-based
    assert lr_multiplier(cfg, w - 1) == pytest.approx(6.988e-4, rel=1e-3)  # the peak, (d * w)^-0.5
    assert lr_multiplier(cfg, 4 * w - 1) == pytest.approx(0.5 * (d * w) ** -0.5)  # 1/sqrt decay
    assert lr_multiplier(cfg, w // 2 - 1) == pytest.approx(0.5 * (d * w) ** -0.5)  # linear warm-up


class LrRecorder:
    def __init__(self):
        self.lr = {}

    def log_metrics(self, metrics, step):
        if "lr" in metrics:
            self.lr[step] = metrics["lr"]


def test_the_training_loop_runs_adam_with_eq3():
    """The optimiser and learning rate the shared loop runs for the translation presets (Sec. 5.3)."""
    cfg = TrainConfig(max_steps=15, batch_size=4, optimizer=Optimizer.adam, beta2=0.98, eps=1e-9, lr=2.0,
                      schedule=Schedule.noam, noam_d_model=16, warmup_steps=10, weight_decay=0.0, log_every=1,
                      ckpt_every=0)  # fmt: skip
    model = Transformer(TransformerConfig(**{**TINY, "vocab_size": 11}))
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.Adam) and not isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["betas"] == (0.9, 0.98) and optimizer.defaults["eps"] == 1e-9
    sink = LrRecorder()
    train(model, CopyTask(test_size=4), cfg, tracker=sink, progress=False)
    # logged after update k (1-based): the rate of the next update, step_num = k + 1
    assert sink.lr == pytest.approx({k: 2.0 * eq3(k + 1, 16, 10) for k in range(1, 16)})


@pytest.mark.parametrize(
    "variant",
    [{}, {"norm_first": True}, {"positions": "learned", "max_len": 16}, {"n_heads": 1}, {"dropout": 0.1}],
)
def test_forward_backward_variants(variant):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**{**TINY, **variant}))
    loss = model(_batch())
    loss.backward()
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx(math.log(23), abs=1.5)  # unit-scale logits at init
    assert all(p.grad is not None for p in model.parameters())


def test_one_matrix_embeds_source_and_target_and_projects_the_output():
    model = Transformer(TransformerConfig(**TINY))
    assert sum(p.shape == (23, 16) for p in model.parameters()) == 1
    b = _batch()
    model(b).backward()
    grad_all = model.embed.weight.grad.clone()
    unused = sorted(set(range(23)) - set(b["src"].flatten().tolist()) - set(b["tgt_in"].flatten().tolist()))
    assert unused and grad_all[unused].abs().sum() > 0  # rows never embedded still learn via the softmax


@pytest.mark.parametrize("norm_first", [False, True])
def test_masks_hide_source_padding_and_future_targets(norm_first):
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**TINY, norm_first=norm_first)).eval()
    b = _batch()
    base = model.logits(b["src"], b["tgt_in"])
    padded = torch.cat([b["src"], torch.zeros(3, 5, dtype=torch.long)], dim=1)  # more padding: no change
    torch.testing.assert_close(model.logits(padded, b["tgt_in"]), base)
    src = b["src"].clone()
    src[1, 2] = 7  # a different source token changes that sentence only
    moved = model.logits(src, b["tgt_in"])
    torch.testing.assert_close(moved[[0, 2]], base[[0, 2]])
    assert not torch.allclose(moved[1], base[1])
    tgt = b["tgt_in"].clone()
    tgt[:, 4] = 5  # a future target token cannot affect logits at positions < 4
    torch.testing.assert_close(model.logits(b["src"], tgt)[:, :4], base[:, :4])


def test_average_checkpoints(tmp_path):
    torch.manual_seed(0)
    a = Transformer(TransformerConfig(**TINY)).state_dict()
    b = Transformer(TransformerConfig(**TINY)).state_dict()
    same = average_checkpoints([a, a, a])
    assert all(torch.equal(same[k], a[k]) for k in a)
    torch.save({"model": b, "step": 7}, tmp_path / "b.pt")
    mean = average_checkpoints([{"model": a}, tmp_path / "b.pt"], key="model")
    for k in a:
        torch.testing.assert_close(mean[k], (a[k] + b[k]) / 2)
    assert not torch.equal(mean["embed.weight"], a["embed.weight"])
    with pytest.raises(ValueError):
        average_checkpoints([a, {k: v for k, v in list(b.items())[:-1]}])
