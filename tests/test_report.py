"""The report reads one complete reproduction, shows every seed, writes results.json, and never loses runs."""

import json
import shutil
from dataclasses import replace

import pytest

from common import report as report_module
from common.claims import NOT_REPRODUCED, REPRODUCED, shown_criterion
from common.experiment import Claim, Criterion, Measure
from common.paths import REPO_ROOT
from common.report import build_report, main, markdown_to_html, natural_key, shown_setting
from common.reproduce import reproduce
from common.tracking import Tracker

# (reproduction, preset, planned size, [(variant, seed, test/acc, status)]), oldest first
REPRODUCTIONS = [
    ("cpu0", "cpu", 2, [("mlp", 0, 0.6, "FINISHED"), ("linear", 0, 0.5, "FINISHED")]),
    ("uneven", "smoke", 4, [("mlp", s, acc, "FINISHED") for s, acc in enumerate([0.97, 0.99, 0.95])] +
                           [("linear", 0, 0.5, "FINISHED")]),  # seeds_by_run: three seeds for the MLP only
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


def test_runs_with_their_own_seeds_say_which_trained_which(store, tmp_path):
    report = build_report("_template", reproduction="uneven", uri=store, out_root=tmp_path)
    readme = (tmp_path / "_template" / "README.md").read_text()
    assert "seeds 0, 1, 2 (rings/mlp); 0 (rings/linear)." in readme
    assert "ours (mean ± std over its seeds)" in readme and "s0: 97.0%, s1: 99.0%, s2: 95.0%" in readme
    per_seed = {r.claim.id: r.per_seed for r in report.results}
    assert per_seed["hidden-layer-helps"] == pytest.approx({"0": 0.47})  # the seeds both runs trained
    assert len(per_seed["mlp-solves-rings"]) == 3


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


def test_a_lower_preset_never_replaces_a_higher_one_unless_forced(store, lab, monkeypatch, capsys):
    """A smoke reproduction (even one of more runs) keeps a cpu report byte for byte; --force replaces it."""
    build_report("_template", reproduction="cpu0", uri=store, out_root=lab / "reports")  # as if committed
    before = {p: p.read_bytes() for p in (lab / "reports").rglob("*") if p.is_file()}
    kept = build_report("_template", uri=store, out_root=lab / "reports")  # "full": smoke, 6 runs
    assert kept.reproduction.id == "full" and {p: p.read_bytes() for p in before} == before
    assert kept.note.endswith(
        "kept: it is a cpu report, reproduction full is at preset smoke; "
        "`python -m common.report _template --reproduction full --force` replaces it"
    )
    assert reproduce("template", ["scale=smoke", "progress=false"]) == 0  # in the lab's own store
    assert {
        p: p.read_bytes() for p in before
    } == before and "kept: it is a cpu report" in capsys.readouterr().out
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert main(["template", "--reproduction", "full", "--force"]) == 0
    results = json.loads((lab / "reports" / "_template" / "results.json").read_text())
    assert (results["preset"], results["reproduction"]) == ("smoke", "full")
    assert "| [_template](_template/README.md) | smoke |" in (lab / "reports" / "README.md").read_text()


def test_criteria_are_shown_in_the_unit_of_the_value():
    def claim(fmt, relative_to=None):
        return Claim("c", "s", Measure("t", "v", "test/acc", relative_to=relative_to), format=fmt)

    assert shown_criterion(claim("percent"), Criterion.parse(">= 0.95")) == "≥ 95.0%"
    assert shown_criterion(claim("percent"), Criterion.parse("< 0.6")) == "< 60.0%"
    assert shown_criterion(claim("percent", "linear"), Criterion.parse(">= 0.05")) == "≥ +5.0 pts"
    assert shown_criterion(claim("float", "gpt"), Criterion.parse("<= 0.05")) == "≤ +0.05"
    assert shown_criterion(claim("float"), Criterion.parse(">= 22")) == "≥ 22"
    assert shown_criterion(claim("float"), None) == "—"


def test_length_named_metrics_sort_by_number():
    names = ["acc/L1024", "test/acc", "acc/L128", "acc/train_len", "acc/L32"]
    assert sorted(names, key=natural_key) == ["acc/L32", "acc/L128", "acc/L1024", "acc/train_len", "test/acc"]


def test_html_colours_verdicts_scrolls_tables_and_lays_figures_in_a_grid(store, tmp_path):
    build_report("_template", uri=store, out_root=tmp_path)
    page = (tmp_path / "_template" / "report.html").read_text()
    assert '<td class="verdict reproduced"><b>reproduced</b></td>' in page
    assert '<td class="verdict other"><b>no criterion</b></td>' in page
    assert page.count('<div class="scroll"><table>') == 3  # claims, rings metrics, runs: each in its own box
    assert page.count('<div class="figures"><img') == 1 and page.count("<img") == 3
    assert "| ≥ +5.0 pts | **reproduced** |" in (tmp_path / "_template" / "README.md").read_text()
    verdicts = markdown_to_html("t", "| claim | verdict |\n|---|---|\n| a | **not reproduced** |\n"
                                "| b | **inconclusive (a: not reproduced)** |\n| c | **not run** (opt-in: slow) |", tmp_path)  # fmt: skip
    assert '<td class="verdict not-reproduced"><b>not reproduced</b></td>' in verdicts
    assert '<td class="verdict other"><b>inconclusive (a: not reproduced)</b></td>' in verdicts
    assert '<td class="verdict other"><b>not run</b> (opt-in: slow)</td>' in verdicts
    assert "<th>verdict</th>" in verdicts


@pytest.mark.parametrize(
    "second, said",
    [({"device_name": "Intel(R) Xeon(R) Processor", "threads": "2"}, "2 machines (AMD EPYC, 2 threads; Intel"),
     ({"threads": "1"}, "2 machines (AMD EPYC, 1 thread; AMD EPYC, 2 threads)"),
     ({"git_commit": "def"}, "2 commits (abc, def)")],
)  # fmt: skip
def test_a_report_from_two_machines_or_commits_says_so(tmp_path, second, said):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker("_template", uri)
    for variant, acc, extra in (("mlp", 1.0, {}), ("linear", 0.5, second)):
        tags = {"paper": "_template", "task": "rings", "variant": variant, "seed": "0", "preset": "cpu",
                "reproduction": "r", "reproduction_size": "2", "git_commit": "abc", "device": "cpu",
                "device_name": "AMD EPYC", "threads": "2", **extra}  # fmt: skip
        tracker.start(f"rings/{variant}/s0", tags, {})
        tracker.log_metrics({"train/loss": 0.5, "test/acc": acc}, 1)
        tracker.end("FINISHED")
    build_report("_template", uri=uri, out_root=tmp_path / "reports")
    readme = (tmp_path / "reports" / "_template" / "README.md").read_text()
    assert "**Mixed runs:**" in readme and said in readme


def test_accuracies_logged_with_their_trials_are_shown_with_a_wilson_interval(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker("_template", uri)
    for variant, metrics in (("mlp", {"acc/L64": 1.0, "n/acc/L64": 64, "acc/L8": 0.75, "n/acc/L8": 4}),
                             ("linear", {"acc/L64": 0.5})):  # fmt: skip
        tags = {"paper": "_template", "task": "rings", "variant": variant, "seed": "0", "preset": "cpu",
                "reproduction": "r", "reproduction_size": "2", "git_commit": "abc", "device_name": "cpu"}  # fmt: skip
        tracker.start(f"rings/{variant}/s0", tags, {})
        tracker.log_metrics({"train/loss": 0.5, "test/acc": metrics["acc/L64"], **metrics}, 1)
        tracker.end("FINISHED")
    build_report("_template", uri=uri, out_root=tmp_path / "reports")
    readme = (tmp_path / "reports" / "_template" / "README.md").read_text()
    assert "rings: accuracy with its Wilson 95% interval (of n test sequences, each one trial):" in readme
    assert "| variant | seed | acc/L8 | acc/L64 |" in readme  # only the metrics logged with their trials
    assert "| mlp | 0 | 75.0% [30.1, 95.4] of 4 | 100.0% [94.3, 100.0] of 64 |" in readme
    assert (
        "| linear | 0 |" not in readme.split("## Figures")[0]
    )  # no trials logged: not in the interval table
    assert "n/acc" not in readme  # the counts are not metrics of their own in the tables


def test_a_report_from_one_machine_and_commit_shows_its_threads_and_no_warning(store, tmp_path):
    build_report("_template", uri=store, out_root=tmp_path)
    readme = (tmp_path / "_template" / "README.md").read_text()
    assert "Mixed runs" not in readme and "hardware: cpu ·" in readme  # tags without a thread count


def test_the_claims_table_says_where_a_preset_is_scaled_down_from_the_paper(store, tmp_path, monkeypatch):
    build_report("_template", uri=store, out_root=tmp_path)  # reproduction "full", at preset smoke
    readme = (tmp_path / "_template" / "README.md").read_text()
    assert "| claim | statement | source | setting (paper → ours) | paper |" in readme
    assert "| Sec. 1 (toy) | noise 0.1 → noise 0.1, 60 steps | MLP ~100%, linear ~50% |" in readme
    assert "| Sec. 1 (toy) | — | 100.0% |" in readme  # mlp-solves-rings states no setting
    claims = json.loads((tmp_path / "_template" / "results.json").read_text())["claims"]
    assert [c["setting"] for c in claims] == [{"paper": "noise 0.1", "ours": "noise 0.1, 60 steps"}, None]
    html_page = (tmp_path / "_template" / "report.html").read_text()
    assert (
        "<th>setting (paper → ours)</th>" in html_page
        and "<td>noise 0.1 → noise 0.1, 60 steps</td>" in html_page
    )
    partial = Claim("c", "s", Measure("t", "v", "m"), setting={"paper": "L=4096, 16 tokens", "cpu": "L=64"})
    assert (shown_setting(partial, "cpu"), shown_setting(partial, "gpu")) == ("L=4096, 16 tokens → L=64",
                                                                              "L=4096, 16 tokens → —")  # fmt: skip
    plain = report_module.parse_claims
    monkeypatch.setattr(report_module, "parse_claims", lambda *a: [replace(c, setting={}) for c in plain(*a)])
    build_report("_template", uri=store, out_root=tmp_path / "plain")
    plain_readme = (tmp_path / "plain" / "_template" / "README.md").read_text()
    assert "setting" not in plain_readme  # no column when no claim states a setting


def test_the_spread_measured_before_judging_is_shown_for_the_preset(store, tmp_path, monkeypatch):
    plain = report_module.parse_claims
    spread = {"smoke": "s0-s2 x 1, 2 threads: 95 .. 100%", "cpu": "not this one"}
    monkeypatch.setattr(report_module, "parse_claims", lambda *a: [replace(c, spread=spread) if c.id == "mlp-solves-rings"
                                                                   else c for c in plain(*a)])  # fmt: skip
    build_report("_template", uri=store, out_root=tmp_path)  # reproduction "full", at preset smoke
    readme = (tmp_path / "_template" / "README.md").read_text()
    assert "- mlp-solves-rings: s0-s2 x 1, 2 threads: 95 .. 100%" in readme and "not this one" not in readme
    claims = json.loads((tmp_path / "_template" / "results.json").read_text())["claims"]
    assert [c["spread"] for c in claims] == [None, spread["smoke"]]


def test_a_paper_draws_figures_of_its_own_from_the_runs(store, tmp_path, monkeypatch, capsys):
    from papers._template import experiment as template

    def figures(mlflow_client, runs, folder):
        (folder / "accuracy.png").write_bytes(b"png")
        return [(f"{len(runs)} runs, {sorted({v for _, v, _ in runs})}", "accuracy.png")]

    monkeypatch.setattr(template, "figures", figures, raising=False)
    build_report("_template", uri=store, out_root=tmp_path)  # "full": 6 runs
    readme = (tmp_path / "_template" / "README.md").read_text()
    assert "![6 runs, ['linear', 'mlp']](figures/accuracy.png)" in readme
    assert (tmp_path / "_template" / "figures" / "accuracy.png").read_bytes() == b"png"

    def broken(mlflow_client, runs, folder):
        raise OSError("no artifact model/model.safetensors\nsecond line")

    monkeypatch.setattr(template, "figures", broken)
    build_report("_template", uri=store, out_root=tmp_path / "broken", force=True)
    assert "warning: _template: its own figures were not drawn: no artifact" in capsys.readouterr().err
    assert "## Figures" in (tmp_path / "broken" / "_template" / "README.md").read_text()


def test_arxiv_links_take_one_id_or_several():
    from common.report import arxiv_links

    assert arxiv_links("2312.00752") == "[2312.00752](https://arxiv.org/abs/2312.00752)"
    assert arxiv_links(["2305.13048", "2503.14456"]) == (
        "[2305.13048](https://arxiv.org/abs/2305.13048), [2503.14456](https://arxiv.org/abs/2503.14456)"
    )
