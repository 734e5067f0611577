"""The RAG reproduction as the lab runs it: the data behind it, the model the runs train, the plan, and a smoke
reproduction through the CLI into MLflow."""

import pytest
import torch

from common.config import load_config
from common.experiment import load_paper
from common.models import zoo
from common.testing import assert_one_line_error, reproduce_in, run_cli
from common.tracking import client
from papers.rag.data import KnowledgeConfig, rag_data
from papers.rag.model import RagModel
from papers.rag.task import RagTask
from papers.transformer.model import TransformerConfig

SMALL = KnowledgeConfig(n_entities=60, vocab_size=300)
RUNS = {"closed_book", "closed_book_lr0.003", "rag_sequence", "rag_token", "rag_sequence_bm25"}


@pytest.fixture(scope="module")
def data():
    return rag_data(SMALL)


def model(data, retriever="dense", variant="sequence", **options):
    torch.manual_seed(0)
    generator = zoo.build("transformer", TransformerConfig(data.vocab_size, d_model=32, n_heads=2, d_ff=64,
                                                           n_layers=1, dropout=0.0))  # fmt: skip
    return RagModel(generator, data, retriever, variant, 2, **options)


def _sublist(needle, haystack):
    return any(haystack[i : i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))


def test_answers_are_copyable_token_by_token_from_their_passage(data):
    """The generator can copy: an answer's target tokens (EOS aside) occur in the passage that states it."""
    singles = [q for q in data.kb.questions if q.kind == "single"]
    assert singles
    for q in singles:
        tokens = data.targets([q.id])[1][0].tolist()[:-1]  # y, without EOS
        assert _sublist(tokens, data.passage_ids["2016"][q.evidence["2016"][0]]), q.text
    assert data.decode(data.targets([singles[0].id])[1][0].tolist()[:-1]) == singles[0].answers["2016"]


def test_cloze_reading_masks_one_fact_and_only_seen_entities(data):
    unseen = {q.subject for q in data.kb.split("unseen_entity")}
    assert data.reading and unseen
    fact_passage = {text: i for i, text in enumerate(data.passages["2016"][: len(data.kb.entities)])}
    for text, value in data.reading:
        assert text.count("<mask>") == 1
        assert fact_passage[text.replace("<mask>", value, 1)] not in unseen  # KeyError: not a fact passage


def test_batches_are_seeded_and_mix_reading_at_its_share(data):
    task = RagTask(SMALL, read_fraction=0.5)
    one, again, other = (task.batch("train", i, 8, seed)["example"] for i, seed in ((3, 0), (3, 0), (4, 0)))
    assert torch.equal(one, again) and not torch.equal(one, other)
    train = {q.id for q in data.kb.split("train")}
    assert set(one[:4].tolist()) <= train and (one[4:] >= data.n_questions).all()
    assert (RagTask(SMALL).batch("train", 0, 8, 0)["example"] < data.n_questions).all()


def test_query_encoder_trains_its_top_layers_only_after_query_start(data):
    m = model(data, query_layers=1, query_start=2).train()
    bert = m.query_encoder.bert
    batch = {"example": torch.tensor([q.id for q in data.kb.split("train")[:4]])}
    for passes in range(3):
        m.zero_grad(set_to_none=True)
        m(batch).backward()
        top = [p.grad for p in bert.encoder.layer[-1].parameters()]
        assert all(g is None for g in top) == (passes < 2), passes  # the doc scores carry no gradient before
        assert all(p.grad is None for p in bert.embeddings.parameters())  # frozen below the top layer
        assert all(p.grad is None for p in bert.encoder.layer[0].parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.generator.parameters())
    assert int(m.training_passes) == 3 and "training_passes" in m.state_dict()


def test_hot_swap_changes_the_passages_not_the_weights(data):
    m = model(data).eval()
    moved = [q for q in data.kb.questions if q.kind == "single" and q.answers["2016"] != q.answers["2018"]]
    assert moved
    before = {k: v.clone() for k, v in m.state_dict().items()}
    examples = [q.id for q in moved]
    texts = {}
    for version in ("2016", "2018"):
        m.use_index(version)
        with torch.no_grad():
            ids, _ = m.retrieve(examples, 1)
        texts[version] = [data.passages[version][i] for i in ids[:, 0].tolist()]
    assert m.dense.index is data.dense_index("2018")
    hits = [q.answers[v] in t for v in ("2016", "2018") for q, t in zip(moved, texts[v])]
    assert sum(hits) / len(hits) > 0.8  # the year's index states the year's answer
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_closed_book_reads_the_question_alone(data):
    m = model(data, "none")
    ids, scores = m.retrieve([0, 1], 5)
    assert ids is None and scores.shape == (2, 1) and m.k == 1
    src = m.sources([0], None)
    assert src.shape[1] == 1 and src[0, 0].tolist() == data.source_ids[0] + [data.sep_id]


def _plan(*overrides):
    paper = load_paper("rag")
    cfg = load_config(paper.schema, paper.path / "configs", list(overrides))
    return cfg, {run.key: run for run in paper.plan(cfg)}


def test_every_claim_is_measured_and_every_run_trains_the_same_batches():
    for scale in ("smoke", "cpu", "gpu"):
        cfg, runs = _plan(f"scale={scale}")
        for claim in load_paper("rag").claims:
            assert claim.measure.task == "qa" and set(claim.criteria) == {"smoke", "cpu", "gpu"}
        steps = {(run.train.max_steps, run.train.batch_size) for run in runs.values()}
        assert len(steps) == 1, steps  # one budget for the method and its baselines
    _, runs = _plan("scale=smoke")
    assert {key.split("/")[1] for key in runs} == RUNS
    assert runs["qa/rag_sequence"].data is runs["qa/rag_token"].data is runs["qa/rag_sequence_bm25"].data


def test_bad_overrides_are_one_line_errors(lab):
    bad = run_cli("-m", "common.reproduce", "rag", "scale=smoke", "qa.variants=[rag_tokens]")
    assert_one_line_error(bad, "rag_tokens")


def test_smoke_reproduction_logs_every_run_and_writes_the_report(lab):
    assert reproduce_in(lab, "rag", "scale=smoke", "progress=false") == 0
    readme = (lab / "reports" / "rag" / "README.md").read_text()
    assert "Preset **smoke**" in readme
    for claim in load_paper("rag").claims:
        assert f"| {claim.id} |" in readme
    mlflow_client = client()
    runs = mlflow_client.search_runs([mlflow_client.get_experiment_by_name("rag").experiment_id])
    assert {r.data.tags["variant"] for r in runs} == RUNS
    for run in runs:
        assert run.info.status == "FINISHED" and "test/em" in run.data.metrics
        retrieves = run.data.tags["variant"].startswith("rag")
        assert ("hotswap/matched_2018" in run.data.metrics) == retrieves
        assert ("test/recall_at_1_paraphrase" in run.data.metrics) == retrieves
