"""A run's MLflow params hold each value once, as the run used it (common.reproduce.run_params)."""

from common.config import load_config
from common.experiment import load_paper
from common.reproduce import run_params


def planned(name: str, *overrides: str):
    paper = load_paper(name)
    cfg = load_config(paper.schema, paper.path / "configs", ["scale=smoke", *overrides])
    return cfg, {run.key: run for run in paper.plan(cfg)}


def test_params_are_the_model_as_built_and_its_own_section(lab):
    cfg, runs = planned("mamba")
    lti = run_params(cfg, runs["selective_copying/lti"], 0, runs["selective_copying/lti"].build_model())
    assert (lti["model.arch"], lti["model.selective"], lti["run.selective"]) == ("mamba", False, False)
    assert lti["selective_copying.n_ctx"] == cfg.selective_copying.n_ctx and lti["scale"] == "smoke"
    assert lti["train.max_steps"] == cfg.selective_copying.train.max_steps
    assert not [k for k in lti if k.startswith(("selective_copying.train.", "selective_copying.model.",
                                                "induction_heads.", "language_model."))]  # fmt: skip

    gpt = runs["shakespeare_char/gpt"]
    params = run_params(cfg, gpt, 1, gpt.build_model())
    assert params["model.arch"] == "gpt" and params["run.seed"] == 1
    assert params["model.vocab_size"] == 65  # the corpus's, not the schema's '???'
    assert params["model.d_model"] == cfg.language_model.gpt.d_model
    assert not [k for k in params if k.startswith(("language_model.mamba.", "language_model.gpt."))]
    assert "???" not in map(str, params.values())


def test_a_model_outside_the_zoo_logs_its_config_with_the_variant_change(lab):
    cfg, runs = planned("template")
    mlp, linear = runs["rings/mlp"], runs["rings/linear"]
    assert run_params(cfg, mlp, 0, mlp.build_model())["model.hidden"] == cfg.model.hidden
    params = run_params(cfg, linear, 0, linear.build_model())
    assert params["model.hidden"] == params["run.hidden"] == 0
    assert "train.train.lr" not in params and params["train.lr"] == cfg.train.lr
