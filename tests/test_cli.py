"""The user-facing commands: reproduce, report, new-paper and nox, with their one-line errors."""

import json
import subprocess
import sys
from dataclasses import replace
from types import SimpleNamespace

import pytest
import yaml

from common import report
from common.errors import PaperzooError
from common.experiment import LazyTask, Run, load_paper, read_meta
from common.paths import REPO_ROOT
from common.report import build_report
from common.reproduce import reproduce
from common.testing import assert_one_line_error, lab_env, reproduce_in, run_cli
from common.tracking import client


def test_unknown_paper(lab):
    assert_one_line_error(
        run_cli("-m", "common.reproduce", "nonsense"), "unknown paper 'nonsense'", "template"
    )


def test_unknown_config_key(lab):
    result = run_cli("-m", "common.reproduce", "template", "scale=smoke", "train.lr_max=3")
    assert_one_line_error(result, "unknown config key 'train.lr_max'", "max_steps")


def test_bad_value_and_unknown_preset(lab):
    assert_one_line_error(
        run_cli("-m", "common.reproduce", "template", "train.max_steps=lots"), "train.max_steps"
    )
    assert_one_line_error(run_cli("-m", "common.reproduce", "template", "scale=huge"), "unknown preset")


def test_workers_below_one_and_workers_under_torchrun_are_one_line_errors(lab, monkeypatch):
    with pytest.raises(PaperzooError, match="workers=0: give the number of runs to train at once, 1 or more"):
        reproduce("template", ["scale=smoke", "workers=0"])  # (the CLI prints a PaperzooError as one line)
    monkeypatch.setattr("common.reproduce.distributed_context", lambda: (0, 2))  # as under torchrun, 2 ranks
    with pytest.raises(PaperzooError, match="workers=2 and torchrun"):
        reproduce("template", ["scale=smoke", "workers=2"])
    assert not (lab / "runs").exists()  # refused before the reproduction claims its checkpoint folders


def test_corrupt_checkpoint_is_reported_and_kept(lab):
    args = ["-m", "common.reproduce", "template", "scale=smoke", "only=[rings/mlp]", "train.max_steps=20"]
    assert reproduce_in(lab, *args[2:]) == 0
    ckpt = lab / "runs" / "_template" / "smoke" / "rings-mlp-s0" / "last.pt"
    ckpt.write_bytes(b"\x00garbage")
    result = run_cli(*args, "resume=true")
    assert_one_line_error(result, "corrupt", str(ckpt))
    assert ckpt.read_bytes() == b"\x00garbage"


def test_smoke_reproduction_writes_the_report_from_mlflow(lab):
    result = run_cli("-m", "common.reproduce", "template", "scale=smoke", "progress=false", "strict=true")
    assert result.returncode == 0, result.stderr  # strict: every claim with a criterion is reproduced
    table = result.stdout[result.stdout.index("Template Paper: preset smoke") :].splitlines()
    assert table[1].split() == ["claim", "paper", "ours", "verdict"]
    assert table[2].startswith("hidden-layer-helps") and table[2].endswith("reproduced")
    assert table[4] == "2 claims: 1 reproduced, 1 no criterion"
    readme = (lab / "reports" / "_template" / "README.md").read_text()
    assert "| hidden-layer-helps |" in readme and "**reproduced**" in readme
    assert "Preset **smoke**" in readme
    for name in ("curves_rings.png", "claim_hidden-layer-helps.png"):
        assert (lab / "reports" / "_template" / "figures" / name).stat().st_size > 1000
    html = (lab / "reports" / "_template" / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    assert "Template Paper" in (lab / "reports" / "README.md").read_text()
    mlflow_client = client()
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("_template").experiment_id])
    assert {r.data.tags["variant"] for r in runs} == {"mlp", "linear"}
    for run in runs:  # every run id in the report is a real MLflow run
        assert run.info.run_id in readme
        assert (
            run.data.tags["preset"] == "smoke"
            and "git_commit" in run.data.tags
            and "device_name" in run.data.tags
        )
        assert "train.lr" in run.data.params and "final/train_loss" in run.data.metrics
        artifacts = {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "final_metrics.json"} <= artifacts
    # no runs at a preset: no report at all, and the command that makes them
    empty = build_report("_template", preset="gpu", out_root=lab / "other")
    assert empty.reproduction is None and "nox -s reproduce-template" in empty.note
    assert not (lab / "other").exists()


def test_only_builds_no_other_task_and_a_run_logs_its_own_section(lab, monkeypatch):
    paper = load_paper("template")

    def never():
        raise AssertionError("a run left out by only= built its data")

    def plan(cfg):
        mlp, linear = paper.module.plan(cfg)
        return [
            mlp,
            replace(linear, section="rings"),
            Run("other", "big", mlp.build_model, LazyTask(never), mlp.train),
        ]

    module = SimpleNamespace(Config=paper.schema, plan=plan)
    monkeypatch.setattr("common.reproduce.load_paper", lambda name: replace(paper, module=module))
    assert reproduce("template", ["scale=smoke", "progress=false", "only=[rings/linear]"]) == 0
    mlflow_client = client()
    (run,) = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("_template").experiment_id])
    assert run.data.tags["variant"] == "linear" and run.data.tags["reproduction_size"] == "1"
    params = run.data.params  # BaseConfig's fields, the run's section, its TrainConfig and run params
    assert {"scale", "seeds", "only", "rings.noise", "train.lr", "run.hidden"} <= set(params)
    assert "model.hidden" not in params and "model.layers" not in params  # the other section of the config


def test_strict_fails_an_unmet_claim_and_resume_keeps_the_reproduction(lab, monkeypatch, capsys):
    meta = read_meta("_template")
    meta["claims"][1]["criteria"]["smoke"] = ">= 1.5"  # impossible: mlp-solves-rings is not reproduced
    monkeypatch.setattr(report, "read_meta", lambda slug: meta)
    args = ["scale=smoke", "progress=false"]
    assert reproduce("template", [*args, "strict=true"]) == 1
    assert reproduce("template", [*args, "resume=true"]) == 0  # every run already finished; not strict
    out, err = capsys.readouterr()
    assert "strict=true: 1 claims not reproduced: mlp-solves-rings" in err
    assert out.count("already finished") == 2 and out.count("2 claims: 1 reproduced, 1 not reproduced") == 2
    mlflow_client = client()
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("_template").experiment_id])
    (reproduction,) = {r.data.tags["reproduction"] for r in runs}
    results = json.loads((lab / "reports" / "_template" / "results.json").read_text())
    assert results["reproduction"] == reproduction and results["complete"] and results["runs"] == 2
    assert (
        yaml.safe_load((REPO_ROOT / "papers/_template/paper.yaml").read_text())["claims"][1]["criteria"][
            "smoke"
        ]
        is None
    )


def test_new_paper_scaffold_validates_the_slug(lab):
    assert_one_line_error(run_cli("-m", "common.scaffold", "../evil"), "no path separators")
    assert_one_line_error(run_cli("-m", "common.scaffold", "My Idea"), "lowercase identifier")
    assert_one_line_error(run_cli("-m", "common.scaffold", "template"), "already exists")


@pytest.mark.slow
def test_new_paper_copy_passes_its_tests_and_reproduces(tmp_path, lab_copy):
    """In a scratch copy of the lab: new-paper, the copy's tests, then its smoke reproduction."""
    repo = lab_copy
    env = lab_env(tmp_path / "store")
    made = run_cli("-m", "common.scaffold", "demo-idea", "--title", "Demo Idea", cwd=repo, env=env)
    assert made.returncode == 0, made.stderr
    new = repo / "papers" / "demo_idea"
    assert "Demo Idea" in (new / "paper.yaml").read_text()
    assert "papers.demo_idea" in (new / "tests" / "test_template.py").read_text()
    tests = run_cli("-m", "pytest", "-q", "-p", "no:cacheprovider", "papers/demo_idea", cwd=repo, env=env)
    assert tests.returncode == 0, tests.stdout[-2000:]
    run = run_cli("-m", "common.reproduce", "demo-idea", "scale=smoke", "progress=false", cwd=repo, env=env)
    assert run.returncode == 0, run.stderr
    assert "Demo Idea" in (tmp_path / "store" / "reports" / "demo_idea" / "README.md").read_text()
    again = run_cli("-m", "common.scaffold", "demo-idea", cwd=repo, env=env)
    assert_one_line_error(again, "already exists")


def test_nox_lists_every_session():
    listing = subprocess.run([sys.executable, "-m", "nox", "-l"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    names = {line.split()[1] for line in listing.stdout.splitlines() if line.startswith(("* ", "- "))}
    papers = sorted(p.parent.name for p in (REPO_ROOT / "papers").glob("*/paper.yaml"))
    expected = {"tests", "lint", "report", "mlflow-ui", "new-paper", "bench", "reproduce-all"}
    expected |= {"reproduce-" + slug.lstrip("_").replace("_", "-") for slug in papers}
    assert expected <= names, expected - names
    assert "reproduce-template" in names


def test_reproduce_all_reports_each_paper_error_and_goes_on(lab, capsys):
    from common.reproduce import main

    assert main(["--all", "scale=smoke", "nonsense.key=1"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    from common.paths import discover_papers

    every_paper = [slug for slug in discover_papers() if not slug.startswith("_")]  # the template is no paper
    assert [line.split(":")[1].strip() for line in errors] == every_paper and "mamba" in every_paper
    assert all(line.startswith("error: ") and "unknown config key 'nonsense'" in line for line in errors)
