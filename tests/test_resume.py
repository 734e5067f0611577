"""resume=true continues only the checkpoints of the reproduction it resumes (newcomer issue, point 3)."""

import os
import subprocess
import sys

from common.paths import REPO_ROOT
from common.testing import assert_one_line_error, lab_env, run_cli
from common.tracking import client

ARGS = ["-m", "common.reproduce", "template", "scale=smoke", "progress=false", "train.max_steps=40"]
# A reproduction that dies like a SIGKILL the moment its first run starts training: before any checkpoint.
KILLED_AT_START = (
    "import os, sys; import common.reproduce as r; r.train = lambda *a, **k: os._exit(9); "
    "sys.exit(r.main(sys.argv[1:]))"
)


def runs_by_status(root) -> dict[str, list]:
    mlflow_client = client(lab_env(root)["MLFLOW_TRACKING_URI"])
    experiment = mlflow_client.get_experiment_by_name("_template")
    out: dict[str, list] = {}
    for run in mlflow_client.search_runs([experiment.experiment_id], max_results=100):
        out.setdefault(run.info.status, []).append(run)
    return out


def test_resume_after_a_fresh_reproduction_died_before_its_first_checkpoint(tmp_path):
    env = lab_env(tmp_path)
    first = run_cli(*ARGS, env=env)  # reproduction A finishes and leaves finished checkpoints
    assert first.returncode == 0, first.stderr
    died = subprocess.run([sys.executable, "-c", KILLED_AT_START, "template", *ARGS[3:]], cwd=REPO_ROOT,
                          env={**os.environ, **env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)  # fmt: skip
    assert died.returncode == 9, died.stderr  # reproduction B: one MLflow run left RUNNING, no checkpoint
    a_ids = {r.data.tags["reproduction"] for r in runs_by_status(tmp_path)["FINISHED"]}
    resumed = run_cli(*ARGS, "resume=true", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "already finished" not in resumed.stdout  # A's checkpoints were claimed by B, not skipped as B's
    runs = runs_by_status(tmp_path)
    assert "RUNNING" not in runs  # the run B's death left RUNNING was marked KILLED
    (killed,) = runs["KILLED"]
    b_id = killed.data.tags["reproduction"]
    assert b_id not in a_ids
    finished_b = [r for r in runs["FINISHED"] if r.data.tags["reproduction"] == b_id]
    assert len(finished_b) == len(runs["FINISHED"]) // 2  # B is complete, beside A
    assert f"reproduction `{b_id}`" in (tmp_path / "reports" / "_template" / "README.md").read_text()


def test_resume_refuses_a_checkpoint_whose_run_is_in_another_store(tmp_path):
    first = run_cli(*ARGS, env=lab_env(tmp_path))
    assert first.returncode == 0, first.stderr
    other = {**lab_env(tmp_path), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'other.db'}"}
    assert_one_line_error(run_cli(*ARGS, "resume=true", env=other), "resume=true", "no reproduction")
    second = run_cli(*ARGS, env=other)  # a fresh reproduction in the other store, then a resume of it
    assert second.returncode == 0, second.stderr
    assert_one_line_error(
        run_cli(*ARGS, "resume=true", env=lab_env(tmp_path)), "resume=true: checkpoint", "not in the store"
    )
