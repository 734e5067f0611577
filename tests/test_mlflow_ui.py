"""`nox -s mlflow-ui`: a SIGTERM to nox stops the MLflow server and frees its port."""

import os
import signal
import subprocess
import sys
import time

import pytest

from common.mlflow_ui import answers, free_port, port_in_use
from common.paths import REPO_ROOT
from common.testing import lab_env, seed_store


@pytest.mark.slow
def test_sigterm_to_nox_stops_the_server(tmp_path):
    port = free_port()
    seed_store(tmp_path)  # an existing store, as the lab's usually is: the server skips the schema migrations
    nox = subprocess.Popen([sys.executable, "-m", "nox", "-s", "mlflow-ui", "--", "--port", str(port)],
                           cwd=REPO_ROOT, env={**os.environ, **lab_env(tmp_path)},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 90
        while not answers(port):
            assert nox.poll() is None, "nox -s mlflow-ui exited before the server answered"
            assert time.time() < deadline, "the MLflow server did not answer /health within 90 s"
            time.sleep(0.1)
        nox.send_signal(signal.SIGTERM)
        nox.wait(timeout=15)
        deadline = time.time() + 5
        while port_in_use(port) and time.time() < deadline:
            time.sleep(0.2)
        assert not port_in_use(port), f"port {port} still answers 5 s after SIGTERM to nox"
    finally:
        if nox.poll() is None:
            nox.kill()


def test_a_bad_port_is_one_line(capsys):
    from common.mlflow_ui import main

    assert main(["--port", "abc"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: argument --port: invalid int value: 'abc'")
