"""Helpers for the tests of the lab and of every paper (smoke reproductions, CLI error checks, a headless
browser, and ``check_mixer``: the contract every sequence mixer of ``common.models.lm`` must keep).

Loaded as a pytest plugin (``-p common.testing`` in pyproject.toml), so the ``lab`` fixture is
available to every test file under tests/ and papers/.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from common.paths import REPO_ROOT, env_vars


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


_STORE_TEMPLATE: list[Path] = []  # this process's empty MLflow store, made once (``seed_store``)


def seed_store(root: Path) -> Path:
    """Put an empty, fully created MLflow store at ``lab_env(root)``'s ``mlflow.db`` unless one is there; its path.

    Creating a SQLite store runs MLflow's schema migrations (3-6 s on 2 cores) in every test that trains into a
    fresh store. The first call creates one store through ``common.tracking.client`` (the lab's own path) in a
    private folder; every call copies that file, the bytes a fresh store would have. Only for a test's setup:
    a test of the store's creation, or of a command that must log nothing, does not seed its store."""
    import atexit
    import shutil
    import tempfile

    target = root / "mlflow.db"
    if target.exists():
        return target
    if not _STORE_TEMPLATE:
        from common.tracking import client

        folder = Path(tempfile.mkdtemp(prefix="paperzoo-store-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        client(f"sqlite:///{folder / 'mlflow.db'}")
        _STORE_TEMPLATE.append(folder / "mlflow.db")
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_STORE_TEMPLATE[0], target)
    return target


def reproduce_in(root: Path, *args: str) -> int:
    """``python -m common.reproduce <args>`` run in this process, into the store of ``lab_env(root)`` (seeded
    first: ``seed_store``); the exit status. For a test's setup and checks, where the command line itself is not
    under test: a new interpreter costs ~10 s of imports (torch, MLflow, torch._dynamo) before the first step."""
    from common.reproduce import main

    seed_store(root)
    with env_vars(lab_env(root)):
        return main(list(args))


def reproduce_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """``common.reproduce.main(args)`` in this process, as ``run_cli("-m", "common.reproduce", *args)`` reports it:
    the exit status and what ``capsys`` caught. For more bad inputs of a command whose one-line error a test has
    already checked through a real interpreter (``run_cli``), without ~3 s of imports for each."""
    from common.reproduce import main

    capsys.readouterr()  # only this call's output
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["common.reproduce", *args], code, out, err)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """A bad input: non-zero exit, exactly one 'error: ...' line on stderr, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def smoke_reproduction(
    lab: Path, slug: str, *overrides: str
) -> tuple[str, dict[tuple[str, str], dict[str, float]]]:  # fmt: skip
    """Run ``python -m common.reproduce <slug> scale=smoke <overrides>`` (in this process: ``reproduce_in``)
    into the ``lab`` store; assert that it succeeded and that a run measured every claim. Returns the report's
    README text and the final metrics of each (task, variant) run."""
    from common.tracking import client

    assert reproduce_in(lab, slug, "scale=smoke", "progress=false", *overrides) == 0
    readme = (lab / "reports" / slug / "README.md").read_text()
    assert "**not run**" not in readme  # every claim was measured by a run
    mlflow_client = client()
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name(slug).experiment_id])
    return readme, {(r.data.tags["task"], r.data.tags["variant"]): r.data.metrics for r in runs}


def require_browser() -> None:
    """Skip the test where Chromium, chromedriver or selenium is missing (``common.browser``), except under CI
    (CI=true), where .ci/run installs them and a missing one fails the test."""
    from common.browser import missing

    lacks = missing()
    if lacks and os.environ.get("CI") == "true":
        pytest.fail(f"CI: {lacks}; .ci/run installs them")
    if lacks:
        pytest.skip(lacks)


def browser_or_skip():
    """A headless Chromium driven by Selenium (``common.browser``), which the test quits; ``require_browser`` first."""
    from common.browser import headless_chromium

    require_browser()
    return headless_chromium()


@pytest.fixture
def lab_copy(tmp_path) -> Path:
    """A scratch copy of the lab (common/, the template paper, pyproject.toml) that a test may break."""
    import shutil

    repo = tmp_path / "lab"
    (repo / "papers").mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO_ROOT / "common", repo / "common", ignore=ignore)
    shutil.copytree(REPO_ROOT / "papers" / "_template", repo / "papers" / "_template", ignore=ignore)
    shutil.copy(REPO_ROOT / "papers" / "__init__.py", repo / "papers")
    shutil.copy(REPO_ROOT / "pyproject.toml", repo)
    return repo


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
        if item.get_closest_marker("gpu") is not None:  # the marker, not a parameter id that says "gpu"
            item.add_marker(skip)


def check_mixer(
    make_mixer: Callable,
    d_model: int,
    batch: int = 2,
    length: int = 63,
    state_grows: bool = False,
    seed: int = 0,
    atol: float = 1e-10,
) -> None:
    """Assert, in fp64, the mixer contract of ``common.models.lm`` for the module ``make_mixer()`` builds:

    1. causality: changing token t changes no output before t (and does change the output at t);
    2. the parallel ``forward`` equals ``step`` run token by token;
    3. ``prefill`` in two chunks (the second from a nonzero position) then ``step`` equals one forward;
    4. unless ``state_grows`` (a KV cache), the state's size does not depend on the position.
    """
    import torch

    from common.experiment import Mixer
    from common.models.lm import init_state, prefill, state_tensors, step

    torch.manual_seed(seed)
    mixer = make_mixer().double().eval()
    assert isinstance(mixer, Mixer), (
        f"{type(mixer).__name__} lacks forward, init_state or step (common.experiment.Mixer)"
    )
    x = torch.randn(batch, length, d_model, dtype=torch.float64)

    def fresh():
        return init_state(mixer, batch, x.device, x.dtype)

    def steps(x, state, start):
        ys = []
        for t in range(x.shape[1]):
            y, state = step(mixer, x[:, t], state, start + t, {})
            ys.append(y)
        return torch.stack(ys, dim=1), state

    with torch.no_grad():
        full = mixer(x)
        t = length // 2
        changed = x.clone()
        changed[:, t] += 1.0
        y = mixer(changed)
        torch.testing.assert_close(y[:, :t], full[:, :t], rtol=0, atol=atol, msg=f"not causal at t={t}")
        assert (y[:, t] - full[:, t]).abs().max() > 1e-6, "token t does not change the output at t"

        stepped, _ = steps(x, fresh(), 0)
        torch.testing.assert_close(stepped, full, rtol=0, atol=atol, msg="step by step != forward")

        a, b = length // 4, length // 2 + 1
        y1, state = prefill(mixer, x[:, :a], fresh(), 0, {})
        y2, state = prefill(mixer, x[:, a:b], state, a, {})
        y3, _ = steps(x[:, b:], state, b)
        chunked = torch.cat([y1, y2, y3], dim=1)
        torch.testing.assert_close(chunked, full, rtol=0, atol=atol, msg="prefill + step != forward")

        if not state_grows:
            sizes = {sum(s.numel() for s in state_tensors(fresh()))}
            for n in (1, length):
                sizes.add(sum(s.numel() for s in state_tensors(prefill(mixer, x[:, :n], fresh(), 0, {})[1])))
            assert len(sizes) == 1, f"the state's size depends on the position: {sorted(sizes)}"
