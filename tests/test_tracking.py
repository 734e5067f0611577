import json
import socket
from pathlib import Path

import pytest

from common.errors import PaperzooError
from common.testing import lab_env, run_cli
from common.tracking import Tracker, check_reachable, client

WRITER = """
import sys
from common.tracking import Tracker
t = Tracker("shared")
for r in range(3):
    t.start(f"writer{sys.argv[1]}/run{r}", {"writer": sys.argv[1]}, {f"p{i}": i for i in range(150)})
    for step in range(300):
        t.log_metrics({"train/loss": 1.0 / (step + 1), "lr": 0.1}, step)
    t.log_json({"writer": sys.argv[1]}, "final_metrics.json")
    t.end()
"""


def test_run_lands_with_params_metrics_tags_and_artifacts(lab):
    tracker = Tracker("demo")
    run_id = tracker.start(
        "task/variant/s0", {"paper": "demo", "preset": "smoke"}, {"train.lr": 0.01, "x": "y"}
    )
    for step in range(50):
        tracker.log_metrics({"train/loss": 2.0 - step / 50, "tokens_per_s": 100.0}, step)
    tracker.log_json({"val/loss": 1.5}, "final_metrics.json")
    tracker.end()
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "task/variant/s0"
    assert run.data.params == {"train.lr": "0.01", "x": "y"}
    assert run.data.tags["paper"] == "demo"
    assert len(client().get_metric_history(run_id, "train/loss")) == 50
    artifact_dir = Path(run.info.artifact_uri.removeprefix("file://"))
    assert artifact_dir.is_relative_to(lab / "mlartifacts")  # next to the store, not the current directory
    assert json.loads((artifact_dir / "final_metrics.json").read_text()) == {"val/loss": 1.5}


def test_resume_continues_the_same_run(lab):
    first = Tracker("demo")
    run_id = first.start("a/b/s0", {}, {"k": 1})
    first.log_metrics({"train/loss": 1.0}, 1)
    first.end("KILLED")
    second = Tracker("demo")
    assert second.start("a/b/s0", {}, {"k": 1}, run_id=run_id) == run_id
    second.log_metrics({"train/loss": 0.5}, 2)
    second.end()
    run = client().get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "true"
    assert [m.step for m in client().get_metric_history(run_id, "train/loss")] == [1, 2]


@pytest.mark.slow
def test_two_concurrent_writers_both_land_completely(tmp_path):
    import subprocess
    import sys

    from common.paths import REPO_ROOT

    env = {**__import__("os").environ, **lab_env(tmp_path), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(i)], cwd=REPO_ROOT, env=env,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    mlflow_client = client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("shared").experiment_id])
    assert len(runs) == 6
    for run in runs:
        assert run.info.status == "FINISHED" and len(run.data.params) == 150
        assert len(mlflow_client.get_metric_history(run.info.run_id, "train/loss")) == 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_before_training(lab):
    uri = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(PaperzooError, match="cannot reach the MLflow tracking server"):
        check_reachable(uri, timeout=2)
    result = run_cli("-m", "common.reproduce", "template", "scale=smoke", env={"MLFLOW_TRACKING_URI": uri})
    from common.testing import assert_one_line_error

    assert_one_line_error(result, "cannot reach the MLflow tracking server", uri)
    assert not (lab / "runs").exists()  # nothing trained
