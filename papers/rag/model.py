"""RAG's generator side: each retrieved passage joined to the input, one seq2seq pass per document, the marginal
loss.

Lewis et al. 2020, "Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks", arXiv 2005.11401.

Sec. 2.3   the generator p_theta(y_i | x, z, y_<i) is a seq2seq model (BART-large in the paper; here the lab's
           encoder-decoder Transformer, built by name through the model zoo); "we simply concatenate" the input x
           and the retrieved content z. Here the input comes first, [x ; sep ; z], truncated to ``max_len``
           tokens from the passage's end, so that a long passage never cuts the question.
Sec. 2.4   training minimises Σ_j -log p(y_j | x_j) with the marginals of Eq. 1 (RAG-Sequence) or Eq. 2
           (RAG-Token) (papers/rag/marginal.py); the doc scores carry the gradient into the query encoder
           (papers/rag/retrieval.py, ``DenseRetriever.doc_scores``).

Shapes (B inputs, K documents each, S source and T target positions, V vocabulary):

    src (B, K, S)       [x ; sep ; z_k] right-padded with the generator's pad id
    tgt_in (B, T)       [bos] + y,   tgt_out (B, T): y + [eos]   (right-padded)
    logits (B, K, T, V) the generator's next-token logits given document k

The generator is any module with the Transformer's ``logits(src (N, S), tgt_in (N, T)) -> (N, T, V)`` and
``cfg.pad_id`` (``zoo.build("transformer", cfg, vocab_size=...)``); decode.py adds its incremental calls.

``RagModel`` is what a run trains: the generator, and with the dense retriever the query encoder BERT_q over the
index of one version of the knowledge (``use_index``: the hot-swap of Sec. 4.5), ``model(batch) -> loss`` for the
lab's loop with ``batch = {"example": (B,)}`` (ids of papers/rag/data.py's examples). ``retriever="bm25"`` puts
BM25 in its place (Table 6, BM25 scores as the logits of p(z | x)); ``"none"`` is the closed-book generator of the
same size (the input alone, K = 1). The document encoder and the indexes stay frozen (Sec. 2.4).

While BERT_q is frozen too (training passes before ``query_start``, or no layer of it training), a training
question's top k and doc scores are a function of the question and the index alone: BERT_q runs as a fixed
function then (``DenseRetriever.retrieve_frozen``: eval mode, so no dropout, no graph, no padding), and its
results for every training question are computed once, in batches of 256, on the first such training pass
(``retrieval.TopKCache``; again after a hot-swap or a change of BERT_q's weights), then looked up: the same ids and
scores bit for bit at one thread (as each run of the cpu preset trains), without one BERT_q pass per step. From ``query_start`` on, at evaluation and for BM25 or the
closed book, nothing is cached.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from common.decoding import greedy
from common.errors import PaperzooError
from papers.rag.marginal import rag_sequence_nll, rag_token_nll
from papers.rag.retrieval import MINILM_LAYERS

VARIANTS = {"sequence": rag_sequence_nll, "token": rag_token_nll}
RETRIEVERS = ("dense", "bm25", "none")


def pad_rows(rows: list[list[int]], pad_id: int) -> torch.Tensor:
    """Token id lists -> (N, longest) right-padded with ``pad_id``."""
    return pad_sequence(
        [torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True, padding_value=pad_id
    )


def join_inputs(
    questions: list[list[int]], passages: list[list[list[int]]], sep_id: int, pad_id: int, max_len: int
) -> torch.Tensor:
    """B questions x and their K retrieved passages z (token ids) -> src (B, K, S): [x ; sep ; z_k][:max_len]."""
    if len({len(zs) for zs in passages}) != 1 or len(passages) != len(questions):
        raise PaperzooError("join_inputs needs the same number K of passages for each of the B questions")
    rows = [(x + [sep_id] + z)[:max_len] for x, zs in zip(questions, passages) for z in zs]
    return pad_rows(rows, pad_id).view(len(questions), len(passages[0]), -1)


def generator_logits(generator: nn.Module, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
    """src (B, K, S), tgt_in (B, T) -> logits (B, K, T, V): the generator once per (input, document) pair."""
    b, k, s = src.shape
    logits = generator.logits(src.reshape(b * k, s), tgt_in.repeat_interleave(k, dim=0))  # (B*K, T, V)
    return logits.view(b, k, *logits.shape[1:])


def rag_loss(
    generator: nn.Module,
    src: torch.Tensor,
    doc_scores: torch.Tensor,
    tgt_in: torch.Tensor,
    tgt_out: torch.Tensor,
    variant: str = "token",
) -> torch.Tensor:
    """Sec. 2.4: the batch mean of -log p(y | x) under RAG-Sequence (Eq. 1) or RAG-Token (Eq. 2), a scalar that
    trains the generator and, through doc_scores (B, K), the query encoder."""
    if variant not in VARIANTS:
        raise PaperzooError(f"unknown RAG variant '{variant}'; choose one of {', '.join(VARIANTS)}")
    logits = generator_logits(generator, src, tgt_in)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp16 / bf16 -> fp32; fp64 stays
    return VARIANTS[variant](doc_scores, logits, tgt_out, tgt_out != generator.cfg.pad_id)


class RagModel(nn.Module):
    """RAG-Sequence or RAG-Token (``variant``) over ``k`` passages from ``retriever`` (dense | bm25 | none).

    data: papers/rag/data.py's RagData. Dense retrieval scores are ``score_scale`` * cosine (the MiniLM vectors are
    unit length; DPR's unnormalised inner products are tens apart, a softmax over cosines would be near uniform).
    Only the top ``query_layers`` layers of BERT_q train (all of them: 6), to fit the CPU budget, and only from the
    ``query_start``-th training pass on: our generator starts from scratch (BART is pretrained in the paper), and
    until it reads the passages the doc scores' gradient is noise that Adam's normalised steps would turn into a
    random walk of BERT_q (measured: recall@1 fell from 98% to 1% in 300 steps from step 0). Until then BERT_q is
    a fixed function (no dropout) whose results for the training questions are cached (``cache_retrieval``; see the
    module docstring).
    """

    def __init__(self, generator: nn.Module, data, retriever: str = "dense", variant: str = "sequence", k: int = 5,
                 score_scale: float = 20.0, query_layers: int = MINILM_LAYERS, max_answer_len: int = 16,
                 query_start: int = 0, cache_retrieval: bool = True):  # fmt: skip
        super().__init__()
        if variant not in VARIANTS or retriever not in RETRIEVERS:
            raise PaperzooError(f"RagModel: variant {variant!r} ({', '.join(VARIANTS)}), retriever {retriever!r} "
                                f"({', '.join(RETRIEVERS)})")  # fmt: skip
        self.generator, self.data, self.retriever_kind, self.variant = generator, data, retriever, variant
        self.k = 1 if retriever == "none" else k
        self.score_scale, self.max_answer_len = score_scale, max_answer_len
        self.version, self.dense, self.query_start = "2016", None, query_start
        self.query_layers = query_layers if retriever == "dense" else 0
        self.cache_retrieval, self.topk_cache = cache_retrieval, None  # TopKCache of the training questions
        self.register_buffer("training_passes", torch.zeros((), dtype=torch.long))  # saved: a resume keeps it
        if retriever == "dense":
            from papers.rag.retrieval import DenseRetriever, minilm_encoder

            self.dense = DenseRetriever(minilm_encoder(), data.dense_index(self.version))
            self.query_encoder = self.dense.query_encoder  # a submodule: trained and saved with the generator
            bert = self.query_encoder.bert
            frozen = [bert.embeddings, *bert.encoder.layer[: len(bert.encoder.layer) - query_layers]]
            for module in frozen:
                module.requires_grad_(False)

    def use_index(self, version: str) -> None:
        """Hot-swap (Sec. 4.5): retrieve from ``version``'s index from now on; no weight changes."""
        self.version = version
        if self.dense is not None:
            self.dense.swap_index(self.data.dense_index(version))

    def retrieve(self, examples: list[int], k: int) -> tuple[torch.Tensor | None, torch.Tensor]:
        """ids (B, k) of the passages and their doc scores (B, k), differentiable in BERT_q; closed book: None, 0."""
        if self.retriever_kind == "none":  # the only kind that trains on reading (cloze) examples too
            return None, torch.zeros(len(examples), 1)
        texts = [self.data.kb.questions[i].text for i in examples]
        if self.retriever_kind == "bm25":
            return self.data.bm25(self.version).search(texts, k)
        ids, scores = self.dense.retrieve(texts, k)
        return ids, self.score_scale * scores

    def query_trains(self) -> bool:
        """Whether BERT_q trains in a training pass now: some of its layers train and ``query_start`` is reached."""
        return self.query_layers > 0 and int(self.training_passes) >= self.query_start

    def retrieve_frozen(self, examples: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A training pass's ids (B, K) and doc scores (B, K) while BERT_q is frozen, without gradient: from the
        cache of the training questions (built here when missing or stale), else (an example outside it, or
        ``cache_retrieval`` off) computed as the cache computes them."""
        from papers.rag.retrieval import TopKCache

        found = None
        if self.cache_retrieval:
            if self.topk_cache is None or not self.topk_cache.serves(self.dense, self.k):
                keys = self.data.train_ids.tolist()
                texts = [self.data.kb.questions[i].text for i in keys]
                self.topk_cache = None  # the stale one freed before the new one is built
                self.topk_cache = TopKCache(self.dense, keys, texts, self.k)
            found = self.topk_cache.lookup(examples)
        if found is None:
            found = self.dense.retrieve_frozen([self.data.kb.questions[i].text for i in examples], self.k)
        ids, scores = found
        return ids, self.score_scale * scores

    def sources(self, examples: list[int], ids: torch.Tensor | None) -> torch.Tensor:
        """src (B, K, S): [x ; sep ; z_k] of the ``version`` index's passages ``ids`` (B, K); closed book [x ; sep]."""
        questions = [self.data.source_ids[i] for i in examples]
        table = self.data.passage_ids[self.version]
        passages = (
            [[[]] for _ in examples] if ids is None else [[table[j] for j in row] for row in ids.tolist()]
        )
        return join_inputs(
            questions, passages, self.data.sep_id, self.data.pad_id, self.data.cfg.max_source_len
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        examples = batch["example"].tolist()
        device = batch["example"].device
        query_trains = self.training and self.query_trains()
        self.training_passes += int(self.training)
        if self.training and self.dense is not None and not query_trains:
            ids, scores = self.retrieve_frozen(examples)
        else:
            if query_trains:
                self.topk_cache = None  # BERT_q trains from now on: the cache has no use any more
            with torch.set_grad_enabled(torch.is_grad_enabled() and query_trains):
                ids, scores = self.retrieve(examples, self.k)
        tgt_in, tgt_out = self.data.targets(examples)
        src = self.sources(examples, ids)
        return rag_loss(self.generator, src.to(device), scores.to(device), tgt_in.to(device), tgt_out.to(device),
                        self.variant)  # fmt: skip

    @torch.no_grad()
    def answer(self, examples: list[int], k: int | None = None, batch_size: int = 32) -> list[str]:
        """The decoded answers (Sec. 2.5, greedy as the paper for QA): RAG-Token's greedy search over the mixture
        of Eq. 2; RAG-Sequence's Thorough Decoding with one greedy hypothesis per document, ranked by Eq. 1."""
        from papers.rag.decode import RagTokenDecoder, rag_sequence_decode

        d = self.data
        device = next(self.generator.parameters()).device
        out: list[str] = []
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            ids, scores = self.retrieve(chunk, k or self.k)
            src, scores = self.sources(chunk, ids).to(device), scores.to(device)
            if self.variant == "token" or ids is None:
                found = greedy(
                    RagTokenDecoder(self.generator, self.max_answer_len), (src, scores), d.bos_id, d.eos_id
                )
            else:
                n_best = rag_sequence_decode(
                    self.generator, src, scores, d.bos_id, d.eos_id, self.max_answer_len, 1
                )
                found = [hyps[0][0] for hyps in n_best]
            out += [d.decode(tokens) for tokens in found]
        return out
