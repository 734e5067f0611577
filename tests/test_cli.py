"""The user-facing commands: reproduce, report, new-paper and nox, with their one-line errors."""

import shutil
import subprocess
import sys

import pytest

from common.paths import REPO_ROOT
from common.report import build_report, write_index
from common.testing import assert_one_line_error, lab_env, run_cli
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


def test_corrupt_checkpoint_is_reported_and_kept(lab):
    ckpt = lab / "runs" / "_template" / "smoke" / "rings-mlp-s0" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"\x00garbage")
    result = run_cli("-m", "common.reproduce", "template", "scale=smoke", "resume=true")
    assert_one_line_error(result, "corrupt", str(ckpt))
    assert ckpt.read_bytes() == b"\x00garbage"


def test_smoke_reproduction_writes_the_report_from_mlflow(lab):
    result = run_cli("-m", "common.reproduce", "template", "scale=smoke", "progress=false")
    assert result.returncode == 0, result.stderr
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
    # a report with no runs says "not run", it does not invent numbers
    empty = build_report("_template", preset="gpu", out_root=lab / "other")
    assert "**not run**" in (empty / "README.md").read_text()
    assert write_index(lab / "other").exists()


def test_new_paper_scaffold_validates_the_slug(lab):
    assert_one_line_error(run_cli("-m", "common.scaffold", "../evil"), "no path separators")
    assert_one_line_error(run_cli("-m", "common.scaffold", "My Idea"), "lowercase identifier")
    assert_one_line_error(run_cli("-m", "common.scaffold", "template"), "already exists")


@pytest.mark.slow
def test_new_paper_copy_passes_its_tests_and_reproduces(tmp_path):
    """In a scratch copy of the lab: new-paper, the copy's tests, then its smoke reproduction."""
    repo = tmp_path / "lab"
    (repo / "papers").mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "common", repo / "common", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / "papers" / "_template", repo / "papers" / "_template",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copy(REPO_ROOT / "papers" / "__init__.py", repo / "papers")
    shutil.copy(REPO_ROOT / "pyproject.toml", repo)
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
