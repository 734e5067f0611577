"""common.bench_loop at a toy size: both timings measured, files written."""

import json

import pytest

from common import bench_loop


def test_bench_loop_times_the_loop_and_the_bare_step(tmp_path):
    lines = []
    gpt = dict(n_layers=1, n_heads=2, d_model=16, block_size=16)
    result = bench_loop.run(
        tmp_path, steps=4, gpt=gpt, batch_size=4, log_every=2, repeats=2, log=lines.append
    )
    assert result["bare_ms_per_step"] > 0 and result["loop_ms_per_step"] > 0
    assert result["overhead"] == pytest.approx(result["loop_ms_per_step"] / result["bare_ms_per_step"] - 1)
    assert result["model"]["n_layers"] == 1 and result["model"]["params"] > 0
    assert json.loads((tmp_path / "bench.json").read_text()) == result
    md = (tmp_path / "bench.md").read_text()
    assert "loop overhead" in md and result["torch"] in md and f"{result['bare_ms_per_step']:.1f}" in md
    assert len(lines) == 2 and "loop step" in lines[-1]
