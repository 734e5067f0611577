"""The LoRA benchmark runs end to end on a tiny GPT and writes its table (speed is measured by `nox -s bench`,
never asserted)."""

import json

import pytest

from papers.lora import bench

pytest.importorskip("peft")


def test_bench_times_ours_peft_and_ft_on_one_model_and_writes_tables(tmp_path, monkeypatch):
    tiny = dict(model=dict(n_layers=2, n_heads=2, d_model=16, vocab_size=64, block_size=16), batch=(2, 8))
    monkeypatch.setattr(bench, "SIZES", {"tiny": tiny})
    result = bench.run(tmp_path, sizes=("tiny",), repeats=1, log=lambda line: None)
    (row,) = result["rows"]
    d, r = 16, bench.R
    assert row["ours"]["trainable"] == 2 * (2 * r * d + 2 * d * r)  # A_q, A_v (r, d); B_q, B_v (d, r)
    assert row["peft"]["trainable"] == 2 * (2 * r * d + 3 * d * 2 * r)  # rank 2r on the whole c_attn
    assert row["ft"]["trainable"] == row["hf_ft"]["trainable"]  # one model, two implementations
    assert row["ours"]["optimizer_mb"] < row["ft"]["optimizer_mb"] / 10
    assert row["ours_speed_over_peft"] > 0
    assert json.loads((tmp_path / "bench.json").read_text())["rows"][0]["size"] == "tiny"
    markdown = (tmp_path / "bench.md").read_text()
    assert "| tiny | 2 x 8 | peft |" in markdown and "ours" in markdown and "target >= 1.0x" in markdown
