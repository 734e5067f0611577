"""MLflow tracking for every run of every paper.

Default store: SQLite at the repository root (``sqlite:///<repo>/mlflow.db``) with artifacts in
``<repo>/mlartifacts/<experiment>``, wherever the command is started from.
``MLFLOW_TRACKING_URI`` points elsewhere (e.g. a shared ``http://host:5000`` server).

One MLflow experiment per paper; one run per (task, variant, seed) named ``<task>/<variant>/s<seed>``.
Params are the flattened resolved config; per-step metrics are buffered and sent with
``log_batch`` (one call per metric costs ~8 ms); tags carry the git commit and dirty flag, device,
torch version, preset, paper, task, variant and claim ids. Metric names are shared across papers
(``train/loss``, ``val/loss``, ``tokens_per_s``, ``acc/L1024`` ...) so that runs of different papers
on the same task line up in one MLflow comparison view.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from common.errors import PaperzooError
from common.paths import REPO_ROOT

T = TypeVar("T")
MAX_PARAMS_PER_BATCH, MAX_METRICS_PER_BATCH, MAX_PARAM_LEN = 100, 1000, 6000

for _name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
    logging.getLogger(_name).setLevel(logging.WARNING)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def default_artifact_location(uri: str, experiment: str) -> str | None:
    """For a local SQLite store: <folder of the db>/mlartifacts/<experiment>; servers choose their own."""
    db = _sqlite_path(uri)
    return (db.parent / "mlartifacts" / experiment).resolve().as_uri() if db else None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail before any training when the tracking store cannot be used."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
                if response.status != 200:
                    raise OSError(f"HTTP {response.status}")
        except (OSError, urllib.error.URLError) as err:
            reason = getattr(err, "reason", err)
            raise PaperzooError(
                f"cannot reach the MLflow tracking server at {uri} ({reason}); start it, "
                "or unset MLFLOW_TRACKING_URI to use the local SQLite store"
            ) from None
    db = _sqlite_path(uri)
    if db is not None:
        folder = db.parent
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise PaperzooError(
                f"cannot write the MLflow store {db}: folder {folder} is missing or read-only"
            )


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialises first-time creation of a SQLite store (schema migrations race between processes)."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _retry(call: Callable[[], T], attempts: int = 8) -> T:
    """SQLite allows one writer at a time: retry calls that hit 'database is locked'."""
    for attempt in range(attempts):
        try:
            return call()
        except Exception as err:
            if "locked" not in str(err).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


def client(uri: str | None = None):
    """An MlflowClient for ``uri`` with its store created (safely, once) and reachable."""
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    check_reachable(uri)
    with _store_lock(uri):
        mlflow_client = MlflowClient(tracking_uri=uri)
        _retry(lambda: mlflow_client.search_experiments(max_results=1))
    return mlflow_client


def newest_runs(mlflow_client, experiment: str, query: str = "", max_results: int = 1000) -> list:
    """The runs of the MLflow experiment ``experiment`` that match the filter ``query``, the newest first
    ([] when the store has no such experiment)."""
    found = _retry(lambda: mlflow_client.get_experiment_by_name(experiment))
    if found is None:
        return []
    return _retry(lambda: mlflow_client.search_runs([found.experiment_id], query, max_results=max_results,
                                                    order_by=["attributes.start_time DESC"]))  # fmt: skip


def experiment_id(mlflow_client, name: str) -> str:
    found = _retry(lambda: mlflow_client.get_experiment_by_name(name))
    if found is not None:
        return found.experiment_id
    try:
        location = default_artifact_location(mlflow_client.tracking_uri, name)
        return _retry(lambda: mlflow_client.create_experiment(name, artifact_location=location))
    except Exception:  # created concurrently by another process
        found = _retry(lambda: mlflow_client.get_experiment_by_name(name))
        if found is None:
            raise
        return found.experiment_id


def git_info() -> dict[str, str]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit != "unknown" else False
    return {"git_commit": commit, "git_dirty": str(dirty).lower(), "mlflow.source.git.commit": commit}


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def system_info() -> dict[str, str]:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_name()
    return {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "device_name": device,
        "cpu_count": str(os.cpu_count()),
        "threads": str(torch.get_num_threads()),  # 1 vs 2 threads: other arithmetic, other trained weights
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }


class Tracker:
    """One MLflow run: start (or resume), buffered metrics, artifacts, end with a status."""

    def __init__(self, experiment: str, uri: str | None = None, flush_every: float = 5.0):
        self.client = client(uri)
        self.experiment_id = experiment_id(self.client, experiment)
        self.run_id: str | None = None
        self.flush_every = flush_every
        self._buffer: list[Any] = []
        self._last_flush = time.monotonic()

    def start(
        self, run_name: str, tags: dict[str, str], params: dict[str, Any], run_id: str | None = None
    ) -> str:
        from mlflow.entities import Param

        if run_id is not None:  # resume: same run, params already logged
            _retry(lambda: self.client.update_run(run_id, status="RUNNING"))
            self.run_id = run_id
            self._set_tags({**tags, "resumed": "true"})
            return run_id
        run = _retry(lambda: self.client.create_run(self.experiment_id, run_name=run_name, tags=tags))
        self.run_id = run.info.run_id
        items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            chunk = items[i : i + MAX_PARAMS_PER_BATCH]
            _retry(lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk))
        return self.run_id

    def _set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        _retry(lambda: self.client.log_batch(self.run_id, tags=items))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items())
        if (
            time.monotonic() - self._last_flush > self.flush_every
            or len(self._buffer) >= MAX_METRICS_PER_BATCH
        ):
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            chunk, self._buffer = self._buffer[:MAX_METRICS_PER_BATCH], self._buffer[MAX_METRICS_PER_BATCH:]
            _retry(lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk))
        self._last_flush = time.monotonic()

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        _retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))

    def log_json(self, obj: Any, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(json.dumps(obj, indent=2, sort_keys=True))
            self.log_artifact(path)

    def log_text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text)
            self.log_artifact(path)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is None:
            return
        self.flush()
        _retry(lambda: self.client.set_terminated(self.run_id, status=status))
