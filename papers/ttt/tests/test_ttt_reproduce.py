"""Smoke reproduction of the TTT paper through MLflow in a temporary store, the plan's budgets, and bad input."""

import pytest

from common.config import load_config
from common.experiment import load_paper
from common.models import zoo
from common.testing import assert_one_line_error, run_cli, smoke_reproduction
from papers.ttt.experiment import LM_ARCHS, LONG_ARCHS, RUNGS, _arch


@pytest.mark.slow
def test_smoke_reproduction_measures_every_claim(lab):
    _, by_variant = smoke_reproduction(lab, "ttt")
    assert by_variant[("ladder", "linattn")]["theorem1/max_abs_diff"] <= 1e-10
    assert "theorem1/max_abs_diff" not in by_variant[("ladder", "ln")]  # only Theorem 1's layer is measured
    for arch in ("ttt_linear", "ttt_mlp", "ttt_linear_m"):
        assert by_variant[("shakespeare_char", f"{arch}_lr0.003")]["rnn/max_logit_diff"] < 1e-4
    long = by_variant[("long_context", "ttt_linear")]
    assert {f"val/loss_pos_L{hi}" for hi in (16, 32, 48, 64)} <= set(long)


@pytest.mark.parametrize("scale", ["cpu", "gpu"], ids=["cpu_preset", "gpu_preset"])
def test_baselines_get_the_same_lr_search_tokens_and_parameters(scale):
    paper = load_paper("ttt")
    cfg = load_config(paper.schema, paper.path / "configs", [f"scale={scale}"])
    runs = paper.plan(cfg)
    lm = [r for r in runs if r.task == "shakespeare_char"]
    lrs = {arch: sorted(r.train.lr for r in lm if r.variant.rsplit("_lr", 1)[0] == arch) for arch in LM_ARCHS}
    assert len({tuple(v) for v in lrs.values()}) == 1 and len(lrs["gpt"]) >= 2
    for task in ("shakespeare_char", "ladder", "long_context"):
        mine = [r for r in runs if r.task == task]
        assert len({(r.train.max_steps, r.train.batch_size) for r in mine}) == 1  # the same tokens
    for section, archs, vocab in (("language_model", LM_ARCHS, 65), ("long_context", LONG_ARCHS, 222)):
        sizes = {
            arch: zoo.build(_arch(arch), cfg[section][arch], vocab_size=vocab).num_params() for arch in archs
        }
        assert max(sizes.values()) / min(sizes.values()) < 1.05, (
            section,
            sizes,
        )  # equal parameters, within 5%
    assert {r.variant for r in runs if r.task == "ladder"} >= {*RUNGS, "mb4", "mb16", "mbT"}


@pytest.mark.parametrize("override, needles", [
    ("ladder.rungs=[gru]", ("ladder: unknown rungs", "gru")),
    ("language_model.variants=[rwkv]", ("language_model: unknown variants",)),
    ("long_context.block_size=1001", ("long_context.block_size 1001 must be divisible",)),
])  # fmt: skip
def test_bad_input_is_a_one_line_error(lab, override, needles):
    assert_one_line_error(run_cli("-m", "common.reproduce", "ttt", "scale=smoke", override), *needles)
