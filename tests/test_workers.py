"""``workers=N`` (common.workers): runs side by side in processes give the numbers of the same runs trained one
after the other at the same thread count; order, failures and signals are handled as in the serial loop."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from common.errors import PaperzooError, TrainingDiverged
from common.paths import REPO_ROOT
from common.testing import lab_env, reproduce_in, seed_store
from common.tracking import client
from common.workers import Job, run_jobs


def stamp(seconds: float) -> tuple[float, float, int]:
    """Sleep; (start, end, pid). CLOCK_MONOTONIC is one clock for every process of the machine."""
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic(), os.getpid()


def fail(kind: str):
    if kind == "diverged":
        raise TrainingDiverged("the loss became NaN at step 3")
    return 1 / 0


def test_jobs_run_side_by_side_and_a_job_waits_for_the_one_it_starts_from():
    jobs = [Job("a", (1.0,)), Job("b", (1.0,)), Job("c", (0.1,), after={0})]
    a, b, c = run_jobs(stamp, jobs, workers=2, threads=1)
    assert a[0] < b[1] and b[0] < a[1]  # a and b overlap
    assert a[2] != b[2] and os.getpid() not in {a[2], b[2]}
    assert c[0] >= a[1]  # c started after a had finished, though b's worker was free as early


def test_a_failed_job_is_raised_in_the_parent_with_its_exit_code_or_traceback():
    with pytest.raises(PaperzooError, match="NaN at step 3") as err:
        run_jobs(fail, [Job("x", ("diverged",)), Job("y", ("diverged",))], workers=2, threads=1)
    assert err.value.exit_code == TrainingDiverged.exit_code
    with pytest.raises(RuntimeError, match="ZeroDivisionError") as err:
        run_jobs(fail, [Job("x", ("crash",))], workers=1, threads=1)
    assert "x failed in worker 0" in str(err.value)


def _final_metrics(root) -> dict[str, dict[str, float]]:
    mlflow_client = client(lab_env(root)["MLFLOW_TRACKING_URI"])
    experiment = mlflow_client.get_experiment_by_name("_template")
    runs = mlflow_client.search_runs([experiment.experiment_id])
    return {run.info.run_name: run.data.metrics for run in runs if run.info.status == "FINISHED"}


def test_two_workers_give_the_numbers_of_the_serial_loop_at_one_thread(tmp_path, monkeypatch, capsys):
    args = ["template", "scale=smoke", "progress=false", "train.max_steps=30"]
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        torch.set_num_threads(1)
        assert reproduce_in(tmp_path / "serial", *args) == 0
        torch.set_num_threads(2)  # the workers get 2 // 2 threads each: the arithmetic of the serial loop
        assert reproduce_in(tmp_path / "workers", *args, "workers=2") == 0
    finally:
        torch.set_num_threads(threads)
    assert "2 runs at a time, 1 thread each" in capsys.readouterr().out
    serial, workers = _final_metrics(tmp_path / "serial"), _final_metrics(tmp_path / "workers")
    assert len(serial) == 2 and serial.keys() == workers.keys()
    for name, metrics in serial.items():
        for key in ("final/train_loss", "test/acc"):
            assert workers[name][key] == metrics[key], (name, key)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                found.append(int(entry))
    return found


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; the workers die with their parent on Linux")
def test_a_killed_reproduction_leaves_no_worker_and_no_run_running(tmp_path):
    """SIGKILL to the parent: its workers get SIGTERM from the kernel (a SIGTERM to the parent sends them
    the same through ``run_jobs``), and each ends its run KILLED."""
    env = {**os.environ, **lab_env(tmp_path), "OMP_NUM_THREADS": "2"}
    seed_store(tmp_path)  # the store's schema migrations run here, once per session, not before the workers
    proc = subprocess.Popen(
        [sys.executable, "-m", "common.reproduce", "template", "scale=smoke", "progress=false", "workers=2",
         "train.max_steps=1000000", "train.ckpt_every=50"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    checkpoints = [
        tmp_path / "runs" / "_template" / "smoke" / f"rings-{v}-s0" / "last.pt" for v in ("mlp", "linear")
    ]
    deadline = time.time() + 120
    while not all(c.exists() for c in checkpoints) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    workers = [pid for pid in _children(proc.pid) if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(workers) >= 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.time() + 60
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers)  # a worker never outlives its parent
    assert "Traceback" not in proc.stderr.read()  # nor a second signal cutting a worker's cleanup short
    mlflow_client = client(env["MLFLOW_TRACKING_URI"])
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("_template").experiment_id])
    assert {run.info.run_name: run.info.status for run in runs} == {
        "rings/mlp/s0": "KILLED", "rings/linear/s0": "KILLED"
    }  # fmt: skip
