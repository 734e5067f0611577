"""The data of `nox -s reproduce-rag`: the knowledge base tokenised, its indexes, and the training examples.

Lewis et al. 2020, "Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks", arXiv 2005.11401, at a
CPU's scale: the synthetic knowledge base of ``knowledge.py`` stands in for Wikipedia and the QA sets.

``RagData`` (one per knowledge config and process, ``rag_data``) holds

* one byte-level BPE (``vocab_size`` ids, specials ``SPECIALS`` first) learned on the passages of both index
  versions and the training questions; an answer is encoded with the space that precedes it in a passage, so that
  the generator can copy its tokens;
* the token ids of every question and of every passage of each version;
* the dense indexes of each version (Sec. 2.2, 4.5): d(z) from the frozen all-MiniLM-L6-v2 document encoder,
  faiss exact inner product; the vectors are cached under ``PAPERZOO_CACHE`` (the 2018 index re-encodes only the
  passages that differ);
* the BM25 index of each version (bm25s);
* ``reading``: cloze examples for the closed-book baseline, one per fact of every fact passage of an entity
  outside the unseen-entity split, the fact's value masked (the passage -> the value). They let a closed-book
  model store the knowledge in its weights, as T5 stored Wikipedia's in pre-training (Table 1's closed book).

An example id i < len(kb.questions) is question i; i >= len(kb.questions) is cloze item i - len(kb.questions).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from common.data.corpus import cached_bpe
from common.paths import cache_dir, write_atomically
from papers.rag.knowledge import RELATIONS, VERSIONS, build_knowledge_base
from papers.rag.model import pad_rows

SPECIALS = ("<pad>", "<s>", "</s>", "<sep>", "<unk>", "<mask>")
PAD_ID, BOS_ID, EOS_ID, SEP_ID = 0, 1, 2, 3


@dataclass(frozen=True)
class KnowledgeConfig:
    n_entities: int = 3000
    distractors: int = 1  # name-sharing passages per entity
    seed: int = 0  # the knowledge base's own seed: every run seed sees the same world
    test_fraction: float = 0.2
    unseen_fraction: float = 0.1
    change_fraction: float = 0.1  # facts that differ in the 2018 index
    two_hop_fraction: float = 0.3
    pair_fraction: float = 0.2
    vocab_size: int = 2000
    max_source_len: int = 64  # [x ; sep ; z] in tokens, cut from the passage's end


def normalize_answer(text: str) -> str:
    """SQuAD's exact-match normalisation, reduced to what the synthetic answers need: lower case, single spaces."""
    return " ".join(text.lower().replace(".", " ").replace(",", " ").split())


class RagData:
    pad_id, bos_id, eos_id, sep_id = PAD_ID, BOS_ID, EOS_ID, SEP_ID

    def __init__(self, cfg: KnowledgeConfig):
        self.cfg = cfg
        self.kb = build_knowledge_base(
            cfg.n_entities, cfg.seed, cfg.distractors, cfg.unseen_fraction, cfg.test_fraction,
            cfg.change_fraction, cfg.two_hop_fraction, cfg.pair_fraction,
        )  # fmt: skip
        self.passages = {v: [p.text for p in self.kb.passages(v)] for v in VERSIONS}
        self.reading = self._cloze_items()
        texts = [*self.passages["2016"], *self.passages["2018"], *(q.text for q in self.kb.split("train"))]
        tok = cached_bpe(cache_dir() / "rag" / f"bpe-{cfg.vocab_size}-{_key(texts)}.json", lambda: texts,
                         cfg.vocab_size, byte_level=True, special_tokens=SPECIALS)  # fmt: skip
        self.tokenizer, self.vocab_size = tok, tok.get_vocab_size()
        self.passage_ids = {v: self.encode(self.passages[v]) for v in VERSIONS}
        self.n_questions = len(self.kb.questions)
        examples = [(q.text, q.answers["2016"]) for q in self.kb.questions] + self.reading
        self.source_ids = self.encode([text for text, _ in examples])
        self.target_ids = self.encode([" " + answer for _, answer in examples])  # y as inside a passage
        self.train_ids = torch.tensor([q.id for q in self.kb.split("train")])
        self._dense: dict[str, object] = {}
        self._bm25: dict[str, object] = {}

    # ---- tokens ---------------------------------------------------------------------------------------------
    def encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids).strip()

    def targets(self, examples: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """tgt_in (B, T) = [bos] + y and tgt_out (B, T) = y + [eos] of the examples' (2016) answers, right-padded."""
        answers = [self.target_ids[i] for i in examples]
        return pad_rows([[BOS_ID, *y] for y in answers], PAD_ID), pad_rows(
            [[*y, EOS_ID] for y in answers], PAD_ID
        )

    def _cloze_items(self) -> list[tuple[str, str]]:
        """(the passage with one fact's value masked, the value) for each fact of each seen entity's 2016 passage."""
        unseen = {q.subject for q in self.kb.split("unseen_entity")}
        items = []
        for e in self.kb.entities:
            if e.id in unseen:
                continue
            text = self.passages["2016"][e.id]
            for relation in (relation for kind, relation in RELATIONS if kind == e.kind):
                value = self.kb.text("2016", e.id, relation)
                if value in text:
                    items.append((text.replace(value, "<mask>", 1), value))
        return items

    # ---- indexes ----------------------------------------------------------------------------------------------
    def dense_index(self, version: str):
        """The exact inner-product index of ``version``'s passages under the frozen document encoder."""
        from papers.rag.retrieval import DenseIndex

        if version not in self._dense:
            vectors = self._vectors()
            self._dense.update({v: DenseIndex.build(vectors[v], "flat") for v in VERSIONS})
        return self._dense[version]

    def bm25(self, version: str):
        from papers.rag.retrieval import BM25Retriever

        if version not in self._bm25:
            self._bm25[version] = BM25Retriever(self.passages[version])
        return self._bm25[version]

    def _vectors(self) -> dict[str, np.ndarray]:
        """Each version's passage vectors (N, 384), cached on disk."""
        from papers.rag.retrieval import minilm_encoder

        key = _key(self.passages["2016"] + self.passages["2018"])
        paths = {v: cache_dir() / "rag" / f"vectors-{key}-{v}.npy" for v in VERSIONS}
        if not all(p.is_file() for p in paths.values()):
            encoder = minilm_encoder()
            vectors = {"2016": encoder.encode(self.passages["2016"])}
            changed = [
                i for i, (a, b) in enumerate(zip(self.passages["2016"], self.passages["2018"])) if a != b
            ]
            vectors["2018"] = vectors["2016"].copy()
            if changed:
                vectors["2018"][changed] = encoder.encode([self.passages["2018"][i] for i in changed])
            for v, path in paths.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomically(path, lambda tmp, v=v: _save_array(tmp, vectors[v]))
        return {v: np.load(path) for v, path in paths.items()}


def _key(texts: list[str]) -> str:
    """A cache file's key: the texts it was computed from, so that a change of the knowledge base's code never
    reuses a stale tokenizer or vectors."""
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]


def _save_array(path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add ".npy" to a temporary file's name
        np.save(f, array)


@functools.cache
def rag_data(cfg: KnowledgeConfig) -> RagData:
    """One RagData per knowledge config in a process: every run of a reproduction shares it."""
    return RagData(cfg)
