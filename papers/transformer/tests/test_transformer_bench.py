"""bench.run at toy sizes: both files written, the KV cache reproduces recomputation."""

import json

from papers.transformer import bench


def test_bench_writes_tables(tmp_path):
    result = bench.run(tmp_path, train_steps=2, gen_tokens=16, attn_lengths=(32,), attn_repeats=1)
    assert json.loads((tmp_path / "bench.json").read_text()) == result
    assert result["generation"]["outputs_equal"] and result["training"]["tokens_per_s"] > 0
    assert [row["L"] for row in result["attention"]] == [32]
    md = (tmp_path / "bench.md").read_text()
    assert "threads" in md and "L=32" in md and "tokens/s" in md
