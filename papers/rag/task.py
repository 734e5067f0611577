"""The lab's Task for RAG: training batches of questions (and cloze reading for the closed book), and evaluation.

Lewis et al. 2020, "Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks", arXiv 2005.11401.

``batch("train", index, B, seed)`` -> {"example": (B,)}: training questions drawn with replacement, a pure function
of (seed, index); with ``read_fraction`` > 0 that share of each batch is cloze reading (papers/rag/data.py).

``evaluate(model, device)`` decodes answers (``RagModel.answer``) and scores exact match (normalised strings, as the
paper's EM) on at most ``questions`` questions of each set (a fixed sample; the test split's per kind):

    test/em, unseen/em                          the test samples of every kind together; the unseen-entity split
                                                (facts only in the index)
    test/em_{single,bridge,pair}                one passage; two hops; two entities' facts in one answer
    test/em_single_{paraphrase,overlap}         single questions in a held-out paraphrase / a seen phrasing
    test/recall_at_{k}_{paraphrase,overlap}        the answering passage among the top k (k in ``ks``), single questions
    k{k}/em                                     test/em with k passages retrieved at test time (Fig. 3)
    k/em_gain                                   k{max ks}/em - k{min ks}/em
    hotswap/matched_{2016,2018}                 questions outside train whose answer changed: with the index of the
                                                year, the year's answer (Sec. 4.5)
    hotswap/mismatched_{2016,2018}              the year's answer with the other year's index
A closed-book model (no retriever) reports the EM metrics only.
"""

from __future__ import annotations

import random
import time

import torch

from papers.rag.data import KnowledgeConfig, normalize_answer, rag_data
from papers.rag.knowledge import VERSIONS

KINDS = ("single", "bridge", "pair")


class RagTask:
    def __init__(self, knowledge: KnowledgeConfig, questions: int = 600, ks: tuple[int, ...] = (1, 2, 5, 10),
                 read_fraction: float = 0.0):  # fmt: skip
        self.knowledge, self.questions, self.read_fraction = knowledge, questions, read_fraction
        self.ks = tuple(ks)

    @property
    def data(self):
        return rag_data(self.knowledge)

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        d = self.data
        g = torch.Generator().manual_seed(seed * 1_000_003 + index)
        n_read = round(self.read_fraction * batch_size)
        asked = d.train_ids[torch.randint(len(d.train_ids), (batch_size - n_read,), generator=g)]
        read = d.n_questions + torch.randint(len(d.reading), (n_read,), generator=g)
        return {"example": torch.cat([asked, read])}

    def target_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Answer tokens and EOS of each example."""
        return sum(len(self.data.target_ids[i]) + 1 for i in batch["example"].tolist())

    def _sample(self, questions: list) -> list:
        return random.Random(0).sample(questions, min(self.questions, len(questions)))

    def evaluate(self, model, device) -> dict[str, float]:
        d, started = self.data, time.time()
        model.use_index("2016")
        by_kind = {kind: self._sample([q for q in d.kb.split("test") if q.kind == kind]) for kind in KINDS}
        test, unseen = [q for kind in KINDS for q in by_kind[kind]], self._sample(d.kb.split("unseen_entity"))

        def em(questions, k=None, versions=("2016",)) -> list[float]:
            """Exact match of the answers found with k passages against each version's answers."""
            found = (
                [normalize_answer(a) for a in model.answer([q.id for q in questions], k)] if questions else []
            )
            return [sum(a == normalize_answer(q.answers[v]) for a, q in zip(found, questions)) / max(len(found), 1)
                    for v in versions]  # fmt: skip

        hits = dict(zip((q.id for q in test), model.answer([q.id for q in test])))
        correct = {q.id: normalize_answer(hits[q.id]) == normalize_answer(q.answers["2016"]) for q in test}
        mean = lambda qs: sum(correct[q.id] for q in qs) / len(qs) if qs else float("nan")  # noqa: E731
        single = by_kind["single"]
        out = {"test/em": mean(test), "unseen/em": em(unseen)[0]}
        for kind in KINDS:
            out[f"test/em_{kind}"] = mean(by_kind[kind])
        for name, paraphrase in (("paraphrase", True), ("overlap", False)):
            out[f"test/em_single_{name}"] = mean([q for q in single if q.paraphrase == paraphrase])
        if model.retriever_kind != "none":
            out.update(self._recall(model, single))
            for k in self.ks:
                out[f"k{k}/em"] = out["test/em"] if k == model.k else em(test, k)[0]
            out["k/em_gain"] = out[f"k{max(self.ks)}/em"] - out[f"k{min(self.ks)}/em"]
            out.update(self._hotswap(model, em))
        out["eval/seconds"] = time.time() - started
        return out

    def _recall(self, model, single: list) -> dict[str, float]:
        ids, _ = model.retrieve([q.id for q in single], max(self.ks))
        out = {}
        for name, paraphrase in (("paraphrase", True), ("overlap", False)):
            rows = [i for i, q in enumerate(single) if q.paraphrase == paraphrase]
            gold = torch.tensor([single[i].evidence["2016"][0] for i in rows])
            for k in self.ks:
                out[f"test/recall_at_{k}_{name}"] = (
                    (ids[rows, :k] == gold[:, None]).any(1).float().mean().item()
                )
        return out

    def _hotswap(self, model, em) -> dict[str, float]:
        """Sec. 4.5: the questions outside train whose answer differs between the years, under each index."""
        moved = [
            q for q in self.data.kb.questions if q.split != "train" and q.answers["2016"] != q.answers["2018"]
        ]
        moved = self._sample(moved)
        out = {"hotswap/questions": float(len(moved))}
        for index in VERSIONS:
            model.use_index(index)
            other = next(v for v in VERSIONS if v != index)
            out[f"hotswap/matched_{index}"], out[f"hotswap/mismatched_{other}"] = em(
                moved, None, (index, other)
            )
        model.use_index("2016")
        return out
