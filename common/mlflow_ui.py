"""``python -m common.mlflow_ui [--port N] [mlflow server args]``: the MLflow UI over the lab's store.

What ``nox -s mlflow-ui`` runs (the nox process *becomes* this one, so a signal sent to nox reaches it).
The server runs in its own process group: on SIGTERM, SIGINT or SIGHUP the whole group (the server and
its workers) is stopped, so no server is left answering on the port.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from common.paths import REPO_ROOT
from common.tracking import tracking_uri


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def answers(port: int) -> bool:
    """Whether an MLflow server on 127.0.0.1:``port`` answers its health check."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def server_command(port: int, extra: list[str]) -> list[str]:
    uri = tracking_uri()
    args = ["--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if uri.startswith("sqlite:///"):
        args += ["--default-artifact-root", (REPO_ROOT / "mlartifacts").as_uri()]
    return [str(Path(sys.executable).with_name("mlflow")), "server", *args, *extra]


def stop_group(process: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM to the server's process group, SIGKILL after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            os.killpg(process.pid, signal.SIGKILL)  # workers that outlived the server
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
        return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the MLflow UI over the lab's store", exit_on_error=False)
    parser.add_argument("--port", type=int, default=5000)
    try:
        args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else argv)  # the rest: mlflow's
    except argparse.ArgumentError as err:
        print(f"error: {err}; usage: nox -s mlflow-ui -- [--port N] [mlflow server options]", file=sys.stderr)
        return 2
    port, argv = args.port, extra
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    process = subprocess.Popen(server_command(port, argv), env=env, start_new_session=True)

    def on_signal(signum, frame):
        stop_group(process)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    print(f"MLflow UI on http://127.0.0.1:{port} over {tracking_uri()} (Ctrl-C stops it)", flush=True)
    try:
        return process.wait()
    finally:
        stop_group(process)


if __name__ == "__main__":
    sys.exit(main())
