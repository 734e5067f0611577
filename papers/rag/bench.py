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
    3. One training step of the runs a preset of ``nox -s reproduce-rag`` trains (default ``cpu``; ``--preset``,
       ``--override``): the config resolved as the reproduction resolves it (``load_config``: base.yaml, the
       preset, the overrides), each model built by its run of the plan (papers/rag/experiment.py: ``RagModel``
       around the zoo's ``transformer`` over the knowledge base's BPE vocabulary; BERT_q's parameters at
       ``query_lr_scale`` times the lr), a new batch of the run's task each step (``RagTask.batch("train", i,
       B, seed)``), and the step of ``common.train.train``'s loop: ``model(batch)`` (retrieval, the [x ; sep ; z]
       sources, the generator, the loss of Eq. 1 or Eq. 2), backward, the loss read, gradients clipped at
       ``grad_clip``, one AdamW step (``common.train.build_optimizer``; the lr schedule left out). The cpu preset:
       3000 entities (6000 passages per index; exact faiss search over their MiniLM vectors, cached under
       PAPERZOO_CACHE after the first build, 1-2 minutes), batch 64, K = 5, sources cut at 80 tokens, a BPE of
       2000 tokens, the generator d_model 128, 4 heads, d_ff 256, 2 + 2 layers, dropout 0, BERT_q's top 2
       layers training from step 500 on (``query_start``). Rows (``ROWS``): RAG-Sequence and RAG-Token over the
       dense retriever in both phases of their runs (BERT_q training: ``training_passes`` set to
       ``query_start`` before each step; before ``query_start``: set to 0, the doc scores without gradient),
       RAG-Sequence over BM25, and the closed book (the generator alone on [x ; sep], half of its batch cloze
       reading). Timed apart, taking turns with the steps (``timed``): retrieval, ``RagModel.retrieve`` in the
       step's grad mode (BERT_q's forward and the faiss search, or BM25), before query_start the look-up in the
       cache of the training questions' top k (``RagModel.retrieve_frozen``; its one-off fill, in the warm-up
       step, recorded as ``cache_fill_s``); the rest of a step is everything
       else (sources, the generator's forward and backward, BERT_q's backward, clipping, AdamW). Each row also
       records the parameters that got a gradient in its first step. The preset trains ``workers`` (2) runs at
       a time, each on its share of the threads; here one step runs at a time on the process's threads.

Shapes: passage and query vectors (N, 384), (Q, 384) float32; ids (Q, 10); training src (B, K, S) with
S <= max_source_len, tgt_in / tgt_out (B, T), doc scores (B, K), generator logits (B, K, T, V), V the BPE's
vocabulary (2000 in the cpu preset).

Usage: ``python -m papers.rag.bench [--out DIR] [--passages 10000 100000] [--encode 2000] [--repeats 5]
[--full] [--preset cpu] [--override KEY=VALUE ...]``; writes DIR/bench.md and DIR/bench.json (default DIR:
reports/rag) and ``run`` returns the same numbers. The default (a 2000-passage real sample, tiled) takes about
3 minutes on 2 CPU cores once the cpu preset's vectors are cached; ``--full`` encodes every passage of the
10k- and the 100k-passage knowledge bases (MiniLM: about 70 passages/s on 2 CPU threads, so 20-30 minutes on
2 CPU cores; a minute on a GPU).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.bench import environment, environment_line, package_version, timed, write_results
from common.config import load_config
from common.errors import PaperzooError
from common.experiment import Run, load_paper
from common.paths import reports_dir
from common.train import autocast_context, build_optimizer

from .knowledge import build_knowledge_base
from .retrieval import DenseIndex, SentenceEncoder, minilm_encoder, recall_at_k

SEED = 0
TOP = 10  # recall@10 and the searches' k
QUERIES = 256  # questions for recall@10
BATCH = 64  # queries per batched search
HNSW = dict(hnsw_m=32, ef_search=64)  # DenseIndex.build's defaults, stated
# the training steps timed: (the plan's qa variant, BERT_q's phase: True from query_start on, False before it,
# None for a run without BERT_q)
ROWS = (
    ("rag_sequence", True),
    ("rag_sequence", False),
    ("rag_token", True),
    ("rag_token", False),
    ("rag_sequence_bm25", None),
    ("closed_book", None),
)
PHASES = {True: "bert_q", False: "before_query_start", None: "all"}  # in the names of the timed functions


@functools.lru_cache(maxsize=4)
def knowledge_base(n_passages: int):
    """The knowledge base with ``n_passages`` passages per version (a fact passage and a distractor per entity)."""
    return build_knowledge_base(n_passages // 2, seed=SEED)


def passage_texts(n_passages: int) -> list[str]:
    return [p.text for p in knowledge_base(n_passages).passages("2016")]


def question_texts(n_passages: int, count: int) -> list:
    """``count`` questions of the knowledge base drawn at random."""
    questions = knowledge_base(n_passages).questions
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


def preset_runs(preset: str, overrides: tuple[str, ...] = ()) -> tuple:
    """The config of ``preset`` resolved as ``nox -s reproduce-rag`` resolves it (with ``overrides``), and its
    plan's qa runs by variant."""
    paper = load_paper("rag")
    cfg = load_config(paper.schema, paper.path / "configs", [f"scale={preset}", *overrides])
    return cfg, {run.variant: run for run in paper.plan(cfg) if run.task == "qa"}


def _batch(run: Run, index: int, device: torch.device) -> dict[str, torch.Tensor]:
    batch = run.data.batch("train", index, run.train.batch_size, SEED)
    return {name: t.to(device) for name, t in batch.items()}


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, run: Run, device: torch.device,
               passes: int | None, batches: Iterator[int], row: dict) -> None:  # fmt: skip
    """One step of common.train.train's loop on the next batch; ``passes``: the model's training passes before
    it (its BERT_q phase); the first step's loss and parameters with a gradient go into ``row``."""
    batch = _batch(run, next(batches), device)
    if passes is not None:
        model.training_passes.fill_(passes)
    with autocast_context(device, run.train.precision):
        loss = model(batch)
        loss.backward()
    value = loss.item()  # the loop reads every step's loss
    if "loss" not in row:
        row["loss"] = value
        row["trained_params"] = sum(p.numel() for p in model.parameters() if p.grad is not None)
    if run.train.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), run.train.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def retrieval(model: nn.Module, run: Run, device: torch.device, trains: bool, batches: Iterator[int]) -> None:
    """The retrieval of the step's forward on the next batch: ``RagModel.retrieve`` in the step's grad mode, or
    with BERT_q frozen (before query_start) ``RagModel.retrieve_frozen``, a look-up in the cache of the training
    questions' top k that the warm-up step filled."""
    examples = run.data.batch("train", next(batches), run.train.batch_size, SEED)["example"].tolist()
    with torch.set_grad_enabled(trains), autocast_context(device, run.train.precision):
        if model.dense is not None and not trains:
            model.retrieve_frozen(examples)
        else:
            model.retrieve(examples, model.k)


def bench_training(preset: str, overrides: tuple[str, ...], repeats: int, device: torch.device,
                   log: Callable[[str], None]) -> dict:  # fmt: skip
    """ms per training step of the preset's runs (``ROWS``) with their retrieval (see the module docstring)."""
    cfg, runs = preset_runs(preset, overrides)
    r = cfg.qa.retrieval
    if missing := sorted({variant for variant, _ in ROWS} - set(runs)):
        raise PaperzooError(f"the bench times qa/{', qa/'.join(missing)}: add them to qa.variants")
    fns, rows, models = {}, [], {}
    for variant, trains in ROWS:
        if trains is False and r.query_start == 0:
            log(f"training: qa/{variant} has no phase before query_start (qa.retrieval.query_start is 0)")
            continue
        run = runs[variant]
        torch.manual_seed(SEED)
        model = run.build_model().to(device).train()
        optimizer = build_optimizer(model, run.train, device)
        examples = run.data.batch("train", 0, run.train.batch_size, SEED)["example"].tolist()
        with torch.no_grad():
            src = model.sources(examples, model.retrieve(examples, model.k)[0])  # the first batch's shapes
        row = {"run": run.key, "retriever": run.params["retriever"], "marginal": run.params["marginal"],
               "query_trains": trains, "batch": run.train.batch_size, "k": model.k, "S": src.shape[-1],
               "T": model.data.targets(examples)[0].shape[-1],
               "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}  # fmt: skip
        name = f"{variant}/{PHASES[trains]}"
        passes = None if trains is None else (r.query_start if trains else 0)
        fns[f"{name} step"] = functools.partial(train_step, model, optimizer, run, device, passes,
                                                itertools.count(), row)  # fmt: skip
        if row["retriever"] != "none":
            fns[f"{name} retrieval"] = functools.partial(retrieval, model, run, device, bool(trains),
                                                         itertools.count())  # fmt: skip
        rows.append((name, row))
        models[name] = model
    log(f"training ({cfg.scale} preset): timing {len(fns)} functions ({repeats} repeats, taking turns)")
    ms = {name: 1e3 * s for name, s in timed(fns, repeats, device).items()}
    for name, row in rows:
        step, found = ms[f"{name} step"], ms.get(f"{name} retrieval")
        row |= {"step_ms": step, "retrieval_ms": found, "rest_ms": step - (found or 0.0),
                "ms_per_question": step / row["batch"]}  # fmt: skip
        if (cache := models[name].topk_cache) is not None:
            row["cache_fill_s"] = cache.seconds  # once per run, in its first step before query_start
        log(
            f"training {name}: {step:.0f} ms/step"
            + (f" (retrieval {found:.0f})" if found is not None else "")
        )
    data, m = model.data, cfg.qa.model
    return {"preset": cfg.scale, "overrides": list(overrides), "batch": rows[0][1]["batch"], "k": r.k,
            "entities": cfg.knowledge.n_entities, "passages": len(data.passages["2016"]), "vocab": data.vocab_size,
            "train_questions": len(data.train_ids),
            "max_source_len": cfg.knowledge.max_source_len,
            "generator": {key: m[key] for key in ("d_model", "n_heads", "d_ff", "n_layers", "dropout")},
            "generator_params": sum(p.numel() for p in model.generator.parameters()),
            "query_layers": r.query_layers, "query_start": r.query_start, "query_lr_scale": r.query_lr_scale,
            "grad_clip": runs["rag_sequence"].train.grad_clip, "workers": cfg.workers,
            "rows": [row for _, row in rows]}  # fmt: skip


def run(
    out_dir: str | Path,
    passages: tuple[int, ...] = (10_000, 100_000),
    encode: int = 2000,
    repeats: int = 5,
    full: bool = False,
    queries: int = QUERIES,
    preset: str = "cpu",
    overrides: tuple[str, ...] = (),
    log: Callable[[str], None] = print,
) -> dict:
    """Encoding, the indexes at each size in ``passages`` and the training steps of ``preset``'s runs (with
    ``overrides``); torch on CUDA if available, faiss on the CPU; write ``out_dir/bench.{md,json}``."""
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
    rows = []
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
            source = {"vectors": "tiled", "knowledge_base_passages": len(passage_texts(kb_n)),
                      "encoded": len(sample_texts), "copies": -(-n // len(sample_texts)), "noise_norm": noise}  # fmt: skip
        query_vectors = encoder.encode([q.text for q in question_texts(kb_n, queries)])
        rows.append({**bench_index(vectors, query_vectors, repeats, log), "source": source})
    del encoder
    training = bench_training(preset, tuple(overrides), repeats, device, log)
    result = {**environment(device), "faiss": package_version("faiss-cpu") or faiss.__version__,
              "faiss_threads": faiss.omp_get_max_threads(), "full": full, "repeats": repeats,
              "encoding": encoding, "hnsw": HNSW, "index": rows, "training": training}  # fmt: skip
    return write_results(out_dir, result, _markdown)


def _vectors(source: dict) -> str:
    if source["vectors"] == "real":
        return f"real: {source['encoded']:,} encoded passages of a {source['knowledge_base_passages']:,}-passage KB"
    return (f"tiled: {source['encoded']:,} real encoded passages (a {source['knowledge_base_passages']:,}-passage "
            f"KB's sample) x {source['copies']}, noise norm {source['noise_norm']:.3f}")  # fmt: skip


def _row_name(x: dict) -> str:
    if x["retriever"] == "none":
        return "closed book (generator alone, K = 1)"
    return f"RAG-{x['marginal'].capitalize()}, {'BM25' if x['retriever'] == 'bm25' else 'dense'}"


def _bert_q(x: dict, t: dict) -> str:
    if x["query_trains"] is None:
        return "-"
    return (f"top {t['query_layers']} layers train (step >= {t['query_start']})" if x["query_trains"]
            else f"frozen (step < {t['query_start']})")  # fmt: skip


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _markdown(r: dict) -> str:
    e, t = r["encoding"], r["training"]
    g = t["generator"]
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
    overrides = f" with {', '.join(t['overrides'])}" if t["overrides"] else ""
    lines += [
        "",
        f"Queries: real questions of the knowledge base the vectors came from, encoded by the same MiniLM; recall "
        f"over {r['index'][0]['queries']} of them. Tiled vectors: the sample's first copy as encoded, the others "
        "plus Gaussian noise of that norm (the sample's median nearest-neighbour distance), renormalised.",
        "",
        f"## Training step of the {t['preset']} preset's runs{overrides}: batch {t['batch']}, K = {t['k']} "
        f"(ms, median of {r['repeats']} steps taking turns)",
        "",
        f"The models, batches and optimizer of `nox -s reproduce-rag scale={t['preset']}`: knowledge base of "
        f"{t['entities']:,} entities ({t['passages']:,} passages per index, exact faiss search over MiniLM "
        f"vectors); generator: the zoo's transformer, d_model {g['d_model']}, {g['n_heads']} heads, d_ff "
        f"{g['d_ff']}, {g['n_layers']} + {g['n_layers']} layers, dropout {g['dropout']} "
        f"({t['generator_params']:,} params), BPE vocabulary {t['vocab']:,}, sources cut at {t['max_source_len']} "
        f"tokens; BERT_q (MiniLM): its top {t['query_layers']} layers train from step {t['query_start']} on, at "
        f"{t['query_lr_scale']:g} x the lr. A step: forward, backward, gradients clipped at {t['grad_clip']:g}, "
        "one AdamW step. Retrieval: `RagModel.retrieve` alone (BERT_q's forward and the search, or BM25; "
        "BERT_q frozen: a look-up in the cache of the training questions' top k); rest: "
        "the step without it (sources, generator forward + backward, BERT_q's backward, optimizer). S, T: source "
        f"and target length of the first batch. The preset trains {t['workers']} runs at a time, each on its "
        "share of the threads; here one step ran at a time.",
        "",
        "| run | BERT_q | step | retrieval | rest | ms / question | params with a gradient | S | T |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {_row_name(x)} | {_bert_q(x, t)} | {x['step_ms']:.0f} | {_ms(x['retrieval_ms'])} | {x['rest_ms']:.0f} | "
        f"{x['ms_per_question']:.1f} | {x['trained_params']:,} | {x['S']} | {x['T']} |"
        for x in t["rows"]
    ]
    fills = [
        f"{_row_name(x)}, BERT_q frozen: the cache of the {t['train_questions']:,} training questions' top {x['k']} "
        f"filled in {x['cache_fill_s']:.1f} s, once per run (its retrieval above is a look-up in it)."
        for x in t["rows"]
        if "cache_fill_s" in x
    ]
    lines += ["", *fills] if fills else []
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
    parser.add_argument("--preset", default="cpu", help="the preset whose runs' training step is timed")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args()
    try:
        result = run(args.out, tuple(args.passages), args.encode, args.repeats, args.full,
                     preset=args.preset, overrides=tuple(args.override))  # fmt: skip
        print(_markdown(result), end="")
    except PaperzooError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
