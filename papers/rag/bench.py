"""Speed of RAG's retrieval and of its training step (Lewis et al. 2020, "Retrieval-Augmented Generation for
Knowledge-Intensive NLP Tasks", arXiv 2005.11401, Sec. 2.2: top-k of p(z | x) is Maximum Inner Product Search;
Sec. 3: a FAISS index with the HNSW approximation; Sec. 2.4: training updates the query encoder and the generator).

    1. Encoding: passages per second of the document encoder (the pretrained all-MiniLM-L6-v2, d = 384,
       ``SentenceEncoder.encode``, batches of 64) on passages of the synthetic knowledge base
       (``build_knowledge_base``: 2 passages per entity, a fact passage and a distractor).
    2. The index at each size N (default 10k and 100k passages): build time of the exact ``flat`` and the
       approximate ``hnsw`` index (``DenseIndex.build``, one build each; HNSW with the library's defaults, 32
       links per vector and a beam of 64 at search); search latency of the top 10 per query at batch 1 (64
       single-query searches one after another) and per batch of 64 queries; recall@10 of HNSW against flat
       (``recall_at_k``) over QUERIES questions. Queries are real questions of the knowledge base, encoded by
       the same MiniLM. The vectors of an index are real encoded passages where ``encode`` reaches N (``--full``:
       every passage of an N-passage knowledge base). Otherwise they are the ``encode`` real passage vectors
       (a random sample of the smallest size's knowledge base) tiled to N: the first copy as encoded, every
       other copy plus Gaussian noise whose norm is the median distance from a sample vector to its nearest
       other one (so that a copy lies about as far from its source as real passages lie from each other), then
       renormalised. The report says which, per size.
    3. One training step with K = 5 retrieved passages, RAG-Sequence (Eq. 1) and RAG-Token (Eq. 2): B = 16
       training questions; the query encoder (a trainable copy of MiniLM, dropout on) retrieves the top K from
       the flat index of the smallest size (``DenseRetriever.search``) and gives the doc scores d(z)^T q(x) with
       their gradient (``DenseRetriever.doc_scores``); the generator, the zoo's ``transformer`` (d_model 128, 4
       heads, d_ff 256, 2 layers, dropout 0.1), reads [x ; sep ; z] (``join_inputs``, cut at 48 tokens) and
       scores the answer (``rag_loss``); backward, then one AdamW step over both. Tokens for the generator:
       MiniLM's WordPiece vocabulary (30,522; [CLS] as bos, [SEP] as sep and eos, [PAD]), the tokenizer the
       library's generator does not have yet. Timed apart, taking turns with the whole steps (``timed``):
       retrieval (query encoding without gradient and the flat search), the query encoder's forward + backward
       through the doc scores, the generator's forward + backward through ``rag_loss`` (doc scores fixed);
       the rest of a step is the optimizer.

Shapes: passage and query vectors (N, 384), (Q, 384) float32; ids (Q, 10); training src (B, K, S) with
S <= 48, tgt_in / tgt_out (B, T), doc scores (B, K), generator logits (B, K, T, 30522).

Usage: ``python -m papers.rag.bench [--out DIR] [--passages 10000 100000] [--encode 2000] [--repeats 5]
[--full]``; writes DIR/bench.md and DIR/bench.json (default DIR: reports/rag) and ``run`` returns the same
numbers. The default (a 2000-passage real sample, tiled) takes about 3 minutes on 2 CPU cores; ``--full``
encodes every passage of the 10k- and the 100k-passage knowledge bases (MiniLM: about 70 passages/s on
one CPU thread, so 20-30 minutes on 2 CPU cores; a minute on a GPU).
"""

from __future__ import annotations

import argparse
import copy
import functools
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.bench import environment, environment_line, package_version, timed, write_results
from common.config import TrainConfig
from common.errors import PaperzooError
from common.models import zoo
from common.paths import reports_dir
from common.train import build_optimizer
from papers.transformer.model import TransformerConfig

from .knowledge import build_knowledge_base
from .model import join_inputs, pad_rows, rag_loss
from .retrieval import DenseIndex, DenseRetriever, SentenceEncoder, minilm_encoder, recall_at_k

SEED = 0
TOP = 10  # recall@10 and the searches' k
QUERIES = 256  # questions for recall@10
BATCH = 64  # queries per batched search
HNSW = dict(hnsw_m=32, ef_search=64)  # DenseIndex.build's defaults, stated
GENERATOR = TransformerConfig(
    vocab_size=1, d_model=128, n_heads=4, d_ff=256, n_layers=2
)  # vocab: the tokenizer's
TRAIN = dict(batch=16, k=5, max_source_len=48)
OPTIMIZER = TrainConfig(lr=3e-5)  # AdamW (common.train.build_optimizer); the rate does not change the time


@functools.lru_cache(maxsize=4)
def knowledge_base(n_passages: int):
    """The knowledge base with ``n_passages`` passages per version (a fact passage and a distractor per entity)."""
    return build_knowledge_base(n_passages // 2, seed=SEED)


def passage_texts(n_passages: int) -> list[str]:
    return [p.text for p in knowledge_base(n_passages).passages("2016")]


def question_texts(n_passages: int, count: int, split: str | None = None) -> list:
    """``count`` questions of the knowledge base drawn at random (of ``split`` if given)."""
    questions = [q for q in knowledge_base(n_passages).questions if split is None or q.split == split]
    return random.Random(SEED).sample(questions, min(count, len(questions)))


def bench_encoding(
    encoder: SentenceEncoder, texts: list[str], log: Callable[[str], None]
) -> tuple[np.ndarray, dict]:
    """The vectors (N, d) of ``texts`` and the document encoder's passages/s."""
    start = time.perf_counter()
    vectors = encoder.encode(texts)
    seconds = time.perf_counter() - start
    log(f"encoded {len(texts)} passages in {seconds:.1f} s ({len(texts) / seconds:.0f} passages/s)")
    return vectors, {"passages": len(texts), "seconds": seconds, "passages_per_s": len(texts) / seconds}


def tiled(sample: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """``sample`` (M, d) unit vectors repeated to (n, d): the first copy as is, the others plus Gaussian noise of
    norm about the sample's median nearest-neighbour distance, renormalised; and that noise norm."""
    m, d = sample.shape
    _, nearest = DenseIndex.build(sample).search(sample, 2)  # inner products: itself, then the nearest other
    distance = float(np.median(np.sqrt(np.clip(2 - 2 * nearest[:, 1].numpy(), 0, None))))
    reps = -(-n // m)
    noise = np.random.default_rng(SEED).standard_normal((reps - 1, m, d)).astype(np.float32)
    noisy = sample[None] + noise * (distance / np.sqrt(d))
    out = np.concatenate([sample[None], noisy / np.linalg.norm(noisy, axis=-1, keepdims=True)]).reshape(-1, d)
    return np.ascontiguousarray(out[:n]), distance


def bench_index(vectors: np.ndarray, queries: np.ndarray, repeats: int, log: Callable[[str], None]) -> dict:
    """Build times (s), latency per query at batch 1 and per batch of BATCH (s), recall@TOP of hnsw vs flat."""
    built, build_s = {}, {}
    for kind in ("flat", "hnsw"):
        start = time.perf_counter()
        built[kind] = DenseIndex.build(vectors, kind, **(HNSW if kind == "hnsw" else {}))
        build_s[kind] = time.perf_counter() - start
        log(f"N={len(vectors)} {kind}: built in {build_s[kind]:.2f} s")
    exact, _ = built["flat"].search(queries, TOP)
    found, _ = built["hnsw"].search(queries, TOP)
    recall = recall_at_k(found, exact)
    batch, singles = queries[:BATCH], [queries[i : i + 1] for i in range(min(BATCH, len(queries)))]

    def one_by_one(index: DenseIndex) -> None:
        for q in singles:
            index.search(q, TOP)

    fns = {f"{kind}_batch1": functools.partial(one_by_one, index) for kind, index in built.items()}
    fns |= {
        f"{kind}_batch{BATCH}": functools.partial(index.search, batch, TOP) for kind, index in built.items()
    }
    seconds = timed(fns, repeats)
    row = {"N": len(vectors), "build_s": build_s, "recall_at_10": recall, "queries": len(queries)}
    for kind in built:
        row[kind] = {"per_query_batch1_ms": 1e3 * seconds[f"{kind}_batch1"] / len(singles),
                     f"per_batch{BATCH}_ms": 1e3 * seconds[f"{kind}_batch{BATCH}"]}  # fmt: skip
    log(f"N={len(vectors)}: flat {row['flat']['per_query_batch1_ms']:.2f} ms/query, hnsw "
        f"{row['hnsw']['per_query_batch1_ms']:.2f} ms/query at batch 1; recall@{TOP} {recall:.3f}")  # fmt: skip
    return row


def training_batch(tokenizer, questions: list, passages: list[str], ids: torch.Tensor) -> dict:
    """src (B, K, S), tgt_in, tgt_out (B, T) in WordPiece ids: [x ; sep ; z_k] and the 2016 answers."""
    pad, bos, sep = tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id

    def wordpieces(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    x = [wordpieces(q.text) for q in questions]
    z = [[wordpieces(passages[j]) for j in row] for row in ids.tolist()]
    y = [wordpieces(q.answers["2016"]) for q in questions]
    return {"src": join_inputs(x, z, sep, pad, TRAIN["max_source_len"]),
            "tgt_in": pad_rows([[bos, *a] for a in y], pad), "tgt_out": pad_rows([[*a, sep] for a in y], pad)}  # fmt: skip


def bench_training(
    encoder: SentenceEncoder,
    index: DenseIndex,
    passages: list[str],
    questions: list,
    repeats: int,
    device: torch.device,
    log: Callable[[str], None],
) -> dict:
    """ms per training step of RAG-Sequence and RAG-Token with its parts (see the module docstring)."""
    torch.manual_seed(SEED)
    tokenizer = encoder.tokenizer
    query_encoder = copy.deepcopy(encoder).to(device).train()  # BERT_q; the index holds BERT_d's vectors
    generator = zoo.build("transformer", GENERATOR, vocab_size=len(tokenizer), pad_id=tokenizer.pad_token_id)
    generator = generator.to(device).train()
    both = nn.ModuleDict({"generator": generator, "query_encoder": query_encoder})
    optimizer = build_optimizer(both, OPTIMIZER, device)
    retriever = DenseRetriever(query_encoder, index)
    texts, k = [q.text for q in questions], TRAIN["k"]
    ids, _ = retriever.search(texts, k)
    fixed = {name: t.to(device) for name, t in training_batch(tokenizer, questions, passages, ids).items()}
    fixed_scores = retriever.doc_scores(texts, ids).detach().requires_grad_()

    def query_side() -> None:
        retriever.doc_scores(texts, ids).log_softmax(-1)[:, 0].sum().backward()  # a loss on the scores alone
        both.zero_grad(set_to_none=True)

    def generator_side(variant: str) -> None:
        rag_loss(generator, fixed["src"], fixed_scores, fixed["tgt_in"], fixed["tgt_out"], variant).backward()
        both.zero_grad(set_to_none=True)

    def step(variant: str) -> None:
        found, _ = retriever.search(texts, k)
        batch = training_batch(tokenizer, questions, passages, found)
        scores = retriever.doc_scores(texts, found)  # (B, K), differentiable in BERT_q
        loss = rag_loss(generator, batch["src"].to(device), scores, batch["tgt_in"].to(device),
                        batch["tgt_out"].to(device), variant)  # fmt: skip
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    fns = {"retrieval": functools.partial(retriever.search, texts, k), "query_encoder": query_side}
    for variant in ("sequence", "token"):
        fns[f"generator_{variant}"] = functools.partial(generator_side, variant)
        fns[f"step_{variant}"] = functools.partial(step, variant)
    log(f"training: timing {', '.join(fns)} ({repeats} repeats, taking turns)")
    ms = {name: 1e3 * s for name, s in timed(fns, repeats, device).items()}
    rows = []
    for variant in ("sequence", "token"):
        parts = ms["retrieval"] + ms["query_encoder"] + ms[f"generator_{variant}"]
        rows.append({"variant": variant, "step_ms": ms[f"step_{variant}"], "retrieval_ms": ms["retrieval"],
                     "query_encoder_ms": ms["query_encoder"], "generator_ms": ms[f"generator_{variant}"],
                     "rest_ms": ms[f"step_{variant}"] - parts})  # fmt: skip
        log(f"training RAG-{variant}: {ms[f'step_{variant}']:.0f} ms/step (retrieval {ms['retrieval']:.0f}, query "
            f"encoder {ms['query_encoder']:.0f}, generator {ms[f'generator_{variant}']:.0f})")  # fmt: skip
    src, tgt = fixed["src"], fixed["tgt_in"]
    return {"batch": len(questions), "k": k, "S": src.shape[-1], "T": tgt.shape[-1], "vocab": len(tokenizer),
            "index_size": index.size, "generator_params": sum(p.numel() for p in generator.parameters()),
            "query_encoder_params": sum(p.numel() for p in query_encoder.parameters() if p.requires_grad),
            "rows": rows}  # fmt: skip


def run(
    out_dir: str | Path,
    passages: tuple[int, ...] = (10_000, 100_000),
    encode: int = 2000,
    repeats: int = 5,
    full: bool = False,
    queries: int = QUERIES,
    train_batch: int = TRAIN["batch"],
    log: Callable[[str], None] = print,
) -> dict:
    """Encoding, the indexes at each size in ``passages`` and the training step; torch on CUDA if available, faiss
    on the CPU; write ``out_dir/bench.{md,json}``."""
    import faiss

    sizes = tuple(sorted(passages))
    if not sizes or min(sizes) < 2 * TOP or encode < 2:
        raise PaperzooError(
            f"--passages must be at least {2 * TOP} and --encode at least 2; got {passages}, {encode}"
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoder = minilm_encoder().to(device)  # BERT_d, never trained here
    smallest = sizes[0]
    if not full:  # one real sample, from the smallest size's knowledge base
        texts = passage_texts(smallest)
        chosen = sorted(random.Random(SEED).sample(range(len(texts)), min(encode, len(texts))))
        sample_texts = [texts[i] for i in chosen]
        sample, encoding = bench_encoding(encoder, sample_texts, log)
    rows, train_index = [], None
    for n in sizes:
        if full or len(sample_texts) >= n:
            kb_n = n if full else smallest
            texts = passage_texts(kb_n)[:n] if full else sample_texts[:n]
            if full:
                vectors, encoding = bench_encoding(encoder, texts, log)
            else:
                vectors = sample[:n]
            source = {
                "vectors": "real",
                "knowledge_base_passages": len(passage_texts(kb_n)),
                "encoded": len(texts),
            }
        else:
            kb_n = smallest
            vectors, noise = tiled(sample, n)
            texts = [sample_texts[i % len(sample_texts)] for i in range(n)]
            source = {"vectors": "tiled", "knowledge_base_passages": len(passage_texts(kb_n)),
                      "encoded": len(sample_texts), "copies": -(-n // len(sample_texts)), "noise_norm": noise}  # fmt: skip
        query_vectors = encoder.encode([q.text for q in question_texts(kb_n, queries)])
        row = {**bench_index(vectors, query_vectors, repeats, log), "source": source}
        rows.append(row)
        if n == smallest:
            train_index, train_texts, train_kb = DenseIndex.build(vectors), texts, kb_n
    training = bench_training(encoder, train_index, train_texts, question_texts(train_kb, train_batch, "train"),
                              repeats, device, log)  # fmt: skip
    result = {**environment(device), "faiss": package_version("faiss-cpu") or faiss.__version__,
              "faiss_threads": faiss.omp_get_max_threads(), "full": full, "repeats": repeats,
              "encoding": encoding, "hnsw": HNSW, "index": rows, "training": training}  # fmt: skip
    return write_results(out_dir, result, _markdown)


def _vectors(source: dict) -> str:
    if source["vectors"] == "real":
        return f"real: {source['encoded']:,} encoded passages of a {source['knowledge_base_passages']:,}-passage KB"
    return (f"tiled: {source['encoded']:,} real encoded passages (a {source['knowledge_base_passages']:,}-passage "
            f"KB's sample) x {source['copies']}, noise norm {source['noise_norm']:.3f}")  # fmt: skip


def _markdown(r: dict) -> str:
    e, t = r["encoding"], r["training"]
    lines = [
        "# RAG: index build, search latency and recall, training step",
        "",
        f"{environment_line(r)}; faiss {r['faiss']} with {r['faiss_threads']} threads.",
        "",
        f"Document encoder all-MiniLM-L6-v2 (d = 384): {e['passages_per_s']:.0f} passages/s "
        f"({e['passages']:,} knowledge-base passages in {e['seconds']:.1f} s, batches of 64).",
        "",
        f"## Index: flat (exact) vs HNSW ({r['hnsw']['hnsw_m']} links, efSearch {r['hnsw']['ef_search']}), "
        f"top {TOP}, median of {r['repeats']} runs",
        "",
        "| passages | vectors | build flat (s) | build HNSW (s) | flat ms / query, batch 1 | HNSW ms / query, "
        f"batch 1 | flat ms / batch of {BATCH} | HNSW ms / batch of {BATCH} | recall@{TOP} HNSW vs flat |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in r["index"]:
        f, h = row["flat"], row["hnsw"]
        lines.append(
            f"| {row['N']:,} | {_vectors(row['source'])} | {row['build_s']['flat']:.3f} | "
            f"{row['build_s']['hnsw']:.2f} | {f['per_query_batch1_ms']:.3f} | {h['per_query_batch1_ms']:.3f} | "
            f"{f[f'per_batch{BATCH}_ms']:.2f} | {h[f'per_batch{BATCH}_ms']:.2f} | {row['recall_at_10']:.3f} |"
        )
    lines += [
        "",
        f"Queries: real questions of the knowledge base the vectors came from, encoded by the same MiniLM; recall "
        f"over {r['index'][0]['queries']} of them. Tiled vectors: the sample's first copy as encoded, the others "
        "plus Gaussian noise of that norm (the sample's median nearest-neighbour distance), renormalised.",
        "",
        f"## Training step, K = {t['k']}, batch {t['batch']} (ms, median of {r['repeats']} steps taking turns)",
        "",
        f"Generator: the zoo's transformer, d_model {GENERATOR.d_model}, {GENERATOR.n_heads} heads, d_ff "
        f"{GENERATOR.d_ff}, {GENERATOR.n_layers} + {GENERATOR.n_layers} layers ({t['generator_params']:,} params, "
        f"WordPiece vocabulary {t['vocab']:,}); source S = {t['S']}, target T = {t['T']}. Query encoder: MiniLM "
        f"({t['query_encoder_params']:,} trained params). Retrieval from the flat index of {t['index_size']:,} "
        "passages; AdamW over both.",
        "",
        "| variant | step | retrieval (no grad) | query encoder fwd+bwd | generator fwd+bwd | rest (optimizer, "
        "batching) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| RAG-{x['variant'].capitalize()} | {x['step_ms']:.0f} | {x['retrieval_ms']:.0f} | "
        f"{x['query_encoder_ms']:.0f} | {x['generator_ms']:.0f} | {x['rest_ms']:.0f} |"
        for x in t["rows"]
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=reports_dir() / "rag")
    parser.add_argument("--passages", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument(
        "--encode", type=int, default=2000, help="real passages to encode (tiled up to each size)"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--full", action="store_true", help="encode every passage of each size (slow on a CPU)"
    )
    args = parser.parse_args()
    try:
        print(_markdown(run(args.out, tuple(args.passages), args.encode, args.repeats, args.full)), end="")
    except PaperzooError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
