"""The report reads one complete reproduction, shows every seed, writes results.json, and never loses runs."""

import json
import shutil

import pytest

from common.paths import REPO_ROOT
from common.report import NOT_REPRODUCED, REPRODUCED, build_report, main, write_index
from common.tracking import Tracker

# (reproduction, preset, planned size, [(variant, seed, test/acc, status)]), oldest first
REPRODUCTIONS = [
    ("cpu0", "cpu", 2, [("mlp", 0, 0.6, "FINISHED"), ("linear", 0, 0.5, "FINISHED")]),
    ("full", "smoke", 6, [(v, s, acc, "FINISHED") for s, (mlp, lin) in enumerate([(1.0, 0.5), (0.98, 0.52), (0.96, 0.5)])
                          for v, acc in (("mlp", mlp), ("linear", lin))]),
    ("part", "smoke", 6, [("mlp", 0, 0.9, "FINISHED"), ("linear", 0, 0.5, "FINISHED"), ("mlp", 1, 0.9, "KILLED")]),
]  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A MLflow store with three reproductions of the template: one at cpu, one complete and one not at smoke."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = Tracker("_template", uri)
    for reproduction, preset, size, runs in REPRODUCTIONS:
        for variant, seed, acc, status in runs:
            tags = {"paper": "_template", "task": "rings", "variant": variant, "seed": str(seed), "preset": preset,
                    "reproduction": reproduction, "reproduction_size": str(size), "git_commit": "abc", "device_name": "cpu"}  # fmt: skip
            tracker.start(f"rings/{variant}/s{seed}", tags, {})
            tracker.log_metrics({"train/loss": 1.0}, 1)
            tracker.log_metrics({"train/loss": 0.5, "test/acc": acc}, 2)
            tracker.end(status)
    return uri


def test_the_latest_complete_reproduction_with_mean_and_std_over_seeds(store, tmp_path):
    report = build_report("_template", uri=store, out_root=tmp_path)  # "part" is newer but incomplete
    results = json.loads((tmp_path / "_template" / "results.json").read_text())
    assert (results["reproduction"], results["preset"], results["runs"], results["seeds"]) == (
        "full",
        "smoke",
        6,
        [0, 1, 2],
    )
    helps = next(c for c in results["claims"] if c["id"] == "hidden-layer-helps")
    assert helps["ours"]["per_seed"] == pytest.approx(
        {"0": 0.5, "1": 0.46, "2": 0.46}
    )  # seed by seed differences
    ours = helps["ours"]
    assert ours["mean"] == pytest.approx(1.42 / 3) and ours["std"] == pytest.approx(0.023094, abs=1e-5)
    assert (helps["criterion"], helps["verdict"]) == (">= 0.05", REPRODUCED)
    readme = (tmp_path / "_template" / "README.md").read_text()
    assert (
        "ours (mean ± std of 3 seeds)" in readme and "s0: +50.0 pts, s1: +46.0 pts, s2: +46.0 pts" in readme
    )
    assert "+47.3 pts ± 2.3 pts" in readme and "reproduction `full`" in readme
    assert (
        "ours (mean ± std of 3 seeds)" in report.console()
        and "2 claims: 1 reproduced, 1 no criterion" in report.console()
    )
    index = (tmp_path / "README.md").read_text()  # built from results.json
    assert "| Template Paper | [_template](_template/README.md) | smoke | 1 | 0 | 0 | 0 | 1 |" in index


def test_another_reproduction_or_preset_on_request(store, tmp_path):
    part = build_report("_template", reproduction="part", uri=store, out_root=tmp_path)
    assert part.reproduction.seeds == ["0"] and not part.reproduction.complete
    assert "(incomplete: 2 of 6 runs finished)" in (tmp_path / "_template" / "README.md").read_text()
    cpu = build_report("_template", preset="cpu", uri=store, out_root=tmp_path / "cpu", force=True)
    assert cpu.reproduction.id == "cpu0" and cpu.results[0].verdict == NOT_REPRODUCED  # +0.1 < 0.3
    assert cpu.unmet() == ["hidden-layer-helps", "mlp-solves-rings"]  # mlp 60% < 95%
    none = build_report("_template", preset="gpu", uri=store, out_root=tmp_path / "gpu")
    assert none.reproduction is None and "nox -s reproduce-template" in none.note
    assert not (tmp_path / "gpu" / "_template").exists()


def test_a_report_is_not_replaced_by_one_from_fewer_runs_unless_forced(store, tmp_path):
    build_report("_template", uri=store, out_root=tmp_path)
    readme = tmp_path / "_template" / "README.md"
    before = readme.read_text()
    kept = build_report("_template", reproduction="part", uri=store, out_root=tmp_path)
    assert readme.read_text() == before and "kept" in kept.note and "--force" in kept.note
    build_report("_template", reproduction="part", uri=store, out_root=tmp_path, force=True)
    assert "reproduction `part`" in readme.read_text()


def test_report_on_an_empty_store_leaves_committed_reports_untouched(lab, capsys):
    shutil.copytree(REPO_ROOT / "reports", lab / "reports", ignore=shutil.ignore_patterns("report.html"))
    before = {p: p.read_bytes() for p in (lab / "reports").rglob("*") if p.is_file()}
    assert main([]) == 0
    after = {p: p.read_bytes() for p in (lab / "reports").rglob("*") if p.is_file()}
    assert after == before and not (lab / "reports" / "_template").exists()
    out = capsys.readouterr().out
    assert "transformer: no runs in the MLflow store; `nox -s reproduce-transformer` makes them" in out


def test_report_cli_strict_and_reproduction(store, lab, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert main(["template", "--preset", "cpu"]) == 0
    assert main(["template", "--preset", "cpu", "--strict", "--force"]) == 1
    assert main(["--reproduction", "full"]) == 0  # finds the paper that has it
    assert main(["--reproduction", "nope"]) == 2
    captured = capsys.readouterr()
    assert "hidden-layer-helps  MLP ~100%, linear ~50%  +10.0 pts" in captured.out
    assert (
        "--strict: 2 claims not reproduced: _template/hidden-layer-helps, _template/mlp-solves-rings"
        in captured.err
    )
    assert "error: no paper has runs of reproduction 'nope'" in captured.err


def test_the_index_reads_legacy_reports_without_results_json(tmp_path):
    shutil.copytree(
        REPO_ROOT / "reports" / "mamba", tmp_path / "mamba", ignore=shutil.ignore_patterns("*.html", "*.png")
    )
    (tmp_path / "mamba" / "results.json").unlink(missing_ok=True)
    index = write_index(tmp_path).read_text()
    assert "| [mamba](mamba/README.md) | cpu | 8 | 0 | 0 | 0 | 0 |" in index
