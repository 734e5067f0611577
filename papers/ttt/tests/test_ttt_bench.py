"""The TTT benchmark runs end to end on tiny sizes and writes its tables (speed is measured by `nox -s bench`,
never asserted here)."""

import pytest
import torch

from common.errors import PaperzooError
from common.fla import fla_naive
from papers.ttt import bench
from papers.ttt.ops import _layer_norm


def test_bench_writes_tables_skips_a_slow_primal_and_times_fla(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "REFERENCE_BUDGET_S", 0.0)  # the reference is timed at the first length only
    monkeypatch.setattr(bench, "KERNEL", dict(batch=1, heads=2, head_dim=8, mini_batch=4))
    lines = []
    tiny_lm = dict(vocab_size=30, d_model=16, n_layers=1, n_heads=2)
    result = bench.run(tmp_path, lengths=(8, 16), repeats=1, lm=tiny_lm, positions=(4, 16), log=lines.append)
    for kernel in ("ttt_linear", "ttt_mlp"):
        first, second = result[kernel]
        assert all(isinstance(first[p], float) for p in ("fast", "primal", "reference"))
        assert isinstance(second["primal"], float) and "speedup_vs_primal" in second
        assert second["reference"] == "skipped" and "speedup_vs_reference" in first
    try:
        fla_naive(bench.FLA_TTT)
        assert isinstance(result["ttt_linear"][1]["fla_naive"], float)
    except PaperzooError:
        assert result["ttt_linear"][0]["fla_naive"] == "not installed"
    rows = {row["model"]: row for row in result["generation"]}
    assert rows["TTT-Linear"]["state_ratio"] == rows["TTT-MLP"]["state_ratio"] == 1.0
    assert rows["GPT (KV cache)"]["state_ratio"] == 4.0  # its cache: 16 positions / 4
    markdown = (tmp_path / "bench.md").read_text()
    assert (
        "## Targets" in markdown and "dual vs primal form" in markdown and (tmp_path / "bench.json").exists()
    )


def test_the_benchmarked_fla_path_computes_the_same_layer():
    """The fla column times the same inner loop as ours (its output rule z̄ + LN(z̄) applied to our z̄)."""
    x = bench._inputs("linear")(12, torch.device("cpu"))
    try:
        fla_naive(bench.FLA_TTT)
    except PaperzooError as missing:
        pytest.skip(str(missing))
    with torch.no_grad():
        theirs = bench._fla_linear(**x).transpose(1, 2)  # (B, H, T, D)
        ln = tuple(x["ln"])
        z_bar = bench.ttt_dual(
            x["q"], x["k"], x["v"], x["eta"], tuple(x["weights"]), ln, bench.KERNEL["mini_batch"]
        )[0]
    torch.testing.assert_close(theirs, z_bar + _layer_norm(z_bar, ln), rtol=1e-4, atol=1e-4)
