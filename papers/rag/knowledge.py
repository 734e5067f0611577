"""A synthetic knowledge base of fictional entities: passages to retrieve from and questions to answer.

Stands in for the Wikipedia index and the open-domain QA sets of Lewis et al. 2020, "Retrieval-Augmented
Generation for Knowledge-Intensive NLP Tasks", arXiv 2005.11401, at a scale a CPU can train on, with what
their experiments need and nothing a pretrained model could already know (the names are invented):

* people, places and organisations, each with attributes (a person's birthplace, birth year, profession and
  employer; a place's country, founding year and population; an organisation's headquarters, founder,
  founding year and chief executive), some of them other entities;
* one fact-bearing passage per entity, plus ``distractors`` passages per entity that share its name and the
  words of its facts but state wrong values (hard negatives for BM25 and dense retrieval alike);
* questions from templates: one per (entity, attribute); two-hop ("bridge") questions whose answer is in the
  passage of an entity that the subject's passage names; and "pair" questions about two entities of a kind,
  whose answer joins a fact of each, "<value of a> and <value of b>" (Sec. 4.3: an output that combines
  content from several documents, which RAG-Token can draw from one document per token). Each is phrased
  either with a seen template or with a held-out paraphrase that shares no content word with its passages
  (``paraphrase``);
* splits: ``train`` and ``test`` split by question (a fact asked in test is never asked in train), and
  ``unseen_entity``: every question about a held-out set of subject entities;
* two index versions, "2016" and "2018" (the index hot-swap of Sec. 4.5): in 2018 a chosen set of mutable
  facts (an employer, a population, a chief executive) changes, and only the passages stating them differ;
  every question carries its answer and evidence passages under each version.

Everything follows from ``seed`` (Python's ``random.Random``), so two builds with one seed are identical.
Sizes: ``n_entities`` entities -> n_entities * (1 + distractors) passages per version and about 4.1 questions
per entity, plus ``pair_fraction`` pair questions per entity.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from common.errors import PaperzooError

VERSIONS = ("2016", "2018")
SPLITS = ("train", "test", "unseen_entity")
KINDS = ("person", "place", "organisation")

# (kind, relation) -> the kind of entity the value is, or None for a literal
RELATIONS = {
    ("person", "born_in"): "place",
    ("person", "birth_year"): None,
    ("person", "profession"): None,
    ("person", "employer"): "organisation",
    ("place", "country"): None,
    ("place", "founded"): None,
    ("place", "population"): None,
    ("organisation", "headquarters"): "place",
    ("organisation", "founder"): "person",
    ("organisation", "founded"): None,
    ("organisation", "ceo"): "person",
}
MUTABLE = {"person": "employer", "place": "population", "organisation": "ceo"}  # what may change by 2018

FOUNDED = (["When was {s} founded?", "In what year was {s} founded?"], ["In which year was {s} established?"])
# (kind, relation path) -> (seen phrasings, held-out paraphrases); {s} is the subject's name. A paraphrase of
# a one-hop question shares no content word with the passage that answers it (tested).
TEMPLATES = {
    ("person", ("born_in",)): (["Where was {s} born?", "What is the birthplace of {s}?"],
                               ["Which town is the hometown of {s}?"]),
    ("person", ("birth_year",)): (["In what year was {s} born?", "When was {s} born?"],
                                  ["What year did {s} come into the world?"]),
    ("person", ("profession",)): (["What was {s} trained as?", "What profession did {s} train for?"],
                                  ["What does {s} do for a living?"]),
    ("person", ("employer",)): (["Who employs {s}?", "Which organisation is {s} employed by?"],
                                ["Where does {s} have a job?"]),
    ("place", ("country",)): (["In which country is {s}?", "{s} is a town in which country?"],
                              ["What nation does {s} belong to?"]),
    ("place", ("founded",)): FOUNDED,
    ("place", ("population",)): (["What is the population of {s}?", "How many people live in {s}?"],
                                 ["How many residents does {s} count?"]),
    ("organisation", ("headquarters",)): (["Where is {s} headquartered?", "Where are the headquarters of {s}?"],
                                          ["In which town does {s} keep its main office?"]),
    ("organisation", ("founder",)): (["Who founded {s}?", "Who was {s} founded by?"], ["Who started {s}?"]),
    ("organisation", ("founded",)): FOUNDED,
    ("organisation", ("ceo",)): (["Who is the chief executive of {s}?", "Who leads {s}?"], ["Who runs {s}?"]),
    ("person", ("born_in", "country")): (["In which country was {s} born?"],
                                         ["What nation is the hometown of {s} part of?"]),
    ("person", ("employer", "headquarters")): (["Where is the employer of {s} headquartered?"],
                                               ["In which town does the company that pays {s} keep its main office?"]),
    ("organisation", ("ceo", "born_in")): (["Where was the chief executive of {s} born?"],
                                           ["Which town is the hometown of the person who runs {s}?"]),
}  # fmt: skip
# pair questions: (kind, relation) -> (seen phrasings, held-out paraphrases); {a}, {b}: the two names
PAIR_TEMPLATES = {
    ("person", "born_in"): (["Where were {a} and {b} born?"], ["Which towns are the hometowns of {a} and {b}?"]),
    ("place", "country"): (["In which countries are {a} and {b}?"], ["What nations do {a} and {b} belong to?"]),
    ("organisation", "headquarters"): (["Where are {a} and {b} headquartered?"],
                                       ["In which towns do {a} and {b} keep their main offices?"]),
}  # fmt: skip

PROFESSIONS = ["cartographer", "glassblower", "archivist", "botanist", "engineer", "luthier", "surveyor",
               "chemist", "weaver", "astronomer", "translator", "clockmaker"]  # fmt: skip
SYLLABLES = ["bar", "ven", "tal", "mor", "kes", "lin", "dra", "os", "quen", "ri", "sa", "tho", "ul", "van",
             "wen", "yor", "zel", "cal", "fen", "gor", "hal", "ith", "jor", "lum", "nar", "pel", "ros"]  # fmt: skip
PLACE_SUFFIXES = ["ford", "holm", "by", "stead", "wick", "mouth", "dale"]
ORG_SUFFIXES = ["Institute", "Works", "Company", "Foundry", "Guild", "Society", "Press"]


@dataclass(frozen=True)
class Entity:
    id: int
    kind: str  # person, place or organisation
    name: str


@dataclass(frozen=True)
class Passage:
    id: int
    title: str
    text: str
    entity: int  # the entity it is about (a distractor: the entity whose name it borrows)
    fact_bearing: bool


@dataclass(frozen=True, eq=False)
class Question:
    id: int
    text: str
    split: str
    subject: int  # entity id
    relations: tuple[str, ...]  # one relation, or two for a two-hop question
    paraphrase: bool  # a held-out phrasing
    answers: dict[str, str]  # version -> answer text
    evidence: dict[str, tuple[int, ...]]  # version -> the passages that state the answer, in hop order
    partner: int | None = None  # a pair question's second entity (its answer: "<subject's> and <partner's>")

    @property
    def hops(self) -> int:
        return len(self.relations)

    @property
    def kind(self) -> str:
        """single (one passage), bridge (two hops) or pair (one fact of each of two entities)."""
        return "pair" if self.partner is not None else "bridge" if self.hops == 2 else "single"


@dataclass
class KnowledgeBase:
    entities: list[Entity]
    facts: dict[str, dict[tuple[int, str], int | str]]  # version -> (entity, relation) -> entity id | literal
    changed: frozenset[tuple[int, str]]  # the (entity, relation) facts chosen to differ in 2018
    questions: list[Question]
    passages_by_version: dict[str, list[Passage]] = field(repr=False)

    def passages(self, version: str) -> list[Passage]:
        """The index of ``version``; passage ids are positions, the same in every version."""
        if version not in VERSIONS:
            raise PaperzooError(f"unknown index version '{version}'; choose one of {', '.join(VERSIONS)}")
        return self.passages_by_version[version]

    def split(self, name: str) -> list[Question]:
        if name not in SPLITS:
            raise PaperzooError(f"unknown split '{name}'; choose one of {', '.join(SPLITS)}")
        return [q for q in self.questions if q.split == name]

    def text(self, version: str, entity: int, relation: str) -> str:
        """A fact as it reads in a passage and in an answer: an entity's name or the literal."""
        value = self.facts[version][entity, relation]
        return self.entities[value].name if RELATIONS[self.entities[entity].kind, relation] else str(value)


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()


def _names(rng: random.Random, kinds: list[str]) -> list[str]:
    """Unique names; people draw from small pools of first and family names, so that names share words.
    After 8 collisions a person gets a middle name, a place or organisation a syllable more (every 8)."""
    firsts = [_word(rng, 2) for _ in range(max(4, len(kinds) // 12))]
    families = [_word(rng, 3) for _ in range(max(4, len(kinds) // 6))]
    seen, names = set(), []
    for kind in kinds:
        for attempt in itertools.count():
            if kind == "person":
                middle = f" {_word(rng, 2)}" if attempt >= 8 else ""
                name = f"{rng.choice(firsts)}{middle} {rng.choice(families)}"
            elif kind == "place":
                name = _word(rng, 2 + attempt // 8) + rng.choice(PLACE_SUFFIXES)
            else:
                name = f"{_word(rng, 2 + attempt // 8)} {rng.choice(ORG_SUFFIXES)}"
            if name not in seen:
                break
        seen.add(name)
        names.append(name)
    return names


def _draw_facts(rng, entities, by_kind, countries) -> dict[tuple[int, str], int | str]:
    literal = {
        "birth_year": lambda: rng.randint(1900, 1995),
        "profession": lambda: rng.choice(PROFESSIONS),
        "country": lambda: rng.choice(countries),
        "founded": lambda: rng.randint(1100, 1990),
        "population": lambda: rng.randint(800, 900_000),
    }
    facts = {}
    for e in entities:
        for (kind, relation), target in RELATIONS.items():
            if kind == e.kind:
                facts[e.id, relation] = rng.choice(by_kind[target]) if target else literal[relation]()
    return facts


def _change(rng, facts_2016, entities, by_kind, fraction):
    """The 2018 facts and the chosen (entity, relation) keys: the mutable fact of round(fraction * n) random
    entities gets a value different from its 2016 one; every other fact stays."""
    facts, changed = dict(facts_2016), set()
    for e in rng.sample(entities, round(fraction * len(entities))):
        relation, target = MUTABLE[e.kind], RELATIONS[e.kind, MUTABLE[e.kind]]
        while facts[e.id, relation] == facts_2016[e.id, relation]:
            facts[e.id, relation] = rng.choice(by_kind[target]) if target else rng.randint(800, 900_000)
        changed.add((e.id, relation))
    return facts, frozenset(changed)


def _fact_passage(kb: KnowledgeBase, version: str, e: Entity) -> str:
    def t(relation):
        return kb.text(version, e.id, relation)

    if e.kind == "person":
        family = e.name.split()[-1]
        return (f"{e.name} was born in {t('born_in')} in {t('birth_year')} and trained as a {t('profession')}. "
                f"{family} is employed by {t('employer')}.")  # fmt: skip
    if e.kind == "place":
        return (f"{e.name} is a town in {t('country')}, founded in {t('founded')}. "
                f"It has a population of {t('population')} people.")  # fmt: skip
    return (f"{e.name} is headquartered in {t('headquarters')}. It was founded by {t('founder')} in "
            f"{t('founded')}, and its chief executive is {t('ceo')}.")  # fmt: skip


def _distractor(kb: KnowledgeBase, rng: random.Random, e: Entity, by_kind, countries) -> str:
    """A passage with ``e``'s name and its facts' words but other values: no answer about ``e`` in it."""

    def other(relation, draw):
        wrong = {kb.text(v, e.id, relation) for v in VERSIONS}
        while True:
            value = str(draw())
            if value not in wrong:
                return value

    def name_of(kind):
        return lambda: kb.entities[rng.choice(by_kind[kind])].name

    if e.kind == "person":
        return (f"A different {e.name}, a {other('profession', lambda: rng.choice(PROFESSIONS))} born in "
                f"{other('born_in', name_of('place'))} in {other('birth_year', lambda: rng.randint(1900, 1995))}, "
                f"never worked for {other('employer', name_of('organisation'))}.")  # fmt: skip
    if e.kind == "place":
        return (f"{e.name} Minor, not to be confused with {e.name}, is a hamlet in "
                f"{other('country', lambda: rng.choice(countries))} founded in "
                f"{other('founded', lambda: rng.randint(1100, 1990))} with a population of "
                f"{other('population', lambda: rng.randint(800, 900_000))} people.")  # fmt: skip
    founder_or_ceo = {kb.text(v, e.id, r) for v in VERSIONS for r in ("founder", "ceo")}
    person = name_of("person")()
    while person in founder_or_ceo:
        person = name_of("person")()
    return (f"The {e.name} Trust, unrelated to {e.name}, was headquartered in "
            f"{other('headquarters', name_of('place'))} and founded by {person} in "
            f"{other('founded', lambda: rng.randint(1100, 1990))} before it closed.")  # fmt: skip


def _phrasing(rng, templates: tuple[list[str], list[str]], split: str, **names: str) -> tuple[str, bool]:
    """(text, paraphrase): outside training, half the questions take a held-out template (a paraphrase)."""
    seen, held_out = templates
    paraphrase = split != "train" and rng.random() < 0.5
    return rng.choice(held_out if paraphrase else seen).format(**names), paraphrase


def _question(kb, rng, qid, e, relations, split) -> Question:
    answers, evidence = {}, {}
    for v in VERSIONS:
        entity, passages = e.id, []
        for relation in relations[:-1]:  # follow the bridge entities
            passages.append(entity)
            entity = kb.facts[v][entity, relation]
        passages.append(entity)  # entity i's fact passage has id i
        answers[v], evidence[v] = kb.text(v, entity, relations[-1]), tuple(passages)
    text, paraphrase = _phrasing(rng, TEMPLATES[e.kind, relations], split, s=e.name)
    return Question(qid, text, split, e.id, relations, paraphrase, answers, evidence)


def _pair_question(kb, rng, qid, e, partner, relation, split) -> Question:
    answers = {v: f"{kb.text(v, e.id, relation)} and {kb.text(v, partner.id, relation)}" for v in VERSIONS}
    text, paraphrase = _phrasing(rng, PAIR_TEMPLATES[e.kind, relation], split, a=e.name, b=partner.name)
    evidence = {v: (e.id, partner.id) for v in VERSIONS}
    return Question(qid, text, split, e.id, (relation,), paraphrase, answers, evidence, partner.id)


def build_knowledge_base(
    n_entities: int = 3000,
    seed: int = 0,
    distractors: int = 1,
    unseen_fraction: float = 0.1,
    test_fraction: float = 0.2,
    change_fraction: float = 0.1,
    two_hop_fraction: float = 0.3,
    pair_fraction: float = 0.2,
    n_countries: int = 12,
) -> KnowledgeBase:
    """The knowledge base; passage ids 0 .. n_entities - 1 are the entities' fact passages (entity i's is i),
    then ``distractors`` passages per entity; questions in order of their subject entity, then the pairs."""
    if n_entities < 2 * len(KINDS):
        raise PaperzooError(f"n_entities must be at least {2 * len(KINDS)}; got {n_entities}")
    rng = random.Random(seed)
    kinds = [("person", "person", "place", "organisation")[i % 4] for i in range(n_entities)]
    entities = [Entity(i, kind, name) for i, (kind, name) in enumerate(zip(kinds, _names(rng, kinds)))]
    by_kind = {kind: [e.id for e in entities if e.kind == kind] for kind in KINDS}
    countries = [_word(rng, 3) for _ in range(n_countries)]
    facts_2016 = _draw_facts(rng, entities, by_kind, countries)
    facts_2018, changed = _change(rng, facts_2016, entities, by_kind, change_fraction)
    kb = KnowledgeBase(entities, {"2016": facts_2016, "2018": facts_2018}, changed, [], {})

    borrowers = [e for e in entities for _ in range(distractors)]  # whose name each distractor uses
    texts = [_distractor(kb, rng, e, by_kind, countries) for e in borrowers]  # the same in every version
    others = [Passage(n_entities + i, f"{e.name} (disambiguation)", t, e.id, False) for i, (e, t) in
              enumerate(zip(borrowers, texts))]  # fmt: skip
    for v in VERSIONS:
        facts = [Passage(e.id, e.name, _fact_passage(kb, v, e), e.id, True) for e in entities]
        kb.passages_by_version[v] = facts + others

    unseen = set(rng.sample(range(n_entities), round(unseen_fraction * n_entities)))
    for e in entities:
        own = [rel for kind, rel in TEMPLATES if kind == e.kind]
        paths = [rel for rel in own if len(rel) == 1 or rng.random() < two_hop_fraction]
        for relations in paths:
            split = "unseen_entity" if e.id in unseen else "test" if rng.random() < test_fraction else "train"
            kb.questions.append(_question(kb, rng, len(kb.questions), e, relations, split))
    # a pair question asks facts whose one-hop questions are in its split: a fact asked in test is never in train
    split_of = {(q.subject, q.relations): q.split for q in kb.questions if q.hops == 1}
    relation_of = {kind: relation for kind, relation in PAIR_TEMPLATES}
    # (kind, split) -> the entities whose pair fact is in that split
    pool: dict[tuple[str, str], list[int]] = {}
    for e in entities:
        pool.setdefault((e.kind, split_of[e.id, (relation_of[e.kind],)]), []).append(e.id)
    for e in entities:
        relation = relation_of[e.kind]
        split = split_of[e.id, (relation,)]
        partners = pool[e.kind, split]
        if len(partners) > 1 and rng.random() < pair_fraction:
            partner = entities[e.id]
            while partner.id == e.id:
                partner = entities[rng.choice(partners)]
            kb.questions.append(_pair_question(kb, rng, len(kb.questions), e, partner, relation, split))
    return kb
