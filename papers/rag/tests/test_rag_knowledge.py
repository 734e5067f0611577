"""The synthetic knowledge base: deterministic from its seed, disjoint splits, a 2018 index that changes exactly
the chosen facts, every answer in its evidence passages and none in the distractors, paraphrases that share no
content word with their passage."""

import re

import pytest

from common.errors import PaperzooError
from papers.rag.knowledge import MUTABLE, SPLITS, VERSIONS, build_knowledge_base

N = 240
STOPWORDS = {"a", "an", "the", "in", "of", "is", "was", "what", "which", "who", "where", "does", "did", "do",
             "to", "by", "for", "and", "as", "it", "its", "has", "how", "when"}  # fmt: skip


@pytest.fixture(scope="module")
def kb():
    return build_knowledge_base(N, seed=0, distractors=2)


def snapshot(kb):
    return (
        [(p.id, p.title, p.text) for v in VERSIONS for p in kb.passages(v)],
        [
            (q.text, q.split, q.subject, q.relations, q.paraphrase, q.answers, q.evidence)
            for q in kb.questions
        ],
    )


def test_same_seed_same_knowledge_base_other_seed_another(kb):
    assert snapshot(build_knowledge_base(N, seed=0, distractors=2)) == snapshot(kb)
    other = snapshot(build_knowledge_base(N, seed=1, distractors=2))
    assert other[0] != snapshot(kb)[0] and other[1] != snapshot(kb)[1]


def test_sizes_and_passage_ids(kb):
    for v in VERSIONS:
        passages = kb.passages(v)
        assert len(passages) == 3 * N and [p.id for p in passages] == list(range(3 * N))
        assert all(p.fact_bearing == (p.id < N) for p in passages)
    assert {e.kind for e in kb.entities} == {"person", "place", "organisation"}
    assert len({e.name for e in kb.entities}) == N
    assert {q.kind for q in kb.questions} == {"single", "bridge", "pair"}
    assert {q.hops for q in kb.questions} == {1, 2}


def test_splits_are_disjoint(kb):
    splits = {name: kb.split(name) for name in SPLITS}
    assert sum(len(qs) for qs in splits.values()) == len(kb.questions) and all(splits.values())
    asked = {name: {(e, q.relations) for q in qs for e in q.evidence["2016"][:1] + ((q.partner,) if q.partner
                                                                                   is not None else ())}
             for name, qs in splits.items()}  # fmt: skip
    assert not asked["train"] & asked["test"]  # a fact asked in test is never asked in train
    subjects = {name: {q.subject for q in qs} for name, qs in splits.items()}
    assert not subjects["unseen_entity"] & (subjects["train"] | subjects["test"])
    assert not any(q.paraphrase for q in splits["train"])  # held-out phrasings only outside train
    assert {q.paraphrase for q in splits["test"]} == {False, True}


def test_2018_changes_exactly_the_chosen_facts(kb):
    old, new = kb.facts["2016"], kb.facts["2018"]
    assert old.keys() == new.keys()
    assert {key for key in old if old[key] != new[key]} == kb.changed
    assert len(kb.changed) == round(0.1 * N)
    assert all(relation == MUTABLE[kb.entities[e].kind] for e, relation in kb.changed)
    differ = {p.id for p, q in zip(kb.passages("2016"), kb.passages("2018")) if p.text != q.text}
    assert differ == {e for e, _ in kb.changed}  # only the changed entities' own passages
    moved = [q for q in kb.questions if q.answers["2016"] != q.answers["2018"]]
    assert moved and any(q.hops == 2 for q in moved)
    for q in moved:  # an answer moves only if its path goes through a changed fact
        path = [(e, r) for e, r in zip(q.evidence["2016"], q.relations)]
        path += [(e, r) for e, r in zip(q.evidence["2018"], q.relations)]
        assert set(path) & kb.changed


def test_every_answer_is_in_its_evidence_and_bridges_chain(kb):
    for v in VERSIONS:
        passages = kb.passages(v)
        for q in kb.questions:
            evidence = q.evidence[v]
            assert len(evidence) == (2 if q.kind == "pair" else q.hops) and evidence[0] == q.subject
            assert kb.entities[q.subject].name in passages[evidence[0]].text
            if q.kind == "pair":  # "<a's value> and <b's value>", each from its own passage
                assert q.subject != q.partner == evidence[1]
                assert kb.entities[q.subject].kind == kb.entities[q.partner].kind
                first, second = q.answers[v].split(" and ")
                assert first in passages[evidence[0]].text and second in passages[evidence[1]].text
                continue
            assert q.answers[v] in passages[evidence[-1]].text
            if q.hops == 2:  # the bridge entity is named in the first passage
                assert kb.entities[evidence[1]].name in passages[evidence[0]].text


def test_distractors_share_the_name_but_hold_no_answer(kb):
    passages = kb.passages("2016")
    for q in kb.questions:
        if q.kind != "single":
            continue
        for p in passages[N:]:
            if p.entity == q.subject:
                assert kb.entities[q.subject].name in p.text
                for v in VERSIONS:
                    assert not re.search(rf"\b{re.escape(q.answers[v])}\b", p.text), (q.text, p.text)


def test_paraphrases_share_no_content_word_with_their_passage(kb):
    def words(text):
        return set(re.findall(r"[a-z]+", text.lower())) - STOPWORDS

    def shared(q):
        subjects = [q.subject] + ([q.partner] if q.kind == "pair" else [])
        names = set().union(*(words(kb.entities[e].name) for e in subjects))
        passages = set().union(*(words(kb.passages("2016")[e].text) for e in subjects))
        return (words(q.text) - names) & (passages - names)

    for kind in ("single", "pair"):
        asked = [q for q in kb.questions if q.kind == kind]
        assert all(not shared(q) for q in asked if q.paraphrase)
        assert any(shared(q) for q in asked if not q.paraphrase)  # e.g. "born", "founded": the check can fail


def test_bad_arguments_are_one_line_errors(kb):
    with pytest.raises(PaperzooError, match="unknown index version '2017'"):
        kb.passages("2017")
    with pytest.raises(PaperzooError, match="unknown split 'dev'"):
        kb.split("dev")
    with pytest.raises(PaperzooError, match="n_entities must be at least 6"):
        build_knowledge_base(3)
