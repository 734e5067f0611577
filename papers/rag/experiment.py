"""What `nox -s reproduce-rag` trains: RAG (Lewis et al. 2020, arXiv 2005.11401) on a synthetic knowledge base.

Every run answers the knowledge base's questions (papers/rag/knowledge.py) with the same generator, the zoo's
encoder-decoder ``transformer`` of ``qa.model`` trained from scratch (BART-large in the paper), on the same
batches of training questions for the same steps:

    qa/closed_book          the generator alone on the question (Table 1's closed book); a share ``read_fraction``
                            of its batches is cloze reading of the seen entities' passages, so that it can hold
                            the knowledge in its weights; ``closed_book_lr<lr>``: its lr search
    qa/rag_sequence         RAG-Sequence (Eq. 1), the dense retriever: BERT_q trained end to end (Sec. 2.4)
    qa/rag_token            RAG-Token (Eq. 2), the same retriever
    qa/rag_sequence_bm25    RAG-Sequence over BM25 (Table 6: BM25 scores as the retrieval logits), nothing to
                            train in retrieval
    qa/rag_sequence_frozen  RAG-Sequence over the pretrained, frozen dense retriever (Table 6's "Frozen")

The retriever's query and document encoders start from all-MiniLM-L6-v2 (DPR's BERTs in the paper). Every
retrieval model is evaluated at k = 1, 2, 5, 10 at test time (Fig. 3) and with the 2018 index swapped in
(Sec. 4.5); metrics: papers/rag/task.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from omegaconf import MISSING

from common.config import BaseConfig, TrainConfig, train_config
from common.errors import PaperzooError
from common.experiment import LazyTask, Run
from common.models import zoo
from papers.transformer.model import TransformerConfig

from .data import KnowledgeConfig, rag_data
from .model import RagModel
from .retrieval import MINILM_LAYERS
from .task import RagTask

# variant -> (retriever, marginal, trains the query encoder)
VARIANTS = {
    "closed_book": ("none", "sequence", False),
    "rag_sequence": ("dense", "sequence", True),
    "rag_token": ("dense", "token", True),
    "rag_sequence_bm25": ("bm25", "sequence", False),
    "rag_sequence_frozen": ("dense", "sequence", False),
}


@dataclass
class RetrievalConfig:
    k: int = 5  # passages per question in training (the paper: 5 or 10)
    score_scale: float = 20.0  # dense doc scores: this times the cosine of the unit MiniLM vectors
    query_layers: int = MINILM_LAYERS  # BERT_q's top layers that train (all of them)
    query_lr_scale: float = 0.03  # BERT_q's lr over the generator's: a pretrained encoder, fine-tuned
    query_start: int = 0  # BERT_q trains from this training step on (the generator learns to read first)


@dataclass
class QAConfig:
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    lr: dict[str, float] = field(default_factory=lambda: {v: 1e-3 for v in VARIANTS})
    closed_book_lr_search: list[float] = field(default_factory=list)  # more lrs for the baseline
    read_fraction: float = 0.5  # the closed book's share of cloze reading in each batch
    questions: int = 600  # evaluated per set (a fixed sample)
    ks: list[int] = field(default_factory=lambda: [1, 2, 5, 10])
    max_answer_len: int = 16
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    model: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(MISSING, d_model=128, n_heads=4, d_ff=256, n_layers=2)
    )
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class Config(BaseConfig):
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    qa: QAConfig = field(default_factory=QAConfig)


def check(cfg: Config) -> None:
    qa, problems = cfg.qa, []
    if unknown := sorted(set(qa.variants) - set(VARIANTS)):
        problems.append(f"qa.variants: unknown {unknown}; choose among {', '.join(VARIANTS)}")
    if missing := sorted(v for v in qa.variants if v not in qa.lr):
        problems.append(f"qa.lr has no learning rate for {missing}")
    if qa.retrieval.k < 1 or min(qa.ks, default=1) < 1:
        problems.append(f"qa.retrieval.k ({qa.retrieval.k}) and qa.ks ({list(qa.ks)}) must be >= 1")
    if not 0 <= qa.read_fraction < 1 or not 0 <= qa.retrieval.query_layers <= MINILM_LAYERS:
        problems.append(
            f"qa.read_fraction must be in [0, 1) and qa.retrieval.query_layers in 0 .. {MINILM_LAYERS}"
        )
    if problems:
        raise PaperzooError("; ".join(problems))


def plan(cfg: Config) -> list[Run]:
    check(cfg)
    qa, r, knowledge = cfg.qa, cfg.qa.retrieval, KnowledgeConfig(**cfg.knowledge)
    common_task = LazyTask(lambda: RagTask(knowledge, qa.questions, tuple(qa.ks)))
    reading_task = LazyTask(lambda: RagTask(knowledge, qa.questions, tuple(qa.ks), qa.read_fraction))

    def build(retriever: str, variant: str, query_layers: int) -> RagModel:
        data = rag_data(knowledge)
        generator = zoo.build("transformer", qa.model, vocab_size=data.vocab_size)
        model = RagModel(generator, data, retriever, variant, r.k, r.score_scale, query_layers, qa.max_answer_len,
                         r.query_start)  # fmt: skip
        if retriever == "dense":
            for p in model.query_encoder.parameters():
                p._lr_scale = r.query_lr_scale
        return model

    runs = []
    for name in qa.variants:
        retriever, variant, trains_query = VARIANTS[name]
        query_layers = r.query_layers if trains_query else 0
        lrs = [qa.lr[name], *(qa.closed_book_lr_search if name == "closed_book" else [])]
        for i, lr in enumerate(lrs):
            train = replace(train_config(qa.train), lr=lr, min_lr=lr / 10)
            params = {"retriever": retriever, "marginal": variant, "lr": lr, "k": 1 if retriever == "none" else r.k,
                      "query_layers": query_layers}  # fmt: skip
            runs.append(Run("qa", name if i == 0 else f"{name}_lr{lr:g}",
                            lambda a=(retriever, variant, query_layers): build(*a),
                            reading_task if retriever == "none" else common_task, train, params, section="qa"))  # fmt: skip
    return runs


def figures(mlflow_client, runs: dict, folder) -> list[tuple[str, str]]:
    """Fig. 3's sweep over the documents retrieved at test time: exact match against k of every retrieval run, and
    recall@k of the answering passage (dense vs BM25, paraphrased vs word-overlap questions); seed means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_variant: dict[str, list[dict[str, float]]] = {}
    for (task, variant, _seed), run in sorted(runs.items()):
        if task == "qa" and any(name.startswith("k1") or name == "k/em_gain" for name in run.data.metrics):
            by_variant.setdefault(variant, []).append(run.data.metrics)
    if not by_variant:
        return []

    def curve(metrics: list[dict[str, float]], name: str) -> tuple[list[int], list[float]]:
        ks = sorted(
            {int(m.split("/")[0][1:]) for r in metrics for m in r if m[0] == "k" and m[1:2].isdigit()}
        )
        ks = [k for k in ks if all(name.format(k=k) in r for r in metrics)]
        return ks, [sum(r[name.format(k=k)] for r in metrics) / len(metrics) for k in ks]

    fig, (em_ax, recall_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for variant, metrics in by_variant.items():
        em_ax.plot(*curve(metrics, "k{k}/em"), marker="o", label=variant)
        for phrasing, style in (("paraphrase", "-"), ("overlap", "--")):
            recall_ax.plot(*curve(metrics, "test/recall_at_{k}_" + phrasing), style, marker="o",
                           label=f"{variant}, {phrasing}")  # fmt: skip
    for ax, label in ((em_ax, "test exact match"), (recall_ax, "recall@k of the answering passage")):
        ax.set_xscale("log")
        ax.set_xlabel("k, documents retrieved at test time")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "k_sweep.png", dpi=120)
    plt.close(fig)
    return [("Fig. 3: exact match and recall against the number of retrieved documents", "k_sweep.png")]
