"""Helpers for the tests of the lab and of every paper (smoke reproductions, CLI error checks).

Loaded as a pytest plugin (``-p common.testing`` in pyproject.toml), so the ``lab`` fixture is
available to every test file under tests/ and papers/.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.paths import REPO_ROOT


def lab_env(root: Path) -> dict[str, str]:
    """Environment that sends MLflow, checkpoints, reports and caches to ``root`` and forbids downloads."""
    return {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "PAPERZOO_RUNS": str(root / "runs"),
        "PAPERZOO_REPORTS": str(root / "reports"),
        "PAPERZOO_CACHE": str(root / "cache"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
    }


def run_cli(*args: str, cwd: Path = REPO_ROOT, timeout: float = 300, env: dict | None = None):
    """Run ``python <args>`` as a user would, with the current environment plus ``env``."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=full_env)  # fmt: skip


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """A bad input: non-zero exit, exactly one 'error: ...' line on stderr, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """Point MLflow, checkpoints, reports and caches at tmp_path (for this process and its children)."""
    for key, value in lab_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    return tmp_path


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip cleanly on a machine without CUDA."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
