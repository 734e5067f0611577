"""`nox -s ui-check` (common.ui_check) on a hand-made comparison: a real MLflow server and a headless Chromium.

Skipped where Chromium is not installed, except under CI (CI=true), where .ci/run installs it and a missing
browser is a failure.
"""

import struct

import pytest

from common import browser, ui_check
from common.errors import PaperzooError
from common.paths import env_vars
from common.testing import browser_or_skip, lab_env, require_browser, seed_store
from common.tracking import Tracker, client

ARCHITECTURES = ("gpt", "mamba", "rwkv")


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """A store with one complete reproduction of the experiment 'compare' (three runs) and its report.html, whose
    one figure is a PNG file beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = tmp_path_factory.mktemp("ui")
    seed_store(root)
    tracker = Tracker("compare", lab_env(root)["MLFLOW_TRACKING_URI"])
    for arch in ARCHITECTURES:
        tags = {"task": "lm", "variant": arch, "seed": "0", "architecture": arch, "size": "tiny",
                "preset": "smoke", "reproduction": "r1", "reproduction_size": str(len(ARCHITECTURES))}  # fmt: skip
        tracker.start(f"lm/{arch}/s0", tags, {"lr": 1e-3})
        tracker.log_metrics({"train/loss": 1.0}, 1)
        tracker.end("FINISHED")
    report = root / "reports" / "compare"
    (report / "figures").mkdir(parents=True)
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([1, 2, 3], [1.0, 0.6, 0.4])
    fig.savefig(report / "figures" / "loss.png")
    plt.close(fig)
    (report / "report.html").write_text(
        '<!doctype html><html><body><h1>compare</h1><img alt="loss" src="figures/loss.png"></body></html>'
    )
    return root


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n"), f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_the_runs_are_listed_and_the_figures_load(comparison, tmp_path, capsys):
    require_browser()
    out = tmp_path / "shots"
    with env_vars(lab_env(comparison)):
        assert ui_check.main(["--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "list the 3 runs of reproduction r1" in printed and "all 1 figures loaded" in printed, printed
    for name in ("mlflow-compare-runs.png", "mlflow-runs.png", "report.png"):
        width, height = png_size(out / name)
        assert width >= 1000 and height >= 500 and (out / name).stat().st_size > 10_000, (name, width, height)


def test_a_run_missing_from_the_comparison_view_fails_the_check(comparison, tmp_path):
    driver = browser_or_skip()
    try:
        with env_vars(lab_env(comparison)):
            rep = ui_check.newest_comparison(client())
            runs = {run.info.run_id: run.info.run_name for run in rep.runs.values()}
            ghost = {**runs, "0" * 32: "lm/ghost/s0"}  # asked for, but not in the store
            with ui_check.mlflow_server() as base, pytest.raises(PaperzooError) as err:
                ui_check.check_mlflow(driver, base, "1", rep.id, ghost, tmp_path, timeout=3)
    finally:
        driver.quit()
    assert "comparison view" in str(err.value) and "does not list" in str(err.value)
    assert "0" * 32 in str(err.value).split("does not list")[1], err.value


def test_without_a_browser_it_says_it_skipped(monkeypatch, capsys):
    monkeypatch.setattr(browser, "missing", lambda: "no chromium (apt-get install chromium chromium-driver)")
    monkeypatch.delenv("CI", raising=False)
    assert ui_check.main([]) == 0
    assert capsys.readouterr().out.startswith("ui-check skipped: no chromium")
    monkeypatch.setenv("CI", "true")
    assert ui_check.main([]) == 1
    assert capsys.readouterr().err.startswith("ui-check skipped: no chromium")


def test_no_comparison_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(browser, "missing", lambda: None)
    seed_store(tmp_path)
    with env_vars(lab_env(tmp_path)):
        assert ui_check.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no reproduction; run `nox -s compare` first" in err[0], err
