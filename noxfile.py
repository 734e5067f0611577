"""paperzoo's commands. `nox -l` lists them; `nox -s <name> -- <args>` runs one.

Every session shares ONE environment, `.venv/` at the repository root, created on first use and
reinstalled only when pyproject.toml or the torch pin changes (nox itself has no shared-venv
option). torch is pinned here and nowhere else.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
ENV = ROOT / ".venv"
PY = str(ENV / "bin" / "python")
# The one torch pin. 2.13.0 is the CPU wheel on the lab's machines; override with PAPERZOO_TORCH.
TORCH_PIN = os.environ.get("PAPERZOO_TORCH", "torch==2.13.0")

nox.options.default_venv_backend = "none"
nox.options.sessions = ["tests"]
nox.options.error_on_external_run = False


def shared_env(session: nox.Session) -> None:
    """Create/refresh the shared environment when its inputs changed."""
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH_PIN.encode()).hexdigest()
    stamp = ENV / ".paperzoo-stamp"
    if stamp.exists() and stamp.read_text() == want and Path(PY).exists():
        return
    if not Path(PY).exists():
        session.run(sys.executable, "-m", "venv", str(ENV), external=True)
    session.run(PY, "-m", "pip", "install", "-q", "--upgrade", "pip", external=True)
    session.run(PY, "-m", "pip", "install", "-q", TORCH_PIN, external=True)
    session.run(PY, "-m", "pip", "install", "-q", "-e", ".[dev]", external=True)
    stamp.write_text(want)


sys.path.insert(0, str(ROOT))
from common.paths import discover_papers as papers  # noqa: E402  (torch-free)
from common.paths import session_name  # noqa: E402

# glibc returns large freed blocks to the OS and page-faults them back on the next step: with the
# big scan intermediates of the SSM papers that is a third of CPU time. Keep them in the heap.
MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(2**32),
    "MALLOC_TRIM_THRESHOLD_": str(2**34),
    "MALLOC_TOP_PAD_": str(2**29),
}


def run_py(session: nox.Session, *args: str, env: dict[str, str] | None = None) -> None:
    shared_env(session)
    session.run(PY, *args, external=True, env={**MALLOC_ENV, **(env or {})})


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (CPU; GPU tests skip without CUDA). Extra args go to pytest."""
    run_py(
        session,
        "-m",
        "pytest",
        "-q",
        *session.posargs,
        env={"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"},
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check."""
    shared_env(session)
    session.run(str(ENV / "bin" / "ruff"), "check", ".", external=True)
    session.run(str(ENV / "bin" / "ruff"), "format", "--check", ".", external=True)


def _reproduce_session(slug: str):
    def reproduce(session: nox.Session) -> None:
        run_py(session, "-m", "common.reproduce", slug, *session.posargs)

    reproduce.__doc__ = f"Reproduce papers/{slug}: train every variant, log to MLflow, write reports/{slug}/."
    return reproduce


for _slug in papers():
    nox.session(name=f"reproduce-{session_name(_slug)}")(_reproduce_session(_slug))


@nox.session
def reproduce(session: nox.Session) -> None:
    """Reproduce the paper named by the first argument: `nox -s reproduce -- mamba scale=smoke`."""
    run_py(session, "-m", "common.reproduce", *session.posargs)


@nox.session(name="reproduce-all")
def reproduce_all(session: nox.Session) -> None:
    """Reproduce every paper (not the template), each after the papers its runs start from (init_from)."""
    run_py(session, "-m", "common.reproduce", "--all", *session.posargs)


@nox.session
def compare(session: nox.Session) -> None:
    """Every architecture on the same tasks and budgets (comparisons/architectures.yaml) -> MLflow experiment
    `compare` and reports/compare/: `nox -s compare -- [scale=smoke] [resume=true] [only=[shakespeare]]`."""
    run_py(session, "-m", "common.reproduce", "compare", *session.posargs)


@nox.session
def report(session: nox.Session) -> None:
    """Rebuild reports/<paper>/ and reports/README.md from MLflow: `nox -s report -- [paper] [--reproduction ID]`."""
    run_py(session, "-m", "common.report", *session.posargs)


@nox.session(name="mlflow-ui")
def mlflow_ui(session: nox.Session) -> None:
    """MLflow UI on http://127.0.0.1:5000 over the lab's store; stopping nox stops the server too."""
    shared_env(session)
    # nox becomes the launcher (same pid), which stops the server's whole process group on a signal.
    os.execve(PY, [PY, "-m", "common.mlflow_ui", *session.posargs], {**os.environ, **MALLOC_ENV})


@nox.session(name="ui-check")
def ui_check(session: nox.Session) -> None:
    """The MLflow UI and reports/compare/report.html in headless Chromium: runs listed, figures loaded, screenshots.

    `nox -s ui-check -- [--smoke] [--out DIR] [--port N]`; --smoke first runs a smoke comparison in a temporary
    folder (what CI runs)."""
    run_py(session, "-m", "common.ui_check", *session.posargs)


@nox.session(name="new-paper")
def new_paper(session: nox.Session) -> None:
    """Start a paper from papers/_template: `nox -s new-paper -- my-idea --title "My Idea"`."""
    run_py(session, "-m", "common.scaffold", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Speed benchmarks: the shared loop's overhead (reports/lab/bench.md), then every paper that has
    bench.py (reports/<paper>/bench.md; extra args go to those)."""
    run_py(session, "-m", "common.bench_loop", "--out", str(ROOT / "reports" / "lab"))
    for slug in papers():
        if (ROOT / "papers" / slug / "bench.py").exists():
            run_py(
                session, "-m", f"papers.{slug}.bench", "--out", str(ROOT / "reports" / slug), *session.posargs
            )


@nox.session
def golden(session: nox.Session) -> None:
    """Regenerate tests/golden/<paper>.json, the smoke presets' loss per step: `nox -s golden -- [paper ...]`."""
    run_py(session, "-m", "common.golden", *session.posargs, env={"OMP_NUM_THREADS": "1"})


@nox.session(name="gpu-check")
def gpu_check(session: nox.Session) -> None:
    """On a CUDA machine: GPU tests, each paper's gpu preset briefly, GPT tokens/s and MFU -> reports/gpu-check.md."""
    run_py(session, "-m", "common.gpu_check", *session.posargs)
