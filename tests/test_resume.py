"""resume=true continues only the checkpoints of the reproduction it resumes (newcomer issue, point 3)."""

import os
import subprocess
import sys

import pytest

from common.paths import REPO_ROOT
from common.testing import assert_one_line_error, lab_env, reproduce_in, run_cli
from common.tracking import client

ARGS = ["-m", "common.reproduce", "template", "scale=smoke", "progress=false", "train.max_steps=40"]


def die_at(function: str) -> str:
    """A reproduction that dies like a SIGKILL when it reaches ``common.reproduce.<function>``."""
    return (f"import os, sys; import common.reproduce as r; r.{function} = lambda *a, **k: os._exit(9); "
            "sys.exit(r.main(sys.argv[1:]))")  # fmt: skip


def runs_by_status(root) -> dict[str, list]:
    mlflow_client = client(lab_env(root)["MLFLOW_TRACKING_URI"])
    experiment = mlflow_client.get_experiment_by_name("_template")
    out: dict[str, list] = {}
    for run in mlflow_client.search_runs([experiment.experiment_id], max_results=100):
        out.setdefault(run.info.status, []).append(run)
    return out


@pytest.mark.parametrize(
    "dies_in, left_running",
    [("train", 1),  # B's first MLflow run is left RUNNING, with no checkpoint
     ("prepare_model", 0)],  # B dies before its first MLflow run: only the runs folder knows B
)  # fmt: skip
def test_resume_continues_a_fresh_reproduction_that_died_before_its_first_checkpoint(
    tmp_path, capsys, dies_in, left_running
):
    env = lab_env(tmp_path)
    assert reproduce_in(tmp_path, *ARGS[2:]) == 0  # reproduction A finishes and leaves finished checkpoints
    a_runs = runs_by_status(tmp_path)["FINISHED"]
    a_ids = {r.data.tags["reproduction"] for r in a_runs}
    died = subprocess.run([sys.executable, "-c", die_at(dies_in), "template", *ARGS[3:]], cwd=REPO_ROOT,
                          env={**os.environ, **env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)  # fmt: skip
    assert died.returncode == 9, died.stderr
    assert len(runs_by_status(tmp_path).get("RUNNING", [])) == left_running
    capsys.readouterr()
    assert reproduce_in(tmp_path, *ARGS[2:], "resume=true") == 0
    # A's checkpoints were claimed by B, not skipped as B's
    assert "already finished" not in capsys.readouterr().out
    runs = runs_by_status(tmp_path)
    assert "RUNNING" not in runs and len(runs.get("KILLED", [])) == left_running  # none stays RUNNING
    b_ids = {r.data.tags["reproduction"] for r in runs["FINISHED"]} - a_ids
    assert len(b_ids) == 1 and len(runs["FINISHED"]) == 2 * len(a_runs)  # A and B, each complete
    assert f"reproduction `{b_ids.pop()}`" in (tmp_path / "reports" / "_template" / "README.md").read_text()


def test_resume_refuses_a_checkpoint_whose_run_is_in_another_store(tmp_path):
    args = [*ARGS, "only=[rings/mlp]"]
    assert reproduce_in(tmp_path, *args[2:]) == 0
    other = {**lab_env(tmp_path), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'other.db'}"}
    assert_one_line_error(
        run_cli(*args, "resume=true", env=other), "resume=true: checkpoint", "not in the store"
    )
