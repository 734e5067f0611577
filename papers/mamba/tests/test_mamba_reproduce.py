"""Smoke reproduction of the Mamba paper through MLflow in a temporary store."""

import pytest

from common.config import load_config
from common.data.synthetic import CurriculumStage
from common.experiment import load_paper
from common.testing import assert_one_line_error, reproduce_main, run_cli, smoke_reproduction


@pytest.mark.slow
def test_smoke_reproduction_logs_every_run_and_writes_the_claims_table(lab):
    readme, by_variant = smoke_reproduction(lab, "mamba", "workers=2")  # two runs at a time (common.workers)
    for claim in ("selcopy-s6", "selcopy-lti", "induction-mamba-extrapolates", "induction-mha-abs-fails-at-4x", "induction-mha-abs-in-distribution",
                  "lm-mamba-matches-transformer"):  # fmt: skip
        assert f"| {claim} |" in readme
    assert set(by_variant) == {
        ("selective_copying", "s6"), ("selective_copying", "lti"), ("selective_copying", "s6_nogate"),
        ("selective_copying", "lti_nogate"), ("induction_heads", "mamba"), ("induction_heads", "mha_abs"),
        ("shakespeare_char", "mamba"), ("shakespeare_char", "gpt"),
    }  # fmt: skip
    assert {"acc/L32", "acc/L128", "acc/L1024", "acc/train_len"} <= set(
        by_variant[("induction_heads", "mamba")]
    )
    assert (lab / "reports" / "mamba" / "figures" / "claim_induction-mamba-extrapolates.png").exists()


def test_unknown_variant_is_a_one_line_error(lab):
    result = run_cli("-m", "common.reproduce", "mamba", "scale=smoke", "selective_copying.variants=[s7]")
    assert_one_line_error(result, "unknown selective_copying.variants", "s6")


def test_bad_curriculum_stage_is_a_one_line_error(lab, capsys):
    result = run_cli(
        "-m", "common.reproduce", "mamba", "scale=smoke", "induction_heads.mamba_stages=[{length: 64, steps: 0}]"
    )  # fmt: skip
    assert_one_line_error(result, "induction_heads.mamba_stages[0]", "steps >= 1")
    for stage, needle in (  # the same command line, checked once above: these in this process
        ("{length: 2, steps: 5}", "length >= n_data (4)"),
        ("{length: 32, steps: 5, shift: true}", "no first or shift"),
    ):
        result = reproduce_main(capsys, "mamba", "scale=smoke", f"selective_copying.stages=[{stage}]")
        assert_one_line_error(result, "selective_copying.stages[0]", needle)
    assert not (lab / "runs").exists() and not (lab / "mlflow.db").exists()  # nothing trained or logged


def test_curricula_set_the_step_count():
    paper = load_paper("mamba")
    runs = {r.key: r for r in paper.plan(load_config(paper.schema, paper.path / "configs", ["scale=cpu"]))}
    assert runs["induction_heads/mamba"].train.max_steps == 900
    assert runs["induction_heads/mha_abs"].train.max_steps == 2500 + 500 + 500 + 400
    assert runs["induction_heads/mha_abs"].params["stages"] == "2500x8+shift 500x16+shift 500x32+shift 400x64"
    assert runs["induction_heads/mha_abs"].data.stages[0] == CurriculumStage(8, 2500, 256, shift=True)
    assert runs["induction_heads/mamba"].params["stages"] == "400x64 300x1024 200x2048"
    assert runs["induction_heads/mamba"].data.stages == (
        CurriculumStage(64, 400),
        CurriculumStage(1024, 300, first=0.1),
        CurriculumStage(2048, 200, first=0.1),
    )
    assert (
        runs["induction_heads/mamba"].data.eval_seed == 1234
    )  # the test set is the same with or without stages
    lti = runs["selective_copying/lti"]
    assert lti.train.max_steps == 1200 and lti.params["stages"] == "700x64 500x128" and lti.data.n_ctx == 128
    assert lti.data.stages == (CurriculumStage(64, 700), CurriculumStage(128, 500))


def test_the_claims_nearest_their_threshold_train_three_seeds_at_cpu():
    paper = load_paper("mamba")
    cfg = load_config(paper.schema, paper.path / "configs", ["scale=cpu"])
    seeds = {r.key: r.trained_seeds(cfg.seeds) for r in paper.plan(cfg)}
    near = [
        "selective_copying/s6",
        "selective_copying/lti",
        "selective_copying/lti_nogate",
        "induction_heads/mamba",
    ]
    assert [seeds.pop(key) for key in near] == [[0, 1, 2]] * 4
    assert set(map(tuple, seeds.values())) == {(0,)}
