"""Where things live: the repository, offline data, caches, checkpoints and the MLflow store.

Every location can be moved with an environment variable:

    PAPERZOO_DATA     offline corpora            (default: ../shared/data beside the repo, when it exists)
    PAPERZOO_CACHE    tokenized corpora, BPE     (default: <repo>/.cache)
    PAPERZOO_RUNS     checkpoints                (default: <repo>/runs)
    PAPERZOO_REPORTS  generated reports          (default: <repo>/reports)
    MLFLOW_TRACKING_URI                          (default: sqlite:///<repo>/mlflow.db, see common.tracking)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PAPERS_DIR = REPO_ROOT / "papers"


@contextlib.contextmanager
def env_vars(values: dict[str, str]) -> Iterator[None]:
    """These environment variables (e.g. ``PAPERZOO_RUNS``) hold ``values`` inside the block; each is put back
    as it was (or removed) after it."""
    before = {var: os.environ.get(var) for var in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for var, value in before.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser().resolve() if value else default


def data_dir() -> Path | None:
    """The offline data folder: $PAPERZOO_DATA, else ../shared/data when it exists, else None."""
    if os.environ.get("PAPERZOO_DATA"):
        return _env_path("PAPERZOO_DATA", REPO_ROOT)
    shared = REPO_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else None


def cache_dir() -> Path:
    return _env_path("PAPERZOO_CACHE", REPO_ROOT / ".cache")


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` to a file of this process's own, then renamed to ``path``: a reader never sees a half-written
    cache file, even while other processes (``workers=N``) write the same one."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def runs_dir() -> Path:
    return _env_path("PAPERZOO_RUNS", REPO_ROOT / "runs")


def reports_dir() -> Path:
    return _env_path("PAPERZOO_REPORTS", REPO_ROOT / "reports")


def session_name(slug: str) -> str:
    """The nox session suffix of a paper: ``my_idea`` -> ``my-idea``, ``_template`` -> ``template``."""
    return slug.lstrip("_").replace("_", "-")


def discover_papers() -> list[str]:
    """Slugs of every folder under papers/ that has a paper.yaml (torch-free: the noxfile uses it)."""
    return sorted(p.parent.name for p in PAPERS_DIR.glob("*/paper.yaml"))
