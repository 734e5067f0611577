"""Finished runs as artifacts (common.runs): a run starts from another run's final weights."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mlflow.artifacts import download_artifacts
from safetensors.torch import load_file

import common.experiment
import common.reproduce
from common.checkpoint import load_checkpoint
from common.config import TrainConfig
from common.errors import PaperzooError
from common.experiment import Run
from common.reproduce import main
from common.runs import RunRef, build_from_run, load_run_weights, reproduction_order, run_dir, save_final
from common.tracking import client
from common.train import train
from papers._template import experiment as template
from papers._template.model import Classifier
from papers._template.task import RingsTask

SMOKE = ["scale=smoke", "progress=false", "train.max_steps=30"]
BASE = RunRef("_template", "smoke", "rings", "mlp", 0)


def with_finetune(monkeypatch):
    """The template's plan plus ``rings/mlp_ft``: the MLP started from BASE, its first layer frozen."""
    plan = template.plan

    def extended(cfg):
        runs = plan(cfg)
        mlp = runs[0]

        def build():
            model = mlp.build_model()
            model.net[0].requires_grad_(False)
            return model

        return [*runs, Run("rings", "mlp_ft", build, mlp.data, mlp.train, init_from=BASE)]

    monkeypatch.setattr(template, "plan", extended)


def mlflow_run(variant: str):
    runs = client().search_runs(
        [client().get_experiment_by_name("_template").experiment_id], f"tags.variant = '{variant}'"
    )
    assert len(runs) == 1
    return runs[0]


def test_a_run_starts_from_another_runs_final_weights(lab, monkeypatch):
    assert main(["template", *SMOKE, "only=[rings/mlp]"]) == 0
    base = mlflow_run("mlp")
    artifacts = download_artifacts(run_id=base.info.run_id, artifact_path="model", dst_path=str(lab / "dl"))
    final = load_file(f"{artifacts}/model.safetensors")
    meta = json.loads((lab / "dl" / "model" / "model.json").read_text())
    assert (
        meta["class"] == "Classifier" and meta["weights"] == "all" and meta["n_params"] == meta["n_trainable"]
    )
    assert base.data.metrics["model/n_trainable"] == meta["n_params"]

    with_finetune(monkeypatch)
    initial = {}
    real_train = common.reproduce.train

    def spy(model, *args, **kwargs):
        initial.update({k: v.clone() for k, v in model.state_dict().items()})
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(common.reproduce, "train", spy)
    assert main(["template", *SMOKE, "only=[rings/mlp_ft]"]) == 0
    assert initial.keys() == final.keys()
    assert all(torch.equal(initial[k], final[k]) for k in final)  # not a fresh initialisation
    finetuned = mlflow_run("mlp_ft")
    names = {f.path for f in client().list_artifacts(finetuned.info.run_id, "model")}
    assert names == {"model/model.safetensors", "model/model.json"}
    metrics = finetuned.data.metrics
    assert metrics["model/n_trainable"] == metrics["model/n_params"] - 2 * 64 - 64  # net.0: (64, 2) and (64,)


def test_a_missing_base_fails_before_any_training_in_one_line(lab, monkeypatch, capsys):
    with_finetune(monkeypatch)
    assert main(["template", *SMOKE, "only=[rings/mlp_ft]"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: run _template:smoke:rings/mlp/s0 has not finished")
    assert "nox -s reproduce-template -- scale=smoke" in err[0]
    assert not (lab / "runs").exists()  # nothing trained, no checkpoint written


def test_a_run_on_a_frozen_base_saves_only_its_trainable_tensors(lab):
    task, cfg = RingsTask(test_size=100), TrainConfig(max_steps=20, batch_size=16, ckpt_every=10, log_every=5)
    torch.manual_seed(0)
    base_model = Classifier(hidden=16, layers=2)
    train(base_model, task, cfg, ckpt_path=run_dir(BASE) / "last.pt", progress=False)
    save_final(base_model, run_dir(BASE))

    tuned = RunRef("_template", "smoke", "rings", "tuned", 0)
    torch.manual_seed(1)
    model = Classifier(hidden=16, layers=2)
    load_run_weights(model, BASE)
    model.net[0].requires_grad_(False)  # frozen: the first layer
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and len(trainable) < len(model.state_dict())
    train(model, task, cfg, ckpt_path=run_dir(tuned) / "last.pt", progress=False, base=BASE)
    state = load_checkpoint(run_dir(tuned) / "last.pt")
    assert set(state["model"]) == trainable and RunRef(**state["base"]) == BASE
    save_final(model, run_dir(tuned), init_from=BASE)
    assert set(load_file(run_dir(tuned) / "model.safetensors")) == trainable
    assert json.loads((run_dir(tuned) / "model.json").read_text())["init_from"] == vars(BASE)

    rebuilt = Classifier(hidden=16, layers=2)  # fresh weights: base first, then the trainable tensors
    load_run_weights(rebuilt, tuned)
    for name, tensor in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name
    assert torch.equal(rebuilt.net[0].weight, base_model.net[0].weight)

    resumed = Classifier(hidden=16, layers=2)  # resume: the base, then last.pt's trainable tensors
    load_run_weights(resumed, BASE)
    resumed.net[0].requires_grad_(False)
    result = train(
        resumed, task, cfg, ckpt_path=run_dir(tuned) / "last.pt", resume=True, progress=False, base=BASE
    )
    assert result.resumed_from == 20
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in model.state_dict().items())


def test_weights_that_do_not_fit_fail_in_one_line(lab):
    save_final(Classifier(hidden=8), run_dir(BASE))
    with pytest.raises(
        PaperzooError, match=r"final weights of _template:smoke:rings/mlp/s0 do not fit this Classifier"
    ) as err:
        load_run_weights(Classifier(hidden=16), BASE)
    assert "\n" not in str(err.value)
    with pytest.raises(PaperzooError, match="not built through common.models.zoo"):
        build_from_run(BASE)


def test_reproduction_order_of_the_real_papers_reads_their_plans():
    assert reproduction_order(["transformer", "mamba", "_template"]) == ["_template", "mamba", "transformer"]


def test_reproduction_order_follows_init_from(monkeypatch):
    needs = {"a_lora": ["z_gpt"], "z_gpt": [], "m_rag": ["a_lora", "z_gpt"], "b_free": []}

    def fake_paper(slug):
        runs = [SimpleNamespace(init_from=RunRef(dep, "cpu", "t", "v")) for dep in needs[slug]]
        return SimpleNamespace(plan=lambda cfg: runs, schema=None, path=Path(slug))

    monkeypatch.setattr(common.experiment, "load_paper", fake_paper)
    monkeypatch.setattr("common.config.load_config", lambda *args: None)
    assert reproduction_order(sorted(needs)) == ["b_free", "z_gpt", "a_lora", "m_rag"]
    needs["z_gpt"] = ["m_rag"]
    with pytest.raises(PaperzooError, match="start from each other"):
        reproduction_order(sorted(needs))
