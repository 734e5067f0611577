"""The paper as the lab runs it: presets, the plan, and a smoke reproduction through the CLI into MLflow."""

import pytest

from common.claims import NOT_RUN
from common.config import load_config
from common.experiment import load_paper
from common.paths import data_dir
from common.testing import assert_one_line_error, reproduce_in, reproduce_main, run_cli
from common.tracking import client

CLAIMS = ["wmt14-en-de-base", "wmt14-en-de-big", "wmt14-en-fr-base", "wmt14-en-fr-big", "multi30k-bleu",
          "multi30k-multi-head", "multi30k-learned-positions", "copy-exact", "gpt-shakespeare-char"]  # fmt: skip
RUNS = {("copy", "transformer"), ("multi30k", "base"), ("multi30k", "one_head"), ("multi30k", "learned_pos"),
        ("shakespeare_char", "gpt")}  # fmt: skip

needs_data = pytest.mark.skipif(
    data_dir() is None
    or not (data_dir() / "multi30k" / "train.de.gz").is_file()
    or not (data_dir() / "tinyshakespeare" / "input.txt").is_file(),
    reason="no offline Multi30k / tinyshakespeare",
)


def _plan(*overrides):
    paper = load_paper("transformer")
    cfg = load_config(paper.schema, paper.path / "configs", list(overrides))
    return cfg, {run.key: run for run in paper.plan(cfg)}


def test_every_claim_is_measured_by_a_run_or_recorded_as_not_run():
    meta = load_paper("transformer").meta
    assert [c["id"] for c in meta["claims"]] == CLAIMS
    for scale in ("smoke", "cpu", "gpu"):
        _, runs = _plan(f"scale={scale}")
        assert {tuple(key.split("/")) for key in runs} == RUNS
        for claim in meta["claims"]:
            m = claim["measure"]
            measured = (m["task"], m["variant"]) in RUNS
            assert measured == (not claim["id"].startswith("wmt14")), claim["id"]
            if m.get("relative_to"):
                assert (m["task"], m["relative_to"]) in RUNS
            assert set(claim["criteria"]) == {"smoke", "cpu", "gpu"}


def test_presets_follow_the_recipes():
    for scale, recipe in (("cpu", (4, 4, 128, 64, 12, 2000, 0.0)), ("gpu", (6, 6, 384, 256, 64, 5000, 0.2))):
        cfg, runs = _plan(f"scale={scale}")
        g = cfg.shakespeare_char  # nanoGPT's shakespeare_char CPU / GPU recipes
        shape = (g.model.n_layers, g.model.n_heads, g.model.d_model, g.model.block_size)
        assert (*shape, g.train.batch_size, g.train.max_steps, g.model.dropout) == recipe
        assert (g.train.lr, g.train.min_lr) == (1e-3, 1e-4)
        base = runs["multi30k/base"].train
        assert (base.optimizer.value, base.schedule.value, base.beta2, base.eps) == (
            "adam",
            "noam",
            0.98,
            1e-9,
        )
        assert base.noam_d_model == cfg.multi30k.model.d_model  # Eq. 3 uses the model's width
        params = {v: runs[f"multi30k/{v}"].params for v in ("base", "one_head", "learned_pos")}
        assert cfg.multi30k.model.n_heads == {"cpu": 4, "gpu": 8}[scale]
        assert cfg.multi30k.model.positions == "sinusoidal"
        assert params == {"base": {}, "one_head": {"n_heads": 1}, "learned_pos": {"positions": "learned"}}
        assert {runs[f"multi30k/{v}"].section for v in params} == {"multi30k"}
        assert base.average_last == 5  # Sec. 6.1: the base model averages its last 5 checkpoints
    gpu = _plan("scale=gpu")[0].multi30k.model
    assert (gpu.n_layers, gpu.d_model, gpu.n_heads) == (3, 256, 8)  # the small Transformer of the claim
    _, runs = _plan("scale=gpu", "wmt14.enabled=true")
    assert "wmt14_en_de/base" in runs  # opt-in Table 2 run (downloads WMT 2014: not built here)


def test_variants_share_the_task_and_differ_only_where_they_should():
    _, runs = _plan("scale=smoke")
    base, one, learned = (runs[f"multi30k/{v}"] for v in ("base", "one_head", "learned_pos"))
    assert base.data is one.data is learned.data  # one tokenizer and dataset, loaded once
    # each variant's params: its change to the section's model (Table 3 rows A and E)
    assert (base.params, one.params, learned.params) == ({}, {"n_heads": 1}, {"positions": "learned"})


def test_bad_overrides_are_one_line_errors(lab, capsys):
    bad = run_cli("-m", "common.reproduce", "transformer", "scale=smoke", "multi30k.model.d_modle=64")
    assert_one_line_error(bad, "d_modle")
    # the same command line, checked once above: this bad input in this process
    bad = reproduce_main(capsys, "transformer", "scale=smoke", "multi30k.variants=[two_heads]")
    assert_one_line_error(bad, "two_heads")


@needs_data
def test_smoke_reproduction_writes_the_report_from_mlflow(lab):
    assert reproduce_in(lab, "transformer", "scale=smoke", "progress=false") == 0
    readme = (lab / "reports" / "transformer" / "README.md").read_text()
    assert "Preset **smoke**" in readme and "Attention Is All You Need" in readme
    for claim in CLAIMS:
        assert f"| {claim} |" in readme
    rows = {line.split("|")[1].strip(): line for line in readme.splitlines() if line.startswith("| wmt14")}
    assert all(f"**{NOT_RUN}**" in rows[c] for c in CLAIMS[:4])  # Table 2: recorded, not run
    assert readme.count(f"**{NOT_RUN}**") == 4
    for name in ("curves_multi30k.png", "curves_copy.png", "curves_shakespeare_char.png",
                 "claim_multi30k-multi-head.png"):  # fmt: skip
        assert (lab / "reports" / "transformer" / "figures" / name).stat().st_size > 1000
    mlflow_client = client()
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("transformer").experiment_id])
    assert {(r.data.tags["task"], r.data.tags["variant"]) for r in runs} == RUNS
    expected = {"copy": "test/exact_match", "multi30k": "test/bleu", "shakespeare_char": "val/loss"}
    for run in runs:
        assert run.info.status == "FINISHED" and run.info.run_id in readme
        assert expected[run.data.tags["task"]] in run.data.metrics
        assert run.data.tags["preset"] == "smoke" and "train.noam_d_model" in run.data.params
    heads = {r.data.tags["variant"]: r.data.params.get("model.n_heads") for r in runs}  # as built (zoo spec)
    assert (heads["base"], heads["one_head"]) == ("4", "1")
