"""Smoke reproduction of the RWKV papers through MLflow in a temporary store, and the plan's lr search."""

import pytest

from common.config import load_config
from common.experiment import load_paper
from common.testing import assert_one_line_error, run_cli, smoke_reproduction


@pytest.mark.slow
def test_smoke_reproduction_measures_every_claim(lab):
    _, by_variant = smoke_reproduction(lab, "rwkv")
    assert set(by_variant) == {(task, f"{arch}_lr0.003") for task in ("shakespeare_char", "mqar", "state_tracking")
                               for arch in ("rwkv4", "rwkv7", "gpt")}  # fmt: skip
    for arch in ("rwkv4", "rwkv7"):
        lm = by_variant[("shakespeare_char", f"{arch}_lr0.003")]
        assert lm["rnn/max_logit_diff"] < 1e-4 and lm["official/max_logit_diff"] < 1e-4
        assert lm["gen/state_ratio"] == 1.0
    gpt = by_variant[("shakespeare_char", "gpt_lr0.003")]
    assert (
        gpt["gen/state_ratio"] == 4.0 and "official/max_logit_diff" not in gpt
    )  # KV cache: 64 / 16 positions


def test_every_architecture_gets_the_same_lr_search_and_budget():
    paper = load_paper("rwkv")
    cfg = load_config(paper.schema, paper.path / "configs", ["scale=cpu"])
    runs = paper.plan(cfg)
    for task in ("shakespeare_char", "mqar", "state_tracking"):
        mine = [r for r in runs if r.task == task]
        lrs = {
            arch: sorted(r.train.lr for r in mine if r.variant.startswith(arch))
            for arch in ("rwkv4", "rwkv7", "gpt")
        }
        assert lrs["rwkv4"] == lrs["rwkv7"] == lrs["gpt"] and len(lrs["gpt"]) >= 2
        assert len({(r.train.max_steps, r.train.batch_size) for r in mine}) == 1  # the same tokens


def test_unknown_variant_is_a_one_line_error(lab):
    result = run_cli("-m", "common.reproduce", "rwkv", "scale=smoke", "mqar.variants=[rwkv5]")
    assert_one_line_error(result, "mqar", "rwkv5")


@pytest.mark.parametrize("override, needles", [
    ("mqar.n_pairs=100", ("mqar: MQAR vocab=32 is too small",)),
    ("state_tracking.group=S7", ("state_tracking: unknown group 'S7'", "A5")),
])  # fmt: skip
def test_bad_task_arguments_are_one_line_errors(lab, override, needles):
    assert_one_line_error(run_cli("-m", "common.reproduce", "rwkv", "scale=smoke", override), *needles)
