"""bench.run at toy sizes: files written, every path timed or marked, the references skipped when too slow, the
official runtime timed on the same model; and fla_naive's wkv7_fla mapping, which the bench times, against
our reference. No timing assertions."""

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F

from common import fla
from common.errors import PaperzooError
from papers.rwkv import bench, fla_naive
from papers.rwkv.ops import wkv7_ref

TINY_LM = dict(vocab_size=50, d_model=32, n_layers=1, head_size=16)


def fla_installed() -> bool:
    try:
        fla_naive.dplr_naive()
    except PaperzooError:
        return False
    return True


def test_bench_writes_tables_and_skips_slow_references(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "REFERENCE_BUDGET_S", 0.0)  # any extrapolated reference time is too long
    lines = []
    result = bench.run(
        tmp_path, lengths=(8, 16), repeats=1, lm=TINY_LM, gen_prompt=4, gen_tokens=3, log=lines.append
    )

    for kernel, others in (
        ("wkv4", ["reference"]),
        ("wkv7", ["reference", "fla_recurrence", "fla_chunkwise"]),
    ):
        first, second = result[kernel]
        assert [first["L"], second["L"]] == [8, 16]
        assert isinstance(first["fast"], float) and isinstance(second["fast"], float)
        for path in others:
            if first[path] == "not installed":
                assert second[path] == "not installed" and path.startswith("fla") and not fla_installed()
            else:
                assert isinstance(first[path], float) and f"speedup_vs_{path}" in first
                assert second[path] == "skipped" and f"speedup_vs_{path}" not in second
    assert isinstance(result["wkv7"][0]["fla_recurrence"], float) == fla_installed()

    gen = result["generation"]
    assert [r["arch"] for r in gen["rows"]] == ["rwkv4", "rwkv7"] and gen[
        "threads"
    ] == torch.get_num_threads()
    for row in gen["rows"]:
        assert row["ours_ms_per_token"] > 0 and row["params"] > 0
        if importlib.util.find_spec("rwkv") is None:
            assert row["official_ms_per_token"] == "not installed"
        else:
            assert row["official_ms_per_token"] > 0 and row["speedup_vs_official"] > 0
            assert row["max_abs_logit_diff"] < 1e-4  # both runtimes ran the same model on the same tokens

    assert json.loads((tmp_path / "bench.json").read_text()) == result
    md = (tmp_path / "bench.md").read_text()
    assert "| 8 |" in md and "| 16 |" in md and "skipped" in md and result["torch"] in md
    assert "rwkv7" in md and len(result["targets"]) == 4
    assert all(f"- {target}" in md for target in result["targets"])
    assert "L = 1024: not measured" in result["targets"][0]  # the run had no L = 1024
    assert any("fwd+bwd" in line for line in lines) and any("generation" in line for line in lines)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_wkv7_fla_is_our_recurrence(chunk_size):
    if not fla_installed():
        pytest.skip("fla-core (with einops) is not installed")
    g = torch.Generator().manual_seed(0)
    B, T, H, N = 2, 7, 2, 8  # T not a multiple of the chunk: wkv7_fla pads
    rand = lambda: torch.randn(B, T, H, N, generator=g)  # noqa: E731
    kk = F.normalize(rand(), dim=-1)
    r, k, v, w = rand(), rand(), rand(), -0.6 * torch.rand(B, T, H, N, generator=g)
    a, b, S0 = -kk, kk * torch.rand(B, T, H, N, generator=g), torch.randn(B, H, N, N, generator=g)
    y, S = fla_naive.wkv7_fla(r, w, k, v, a, b, S0, chunk_size=chunk_size)
    y_ref, S_ref = wkv7_ref(*(x.double() for x in (r, w, k, v, a, b)), state=S0.double())
    assert y.shape == (B, T, H, N) and S.shape == (B, H, N, N) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(S.double(), S_ref, rtol=1e-4, atol=1e-4)


def test_missing_fla_core_is_one_clear_error_and_not_installed_in_the_bench(monkeypatch):
    def not_installed(name):
        raise fla.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(fla.importlib.metadata, "distribution", not_installed)
    fla.fla_naive.cache_clear()  # errors are not cached: the next call looks again
    with pytest.raises(PaperzooError, match="^fla-core is not installed") as missing:
        fla_naive.dplr_naive()
    assert "\n" not in str(missing.value)
    row = bench.bench_kernel(
        "wkv7", bench._wkv7_inputs, bench._wkv7_paths(), (4,), 1, torch.device("cpu"), print
    )
    assert row[0]["fla_recurrence"] == row[0]["fla_chunkwise"] == "not installed"
    assert isinstance(row[0]["reference"], float) and "speedup_vs_fla_recurrence" not in row[0]
