"""Finished runs as artifacts (common.runs): a run starts from another run's final weights."""

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mlflow.artifacts import download_artifacts
from safetensors.torch import load_file

import common.experiment
import common.reproduce
from common.checkpoint import load_checkpoint, restore_weights
from common.config import TrainConfig
from common.errors import PaperzooError
from common.experiment import Run
from common.models import zoo
from common.paths import REPO_ROOT
from common.reproduce import main
from common.runs import (
    BaseRun,
    RunRef,
    build_from_run,
    load_run_weights,
    reproduction_order,
    run_dir,
    save_final,
)
from common.testing import lab_env, reproduce_in
from common.tracking import client
from common.train import train
from papers._template import experiment as template
from papers._template.model import Classifier
from papers._template.task import RingsTask

SMOKE = ["scale=smoke", "progress=false", "train.max_steps=30"]
BASE = RunRef("_template", "smoke", "rings", "mlp", 0)
TUNED = RunRef("_template", "smoke", "rings", "tuned", 0)


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

    torch.manual_seed(1)
    model = Classifier(hidden=16, layers=2)
    pin = load_run_weights(model, BASE)  # no MLflow run: found in the folder, pinned by its file's hash
    assert pin == BaseRun(
        BASE, None, hashlib.sha256((run_dir(BASE) / "model.safetensors").read_bytes()).hexdigest()
    )
    model.net[0].requires_grad_(False)  # frozen: the first layer
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and len(trainable) < len(model.state_dict())
    train(model, task, cfg, ckpt_path=run_dir(TUNED) / "last.pt", progress=False, base=pin)
    state = load_checkpoint(run_dir(TUNED) / "last.pt")
    assert set(state["model"]) == trainable and BaseRun.from_dict(state["base"]) == pin
    save_final(model, run_dir(TUNED), init_from=pin)
    assert set(load_file(run_dir(TUNED) / "model.safetensors")) == trainable
    assert BaseRun.from_dict(json.loads((run_dir(TUNED) / "model.json").read_text())["init_from"]) == pin

    rebuilt = Classifier(hidden=16, layers=2)  # fresh weights: base first, then the trainable tensors
    load_run_weights(rebuilt, TUNED)
    for name, tensor in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[name], tensor), name
    assert torch.equal(rebuilt.net[0].weight, base_model.net[0].weight)

    resumed = Classifier(hidden=16, layers=2)  # resume: the base, then last.pt's trainable tensors
    load_run_weights(resumed, pin)
    resumed.net[0].requires_grad_(False)
    result = train(
        resumed, task, cfg, ckpt_path=run_dir(TUNED) / "last.pt", resume=True, progress=False, base=pin
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


# ---- tied weights, exact trainable tensors, pinned bases, a kill after training --------------------
def tiny_gpt(seed: int):
    torch.manual_seed(seed)
    return zoo.build("gpt", {"vocab_size": 13, "block_size": 8, "n_layers": 1, "n_heads": 2, "d_model": 16})


def test_a_language_model_with_tied_weights_reloads_identically(lab):
    model, idx = tiny_gpt(0), torch.randint(13, (2, 8))
    assert model.head.weight is model.embed.weight
    save_final(model, run_dir(BASE))
    assert len(load_file(run_dir(BASE) / "model.safetensors")) < len(model.state_dict())  # stored once
    with torch.no_grad():
        expected = model.logits(idx)
        rebuilt = build_from_run(BASE)
        assert torch.equal(rebuilt.logits(idx), expected)
        other = tiny_gpt(1)
        load_run_weights(other, BASE)
        assert torch.equal(other.logits(idx), expected) and other.head.weight is other.embed.weight


def test_restoring_a_frozen_base_run_needs_exactly_its_trainable_tensors():
    model = Classifier(hidden=8)
    model.net[0].requires_grad_(False)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    restore_weights(model, trainable, trainable_only=True)
    with pytest.raises(ValueError, match="missing net.2.bias"):
        restore_weights(model, {k: v for k, v in trainable.items() if k != "net.2.bias"}, trainable_only=True)
    with pytest.raises(ValueError, match=r"unexpected net.0.weight \(frozen here\)"):
        restore_weights(model, {**trainable, "net.0.weight": model.net[0].weight}, trainable_only=True)
    with pytest.raises(ValueError, match="missing net.0.bias"):
        restore_weights(model, {k: v for k, v in model.state_dict().items() if k != "net.0.bias"}, False)


def test_a_retrained_base_is_refused_when_a_run_on_it_is_rebuilt_or_resumed(lab):
    task, cfg = RingsTask(test_size=100), TrainConfig(max_steps=10, batch_size=16, ckpt_every=5, log_every=5)
    save_final(Classifier(hidden=16), run_dir(BASE))
    model = Classifier(hidden=16)
    pin = load_run_weights(model, BASE)
    model.net[0].requires_grad_(False)
    train(model, task, cfg, ckpt_path=run_dir(TUNED) / "last.pt", progress=False, base=pin)
    save_final(model, run_dir(TUNED), init_from=pin)
    save_final(Classifier(hidden=16), run_dir(BASE))  # the base is retrained
    with pytest.raises(PaperzooError, match="the weights of _template:smoke:rings/mlp/s0 changed") as err:
        load_run_weights(Classifier(hidden=16), TUNED)
    assert "\n" not in str(err.value) and str(err.value).count("sha256") == 2
    resumed = Classifier(hidden=16)
    new_pin = load_run_weights(resumed, BASE)
    resumed.net[0].requires_grad_(False)
    with pytest.raises(
        PaperzooError,
        match=re.escape(f"continues {pin.where}, but the model was loaded from {new_pin.where}"),
    ):
        train(
            resumed,
            task,
            cfg,
            ckpt_path=run_dir(TUNED) / "last.pt",
            resume=True,
            progress=False,
            base=new_pin,
        )


def mlflow_artifacts(run_id: str, dst: Path) -> tuple[dict, dict]:
    folder = Path(download_artifacts(run_id=run_id, artifact_path="model", dst_path=str(dst)))
    return json.loads((folder / "model.json").read_text()), load_file(folder / "model.safetensors")


def test_a_frozen_base_run_killed_before_its_final_step_is_finished_on_resume_from_its_own_base(
    lab, monkeypatch
):
    assert main(["template", *SMOKE, "only=[rings/mlp]"]) == 0
    base = mlflow_run("mlp")
    with_finetune(monkeypatch)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(common.reproduce, "save_final", killed)
    assert main(["template", *SMOKE, "only=[rings/mlp_ft]"]) == 130
    assert mlflow_run("mlp_ft").info.status == "KILLED"
    monkeypatch.setattr(common.reproduce, "save_final", save_final)
    # the base is retrained in between (a later FINISHED run, earlier than the fine-tune's reproduction)
    meta, weights = mlflow_artifacts(base.info.run_id, lab / "a")
    save_final(Classifier(hidden=64), lab / "b")
    later = client().create_run(base.info.experiment_id, start_time=base.info.start_time + 1,
                                tags={k: base.data.tags[k] for k in ("paper", "preset", "task", "variant", "seed")})  # fmt: skip
    for name in ("model.safetensors", "model.json"):
        client().log_artifact(later.info.run_id, str(lab / "b" / name), "model")
    client().set_terminated(later.info.run_id, "FINISHED")

    assert main(["template", *SMOKE, "only=[rings/mlp_ft]", "resume=true"]) == 0
    tuned = mlflow_run("mlp_ft")
    assert tuned.info.status == "FINISHED" and "final/train_loss" in tuned.data.metrics
    tuned_meta, tuned_weights = mlflow_artifacts(tuned.info.run_id, lab / "t")
    assert tuned_meta["init_from"]["run_id"] == base.info.run_id  # pinned to the base it trained on
    state = load_checkpoint(run_dir(RunRef("_template", "smoke", "rings", "mlp_ft", 0)) / "last.pt")
    assert state["finished"] and tuned_weights.keys() == state["model"].keys()
    assert all(torch.equal(tuned_weights[k], state["model"][k]) for k in tuned_weights)
    rebuilt = Classifier()
    load_run_weights(rebuilt, RunRef("_template", "smoke", "rings", "mlp_ft", 0))
    assert torch.equal(
        rebuilt.net[0].weight, weights["net.0.weight"]
    )  # the base it trained on, not the later one


KILLED_AFTER_TRAINING = (  # dies like a SIGKILL between the finished checkpoint and the final logging
    "import os, sys; import common.reproduce as r; t = r.train; "
    "r.train = lambda *a, **k: (t(*a, **k), os._exit(9)); sys.exit(r.main(sys.argv[1:]))"
)


def test_a_run_killed_right_after_training_is_finished_on_resume(lab, capsys):
    env, args = lab_env(lab / "killed"), ["template", *SMOKE, "only=[rings/mlp]"]
    died = subprocess.run([sys.executable, "-c", KILLED_AFTER_TRAINING, *args], cwd=REPO_ROOT,
                          env={**os.environ, **env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)  # fmt: skip
    assert died.returncode == 9, died.stderr
    mlflow_client = client(env["MLFLOW_TRACKING_URI"])
    (stranded,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("_template").experiment_id])
    assert stranded.info.status == "RUNNING" and "final/train_loss" not in stranded.data.metrics
    assert reproduce_in(lab / "killed", *args, "resume=true") == 0
    resumed = capsys.readouterr().out
    assert "already finished" not in resumed and "redoing its final step" in resumed
    run = mlflow_client.get_run(stranded.info.run_id)
    assert run.info.status == "FINISHED" and "final/train_loss" in run.data.metrics
    assert {f.path for f in mlflow_client.list_artifacts(run.info.run_id, "model")} == {
        "model/model.safetensors", "model/model.json"}  # fmt: skip
    assert main(args) == 0  # the same reproduction, not interrupted, in the store of ``lab``
    clean = mlflow_run("mlp")
    for metric in ("test/acc", "final/train_loss", "model/n_params"):
        assert run.data.metrics[metric] == clean.data.metrics[metric], metric
    capsys.readouterr()
    assert reproduce_in(lab / "killed", *args, "resume=true") == 0
    assert "already finished" in capsys.readouterr().out
