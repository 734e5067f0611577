"""bench.run at toy sizes: files written, every path timed or marked, the reference skipped when too slow."""

import json

from papers.mamba import bench


def test_bench_writes_tables_and_skips_slow_reference(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "REFERENCE_BUDGET_S", 0.0)  # any extrapolated reference time is too long
    lines = []
    result = bench.run(
        tmp_path,
        lengths=(8, 16),
        repeats=1,
        inference_lengths=(300,),
        gen_positions=(3, 6),
        gen_tokens=2,
        log=lines.append,
    )

    first, second = result["scan"]
    assert isinstance(first["fast"], float) and isinstance(first["reference"], float)
    assert isinstance(first["mambapy_pscan"], float) and "speedup_vs_reference" in first
    assert second["reference"] == "skipped" and isinstance(second["fast"], float)
    assert first["mamba_ssm_reference"] == "not installed" or isinstance(first["mamba_ssm_reference"], float)

    lti_first, lti_second = result["lti"]
    assert all(isinstance(lti_first[k], float) for k in ("fast", "scan", "reference", "speedup_vs_scan"))
    assert lti_second["reference"] == "skipped" and isinstance(lti_second["scan"], float)

    (inference,) = result["inference"]
    assert inference["L"] == 300 and all(
        isinstance(inference[k], float) for k in ("blocks", "whole", "speedup")
    )

    gen = result["generation"]
    assert [r["position"] for r in gen["rows"]] == [3, 6] and gen["state_is_flat"]
    assert gen["rows"][0]["state_bytes"] > 0

    assert json.loads((tmp_path / "bench.json").read_text()) == result
    md = (tmp_path / "bench.md").read_text()
    assert (
        "| 8 |" in md
        and "skipped" in md
        and result["torch"] in md
        and "State size" in md
        and "convolution vs scan" in md
        and "| 300 |" in md
    )
    assert any("fwd+bwd" in line for line in lines)
