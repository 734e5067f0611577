"""The plugin contract (common.experiment): claims parsed once, validated against the plan before training."""

import copy
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from common.config import load_config
from common.errors import PaperzooError
from common.experiment import LazyTask, Paper, Run, load_paper, parse_claims, validate
from common.paths import REPO_ROOT
from common.runs import RunRef
from common.testing import assert_one_line_error, run_cli

FILE = "papers/_template/paper.yaml"
TEMPLATE = yaml.safe_load((REPO_ROOT / FILE).read_text())


def claims_with(change) -> list[dict]:
    claims = copy.deepcopy(TEMPLATE["claims"])
    change(claims)
    return claims


def one_line_error(call, *needles: str) -> str:
    with pytest.raises(PaperzooError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        (lambda c: c[1].update(mesure=c[1].pop("measure")), ("claim 'mlp-solves-rings'", "unknown key 'mesure'")),
        (lambda c: c[0]["measure"].update(metrc="x"), ("claim 'hidden-layer-helps', measure", "unknown key 'metrc'")),
        (lambda c: c[0]["measure"].pop("metric"), ("claim 'hidden-layer-helps', measure", "missing key 'metric'")),
        (lambda c: c[1].pop("statement"), ("claim 'mlp-solves-rings'", "missing key 'statement'")),
        (lambda c: c[1]["criteria"].update(cpu="at least 0.95"), ("claim 'mlp-solves-rings', criteria.cpu", "bad criterion")),
        (lambda c: c[1]["criteria"].update(tpu=">= 1"), ("claim 'mlp-solves-rings'", "criteria preset 'tpu'")),
        (lambda c: c[1]["measure"].update(reduce="median"), ("claim 'mlp-solves-rings'", "measure.reduce 'median'")),
        (lambda c: c[1].update(requires="hidden-layer-help"), ("claim 'mlp-solves-rings'", "requires 'hidden-layer-help'")),
        (lambda c: c[1].update(id="hidden-layer-helps"), ("claim 'hidden-layer-helps'", "earlier claim")),
    ],
)  # fmt: skip
def test_a_bad_claim_is_one_line_naming_file_claim_and_key(change, needles):
    one_line_error(lambda: parse_claims(claims_with(change), FILE), FILE, *needles)


def test_claims_parse_into_typed_objects():
    helps, solves = parse_claims(TEMPLATE["claims"], FILE)
    assert (helps.measure.task, helps.measure.variants, helps.measure.reduce) == (
        "rings",
        ("mlp", "linear"),
        "mean",
    )
    assert helps.criterion("smoke").holds(0.06) and not helps.criterion("smoke").holds(0.04)
    assert solves.criterion("smoke") is None and solves.criterion("cpu").text == ">= 0.95"
    assert helps.measures("rings", "linear") and not solves.measures("rings", "linear")


@pytest.fixture
def template():
    paper = load_paper("template")
    cfg = load_config(paper.schema, paper.path / "configs", ["scale=smoke"])
    return paper, cfg, paper.plan(cfg)


def with_claims(paper: Paper, change, path: Path | None = None) -> Paper:
    claims = parse_claims(claims_with(change), FILE)
    return Paper(paper.slug, path or paper.path, paper.meta, paper.module, claims)


def test_every_paper_validates_at_every_preset():
    for name in ("template", "mamba", "transformer"):
        paper = load_paper(name)
        for scale in ("smoke", "cpu", "gpu"):
            cfg = load_config(paper.schema, paper.path / "configs", [f"scale={scale}"])
            validate(paper, cfg, paper.plan(cfg))


def test_seeds_by_run_gives_some_runs_their_own_seeds():
    paper = load_paper("template")
    cfg = load_config(
        paper.schema,
        paper.path / "configs",
        ["scale=smoke", "seeds=[0]", "seeds_by_run={rings/mlp: [0, 1, 2]}"],
    )
    runs = {run.key: run.trained_seeds(cfg.seeds) for run in paper.plan(cfg)}
    assert runs == {"rings/mlp": [0, 1, 2], "rings/linear": [0]}
    validate(paper, cfg, paper.plan(cfg))
    by_task = load_config(paper.schema, paper.path / "configs", ["scale=smoke", "seeds_by_run={rings: [3]}"])
    assert {run.trained_seeds(by_task.seeds)[0] for run in paper.plan(by_task)} == {3}
    for given, needles in (("{rings/mpl: [1]}", ("seeds_by_run", "'rings/mpl'", "rings/linear, rings/mlp")),
                           ("{rings/mlp: []}", ("seeds_by_run", "'rings/mlp' has no seeds"))):  # fmt: skip
        bad = load_config(paper.schema, paper.path / "configs", ["scale=smoke", f"seeds_by_run={given}"])
        one_line_error(lambda bad=bad: validate(paper, bad, paper.plan(bad)), *needles)


def test_a_claim_the_plan_does_not_run_fails_unless_opt_in(template):
    paper, cfg, runs = template
    bad = with_claims(paper, lambda c: c[1]["measure"].update(variant="mpl"))
    one_line_error(
        lambda: validate(bad, cfg, runs),
        FILE,
        "claim 'mlp-solves-rings'",
        "measure.variant",
        "rings/mpl",
        "opt_in",
    )
    bad = with_claims(paper, lambda c: c[0]["measure"].update(relative_to="linaer"))
    one_line_error(
        lambda: validate(bad, cfg, runs), "claim 'hidden-layer-helps'", "measure.relative_to", "rings/linaer"
    )
    bad = with_claims(paper, lambda c: c[1]["measure"].update(task="ring"))
    one_line_error(lambda: validate(bad, cfg, runs), "claim 'mlp-solves-rings'", "measure.task", "ring/mlp")
    opt_in = with_claims(
        paper, lambda c: c[1].update(opt_in="needs a GPU", measure={**c[1]["measure"], "task": "big"})
    )
    validate(opt_in, cfg, runs)


def test_missing_preset_duplicate_run_and_unknown_section_fail(template, tmp_path):
    paper, cfg, runs = template
    shutil.copytree(paper.path / "configs", tmp_path / "configs")
    (tmp_path / "configs" / "gpu.yaml").unlink()
    moved = Paper(paper.slug, tmp_path, paper.meta, paper.module, paper.claims)
    one_line_error(lambda: validate(moved, cfg, runs), "configs/gpu.yaml is missing")
    one_line_error(lambda: validate(paper, cfg, [*runs, runs[0]]), "experiment.py", "'rings/mlp' twice")
    sectioned = Run("rings", "wide", runs[0].build_model, runs[0].data, runs[0].train, section="ringz")
    one_line_error(lambda: validate(paper, cfg, [*runs, sectioned]), "rings/wide", "section 'ringz'")


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        ({"build_model": "gpt"}, ("build_model of type str", "a function")),
        ({"data": object()}, ("data of type object", "a Task (batch")),
        ({"train": {"lr": 0.1}}, ("train of type dict", "TrainConfig")),
        ({"init_from": "transformer/gpt"}, ("init_from of type str", "RunRef")),
    ],
)  # fmt: skip
def test_a_malformed_run_is_one_line(template, change, needles):
    paper, cfg, runs = template
    one_line_error(
        lambda: validate(paper, cfg, [replace(runs[0], **change)]), "experiment.py", "rings/mlp", *needles
    )


def test_lazy_task_builds_nothing_until_used():
    built = []
    task = LazyTask(lambda: built.append(1) or "the task")
    assert built == []
    assert task.task == "the task" and task.task == "the task" and built == [1]


def test_a_paper_yaml_typo_fails_in_seconds_before_any_training(lab_copy, lab):
    yaml_file = lab_copy / "papers" / "_template" / "paper.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("    measure: {task: rings, variant: mlp, metric: test/acc}\n",
                                                       "    mesure: {task: rings, variant: mlp, metric: test/acc}\n"))  # fmt: skip
    started = time.monotonic()
    result = run_cli("-m", "common.reproduce", "template", "scale=smoke", cwd=lab_copy)
    seconds = time.monotonic() - started
    assert_one_line_error(result, FILE, "claim 'mlp-solves-rings'", "unknown key 'mesure'")
    assert seconds < 5, seconds
    assert not (lab / "runs").exists() and not (lab / "mlflow.db").exists()  # nothing trained or logged


def test_a_paper_module_without_plan_is_one_line(lab_copy, lab):
    source = lab_copy / "papers" / "_template" / "experiment.py"
    source.write_text(source.read_text().replace("def plan(", "def plan_runs("))
    result = run_cli("-m", "common.reproduce", "template", "scale=smoke", cwd=lab_copy)
    assert_one_line_error(result, "papers/_template/experiment.py must define plan(cfg)")


def test_a_run_must_come_after_the_run_of_the_plan_it_starts_from(template):

    paper, cfg, runs = template
    mlp = runs[0]
    base = RunRef(paper.slug, cfg.scale, mlp.task, mlp.variant, 0)
    tuned = Run("rings", "tuned", mlp.build_model, mlp.data, mlp.train, init_from=base)
    validate(paper, cfg, [*runs, tuned])
    one_line_error(
        lambda: validate(paper, cfg, [tuned, *runs]),
        "experiment.py",
        "run 'rings/tuned' starts from the run 'rings/mlp'",
        "return 'rings/mlp' first",
    )
    elsewhere = Run(
        "rings",
        "tuned",
        mlp.build_model,
        mlp.data,
        mlp.train,
        init_from=RunRef("mamba", cfg.scale, "rings", "mlp"),
    )
    validate(paper, cfg, [elsewhere, *runs])  # another paper's run: reproduce requires it finished instead


def test_a_run_trains_its_own_seeds_and_its_base_must_train_the_seed_named(template):
    paper, cfg, runs = template
    mlp = replace(runs[0], seeds=(7,))
    assert mlp.trained_seeds([0, 1]) == [7] and runs[0].trained_seeds([0, 1]) == [0, 1]
    tuned = Run("rings", "tuned", mlp.build_model, mlp.data, mlp.train,
                init_from=RunRef(paper.slug, cfg.scale, mlp.task, mlp.variant, 7))  # fmt: skip
    validate(paper, cfg, [mlp, *runs[1:], tuned])  # every seed of 'tuned' starts from seed 7's base
    one_line_error(
        lambda: validate(paper, cfg, [mlp, *runs[1:], replace(tuned, init_from=replace(tuned.init_from, seed=0))]),
        "run 'rings/tuned' starts from 'rings/mlp' seed 0, a seed that run does not train ([7])",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "needles"),
    [
        ({"paper": "L=4096", "tpu": "L=64"}, ("claim 'mlp-solves-rings'", "bad setting key 'tpu'", "paper, smoke, cpu, gpu")),
        ({"paper": "L=4096", "cpu": 64}, ("claim 'mlp-solves-rings', setting.cpu", "expected one line of text", "64")),
        ({"paper": "", "cpu": "L=64"}, ("claim 'mlp-solves-rings', setting.paper", "expected one line of text")),
        ({"paper": "a | b"}, ("setting.paper", "without '|'")),
        ({"paper": "line one\nline two"}, ("setting.paper", "one line")),
        ("L=64", ("claim 'mlp-solves-rings'", "'setting' must map paper and presets to text")),
    ],
)  # fmt: skip
def test_a_bad_setting_is_one_line_naming_file_claim_and_key(setting, needles):
    one_line_error(
        lambda: parse_claims(claims_with(lambda c: c[1].update(setting=setting)), FILE), FILE, *needles
    )


@pytest.mark.parametrize(
    ("spread", "needles"),
    [
        ({"paper": "3 seeds"}, ("claim 'mlp-solves-rings'", "bad spread key 'paper'", "smoke, cpu, gpu")),
        ({"cpu": 0.02}, ("claim 'mlp-solves-rings', spread.cpu", "expected one line of text")),
        ("3 seeds", ("claim 'mlp-solves-rings'", "'spread' must map presets to text")),
    ],
)  # fmt: skip
def test_a_bad_spread_is_one_line_and_a_good_one_is_kept(spread, needles):
    one_line_error(
        lambda: parse_claims(claims_with(lambda c: c[1].update(spread=spread)), FILE), FILE, *needles
    )
    good = parse_claims(claims_with(lambda c: c[1].update(spread={"cpu": "s0-s2: 96 .. 99%"})), FILE)
    assert good[1].spread == {"cpu": "s0-s2: 96 .. 99%"} and good[0].spread == {}


def test_settings_parse_and_every_real_claim_states_paper_and_preset_settings():
    helps, solves = parse_claims(TEMPLATE["claims"], FILE)
    assert helps.setting["paper"] == "noise 0.1" and helps.setting["gpu"].endswith("3000 steps")
    assert solves.setting == {}  # optional
    for slug in ("mamba", "transformer"):
        for claim in load_paper(slug).claims:
            assert "paper" in claim.setting, f"{slug}/{claim.id}"
            assert claim.opt_in or {"smoke", "cpu", "gpu"} <= set(claim.setting), f"{slug}/{claim.id}"
