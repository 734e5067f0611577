"""A verdict needs a margin: the criterion must hold for every seed, or for the mean with one std to spare."""

import pytest

from common.claims import NOT_REPRODUCED, REPRODUCED, SPREAD_TOO_LARGE, judge, verdict_class, wilson
from common.experiment import Criterion

AT_MOST_70 = Criterion.parse("<= 0.70")


@pytest.mark.parametrize(
    "per_seed, verdict",
    [
        ({"0": 0.694}, REPRODUCED),  # one seed: the criterion on that seed
        ({"0": 0.718}, NOT_REPRODUCED),
        ({"0": 0.60, "1": 0.62, "2": 0.61}, REPRODUCED),  # every seed holds
        ({"0": 0.694, "1": 0.718, "2": 0.65}, SPREAD_TOO_LARGE),  # mean 0.687 holds, but not by a std (0.034)
        (
            {"0": 0.50, "1": 0.52, "2": 0.71},
            REPRODUCED,
        ),  # seed 2 fails; the mean 0.577 holds by > 1 std (0.116)
        ({"0": 0.85, "1": 0.86, "2": 0.69}, NOT_REPRODUCED),  # one seed holds; the mean 0.80 fails by > 1 std
        ({"0": 0.75, "1": 0.76, "2": 0.80}, NOT_REPRODUCED),  # every seed fails
    ],
)
def test_judge(per_seed, verdict):
    assert judge(AT_MOST_70, per_seed) == verdict


def test_a_claim_requiring_one_with_too_much_spread_is_inconclusive():
    from types import SimpleNamespace

    from common.claims import INCONCLUSIVE, evaluate
    from common.experiment import parse_claims

    claims = parse_claims([
        {"id": "lti-fails", "statement": "s", "format": "percent", "criteria": {"cpu": "<= 0.70"},
         "measure": {"task": "t", "variant": "lti", "metric": "test/acc"}},
        {"id": "s6-solves", "statement": "s", "format": "percent", "criteria": {"cpu": ">= 0.95"},
         "measure": {"task": "t", "variant": "s6", "metric": "test/acc"}, "requires": "lti-fails"},
    ], "paper.yaml")  # fmt: skip
    accuracy = {"lti": [0.694, 0.718, 0.65], "s6": [1.0, 0.999, 0.998]}
    runs = {("t", v, str(seed)): SimpleNamespace(data=SimpleNamespace(metrics={"test/acc": acc}),
                                                 info=SimpleNamespace(run_id=f"{v}{seed}"))
            for v, accs in accuracy.items() for seed, acc in enumerate(accs)}  # fmt: skip
    lti, s6 = evaluate(claims, runs, "cpu")
    assert lti.verdict == SPREAD_TOO_LARGE and verdict_class(lti.verdict) == INCONCLUSIVE
    assert s6.verdict == f"{INCONCLUSIVE} (lti-fails: {SPREAD_TOO_LARGE})"


def test_an_lr_search_is_judged_on_each_sides_best_run_seed_by_seed():
    """measure.variant / relative_to as globs with best: min -> per seed, the best lr of each side."""
    from types import SimpleNamespace

    from common.claims import evaluate
    from common.experiment import parse_claims

    (claim,) = parse_claims([
        {"id": "rwkv-vs-gpt", "statement": "s", "criteria": {"cpu": "<= 0.05"},
         "measure": {"task": "lm", "variant": "rwkv_lr*", "relative_to": "gpt_lr*", "metric": "val/loss",
                     "best": "min"}},
    ], "paper.yaml")  # fmt: skip
    loss = {
        ("rwkv_lr1", "0"): 1.60,
        ("rwkv_lr3", "0"): 1.50,
        ("gpt_lr1", "0"): 1.48,
        ("gpt_lr3", "0"): 1.70,
        ("rwkv_lr1", "1"): 1.40,
        ("rwkv_lr3", "1"): 1.55,
        ("gpt_lr1", "1"): 1.52,
        ("gpt_lr3", "1"): 1.45,
    }
    runs = {("lm", v, seed): SimpleNamespace(data=SimpleNamespace(metrics={"val/loss": value}),
                                             info=SimpleNamespace(run_id=f"{v}/{seed}"))
            for (v, seed), value in loss.items()}  # fmt: skip
    (result,) = evaluate([claim], runs, "cpu")
    assert result.per_seed == pytest.approx({"0": 1.50 - 1.48, "1": 1.40 - 1.45})
    assert sorted(result.run_ids) == ["gpt_lr1/0", "gpt_lr3/1", "rwkv_lr1/1", "rwkv_lr3/0"]
    assert claim.measures("lm", "gpt_lr3") and not claim.measures("lm", "mamba_lr3")


def test_an_lr_chosen_on_validation_reports_the_chosen_runs_test_metric():
    """select_by: val/loss picks each seed's lr; the claim reports that run's test/bleu, not the best BLEU."""
    from types import SimpleNamespace

    from common.claims import evaluate
    from common.experiment import parse_claims

    (claim,) = parse_claims([
        {"id": "lora-vs-ft", "statement": "s", "criteria": {"cpu": ">= -2"},
         "measure": {"task": "de_en", "variant": "lora*", "relative_to": "ft*", "metric": "test/bleu",
                     "best": "min", "select_by": "val/loss"}},
    ], "paper.yaml")  # fmt: skip
    metrics = {"lora_a": (3.0, 10.0), "lora_b": (3.2, 12.0), "ft_a": (2.9, 11.0), "ft_b": (2.8, 9.0)}
    runs = {("de_en", v, "0"): SimpleNamespace(data=SimpleNamespace(metrics={"val/loss": loss, "test/bleu": bleu}),
                                               info=SimpleNamespace(run_id=v))
            for v, (loss, bleu) in metrics.items()}  # fmt: skip
    (result,) = evaluate([claim], runs, "cpu")
    assert result.per_seed == pytest.approx({"0": 10.0 - 9.0})  # lora_a and ft_b: the lowest val/loss of each
    assert sorted(result.run_ids) == ["ft_b", "lora_a"]


@pytest.mark.parametrize("measure, error", [
    ({"variant": "rwkv_lr*"}, "bad measure.best"),
    ({"variant": "rwkv", "best": "min"}, "need a variant glob"),
    ({"variant": "rwkv", "select_by": "val/loss"}, "need a variant glob"),
])  # fmt: skip
def test_a_variant_glob_needs_best_and_best_needs_a_glob(measure, error):
    from common.errors import PaperzooError
    from common.experiment import parse_claims

    raw = [{"id": "c", "statement": "s", "measure": {"task": "lm", "metric": "val/loss", **measure}}]
    with pytest.raises(PaperzooError, match=error):
        parse_claims(raw, "paper.yaml")


@pytest.mark.parametrize("correct, trials", [(16, 16), (64, 64), (255, 256), (0, 10), (7, 20), (1, 1)])
def test_wilson_interval_is_scipys(correct, trials):
    stats = pytest.importorskip("scipy.stats")
    theirs = stats.binomtest(correct, trials).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(correct / trials, trials) == pytest.approx((theirs.low, theirs.high), abs=1e-9)
    assert wilson(1.0, 64)[0] == pytest.approx(0.9434, abs=1e-4)  # 64 of 64 bounds the accuracy above 94.3%
