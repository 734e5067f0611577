"""What `nox -s reproduce-lora` trains: LoRA (Hu et al. 2021, arXiv 2106.09685) against full fine-tuning and the
paper's baselines, each adapting the same GPT that a run of this plan pretrained.

pretrain/gpt      the base model: a GPT (``common.models.gpt``) trained on ``pretrain.corpora`` (tinyshakespeare
                  and the CPython standard library), one byte-level BPE (``data.tokenizer``) trained on every
                  corpus used: the pretraining corpora and the Multi30k captions of both targets, German and
                  English. Trained once, at the first seed (``Run.seeds``); every other run of every seed
                  starts from its final weights (``Run.init_from``, pinned by the lab: never retrained);
                  ``only=[captions,de_en,subspace]`` reuses the latest finished one.
captions/*        target (a), domain adaptation: language modelling of Multi30k's English captions (val/loss)
de_en/*           target (b), conditional generation like the paper's E2E NLG: Multi30k de->en as one sequence
                  ``German <|sep|> English <|endoftext|>`` for the decoder-only GPT, the loss on the English side
                  only (val/loss), sacreBLEU of greedy (or beam) decoding on the first ``bleu_sentences`` of the
                  test set (test/bleu)
subspace/rA_vs_rB Sec. 7.2, Fig. 3: the subspace similarity φ(A_{r=A}, A_{r=B}, i, j) of the A matrices learned
                  on captions at ranks A and B: a 0-step run from the rank-B run that loads the rank-A run

The variants of a target section (``variants``; each with its own learning rate, the same steps and batches):

    base             the pretrained GPT, 0 steps: the reference for "the gap to the base model"
    full_ft          FT, every weight; ``full_ft_lr<lr>`` for each lr of ``lr_search.full_ft``
    ft_top2          FT^Top2: the last two blocks (papers.lora.baselines.ft_top)
    bitfit           BitFit: the biases
    houlsby          Adapter^H with a bottleneck of ``bottleneck``
    lora             the headline: LoRA of rank ``rank`` on W_q and W_v, α = ``alpha``; ``lora_lr<lr>`` for each
                     lr of ``lr_search.lora``
    ranks            ``rank_r<r>``: LoRA on W_q, W_v at every r of ``ranks`` (Table 6), the lr of ``lora``
    q_only           LoRA on W_q alone at rank 2 ``rank``: the parameter budget of ``lora`` (Table 5)

Beside its task's metrics every target run logs ``model/trainable_fraction`` (its trainable parameters over FT's,
the plain GPT's) and its training memory (``training_memory``: one steady-state AdamW step measured, beside the
same step of FT on a plain GPT of the same shape): ``memory/peak_mb``, ``memory/peak_over_ft`` (the training batch
and ``_b1``, one sequence: the paper's regime, where the model's state outweighs the activations),
``memory/optimizer_mb`` and ``memory/optimizer_over_ft``. The headline run of a section with ``latency`` also logs
the generation time per token at batch 1 after a short prompt (``generation_latency``): ``latency/*_over_base``
of the merged LoRA model, the unmerged one and Houlsby adapters on the same base.

A method that adds or renames tensors (LoRA, adapters) cannot be applied when the model is built: the lab then
loads the base run's weights into it by tensor name. ``adapt_after_loading`` applies it right after that load.
The data are in ``data.py``, the memory, latency and subspace measurements in ``measure.py``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from common.config import BaseConfig, TrainConfig, train_config
from common.errors import PaperzooError
from common.experiment import LazyTask, Run
from common.models import zoo
from common.models.gpt import GPTConfig
from common.models.lm import CausalLM
from common.runs import RunRef

from .baselines import bitfit, ft_top, full_ft, inject_adapters
from .data import CaptionsTask, PretrainTask, TranslationTask
from .lora import gpt_targets, inject
from .measure import SubspaceTask, Target, lora_variant, subspace_figures

PRETRAIN_CORPORA = ("tinyshakespeare", "cpython-stdlib")
METHODS = ("base", "full_ft", "ft_top2", "bitfit", "houlsby", "lora", "ranks", "q_only")


# ---- configuration -------------------------------------------------------------------------------
@dataclass
class PretrainConfig:
    corpora: list[str] = field(default_factory=lambda: list(PRETRAIN_CORPORA))
    vocab_size: int = 8192  # the one BPE of every corpus, specials included
    block_size: int = 128
    eval_batches: int = 20  # per corpus, of 16 windows
    model: GPTConfig = field(default_factory=lambda: GPTConfig("${..vocab_size}", "${..block_size}", n_layers=4,
                                                               n_heads=4, d_model=256))  # fmt: skip
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class LearningRates:
    """The peak lr of each method (every one decays to a tenth of it); ``lora`` also serves ranks and q_only."""

    full_ft: float = 1e-3
    ft_top2: float = 1e-3
    bitfit: float = 3e-3
    houlsby: float = 3e-3
    lora: float = 3e-3


@dataclass
class LRSearch:
    """More lrs for FT and LoRA (fair baselines: the claims take, per seed, each one's lr with the best val loss)."""

    full_ft: list[float] = field(default_factory=lambda: [3e-4])
    lora: list[float] = field(default_factory=lambda: [1e-3])


@dataclass
class TargetConfig:
    block_size: int = 64  # at most pretrain.block_size (learned positions)
    variants: list[str] = field(default_factory=lambda: list(METHODS))
    rank: int = 4  # the headline LoRA: W_q, W_v at this rank
    alpha: float = 32.0  # α of every LoRA run (the paper's GPT-2 value, Table 11); scale α / r
    lora_dropout: float = 0.0
    ranks: list[int] = field(default_factory=lambda: [1, 2, 8, 64])  # Table 6 (with ``rank``)
    bottleneck: int = 4  # Houlsby adapters: about LoRA's parameter count at rank 4
    lr: LearningRates = field(default_factory=LearningRates)
    lr_search: LRSearch = field(default_factory=LRSearch)
    eval_batch_size: int = 64
    latency: bool = False  # the headline run measures generation latency
    latency_prompt: int = 16  # tokens before the timed steps
    latency_tokens: int = 64  # timed steps per model (the median is kept)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class CaptionsConfig(TargetConfig):
    subspace: list[int] = field(default_factory=lambda: [8, 64])  # φ(A_{r=a}, A_{r=b}); [] plans no such run


@dataclass
class TranslationConfig(TargetConfig):
    block_size: int = 128
    variants: list[str] = field(
        default_factory=lambda: ["base", "full_ft", "ft_top2", "bitfit", "houlsby", "lora"]
    )
    bleu_sentences: int = 1000  # the first ones of test_2016_flickr (1000 in all)
    beam_size: int = 1  # 1: greedy decoding; the paper: beam 10 on E2E
    max_new_tokens: int = 64


@dataclass
class Config(BaseConfig):
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    captions: CaptionsConfig = field(default_factory=CaptionsConfig)
    translation: TranslationConfig = field(default_factory=TranslationConfig)


# ---- the methods: adapting the pretrained GPT once its weights are loaded --------------------------------
def adapt_after_loading(model: nn.Module, adapt: Callable[[nn.Module], object]) -> nn.Module:
    """``model`` that runs ``adapt(model)`` once, right after its first ``load_state_dict``: the lab builds a run's
    model and then loads its base run's final weights into it, strictly by tensor name (``common.runs``), so a
    method that adds or renames tensors must come after that load. Later loads (a resume, a finished run's
    trainable tensors over its base) find the model adapted already."""

    def hook(module: nn.Module, incompatible_keys) -> None:
        if not getattr(module, "adapted", False):
            module.adapted = True
            adapt(module)

    model.register_load_state_dict_post_hook(hook)
    return model


def lora_method(matrices: tuple[str, ...], r: int, c: TargetConfig) -> Callable[[nn.Module], None]:
    """LoRA on ``matrices`` of every block at rank r. A is drawn from a stream of its own per (run seed, matrices,
    r): runs of one seed at different ranks must not start from overlapping A's, or Sec. 7.2's φ would see the
    init; the runs of an lr search share their A, so that they differ in the lr alone."""

    def adapt(model: nn.Module) -> None:
        salt = int(torch.randint(0, 2**62, ()))  # from the run's seed: common.reproduce seeds before building
        stream = f"{salt}/{','.join(matrices)}/r{r}"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(hashlib.blake2b(stream.encode(), digest_size=7).hexdigest(), 16))
            inject(model, gpt_targets(*matrices), r, c.alpha, c.lora_dropout)

    return adapt


def target_variants(c: TargetConfig) -> dict[str, tuple[Callable | None, float, dict]]:
    """variant -> (the method's adaptation, None for the base model; its peak lr; its MLflow params)."""
    lora_params = {"method": "lora", "alpha": c.alpha, "dropout": c.lora_dropout}
    out: dict[str, tuple[Callable | None, float, dict]] = {}
    for method in c.variants:
        if method == "base":
            out["base"] = (None, c.lr.full_ft, {"method": "base"})
        elif method == "full_ft":
            for i, lr in enumerate([c.lr.full_ft, *c.lr_search.full_ft]):
                out["full_ft" if i == 0 else f"full_ft_lr{lr:g}"] = (full_ft, lr, {"method": "full_ft"})
        elif method == "ft_top2":
            out["ft_top2"] = (lambda m: ft_top(m, 2), c.lr.ft_top2, {"method": "ft_top2"})
        elif method == "bitfit":
            out["bitfit"] = (bitfit, c.lr.bitfit, {"method": "bitfit"})
        elif method == "houlsby":
            out["houlsby"] = (lambda m: inject_adapters(m, c.bottleneck), c.lr.houlsby,
                              {"method": "houlsby", "bottleneck": c.bottleneck})  # fmt: skip
        elif method == "lora":
            for i, lr in enumerate([c.lr.lora, *c.lr_search.lora]):
                name = "lora" if i == 0 else f"lora_lr{lr:g}"
                out[name] = (
                    lora_method(("q", "v"), c.rank, c),
                    lr,
                    {**lora_params, "r": c.rank, "matrices": "q,v"},
                )
        elif method == "ranks":
            for r in c.ranks:
                out[f"rank_r{r}"] = (lora_method(("q", "v"), r, c), c.lr.lora,
                                     {**lora_params, "r": r, "matrices": "q,v"})  # fmt: skip
        elif method == "q_only":
            out["q_only"] = (lora_method(("q",), 2 * c.rank, c), c.lr.lora,
                             {**lora_params, "r": 2 * c.rank, "matrices": "q"})  # fmt: skip
    return out


# ---- the plan ----------------------------------------------------------------------------------------------
def check(cfg: Config) -> None:
    """The config's problems, all in one line, before any run is planned."""
    pre, problems = cfg.pretrain, []
    if not pre.corpora or set(pre.corpora) - set(PRETRAIN_CORPORA):
        problems.append(f"pretrain.corpora {list(pre.corpora)}: choose among {', '.join(PRETRAIN_CORPORA)}")
    for section in ("captions", "translation"):
        c = cfg[section]
        if unknown := sorted(set(c.variants) - set(METHODS)):
            problems.append(f"{section}: unknown variants {unknown}; choose among {', '.join(METHODS)}")
        bad = [r for r in [c.rank, *c.ranks] if r < 1]
        if bad:
            problems.append(
                f"{section}: LoRA ranks must be >= 1, got {bad} (rank {c.rank}, ranks {list(c.ranks)})"
            )
        if c.rank in c.ranks:
            problems.append(f"{section}.ranks {list(c.ranks)} repeats the headline rank {c.rank}")
        if c.block_size > pre.block_size:
            problems.append(f"{section}.block_size {c.block_size} exceeds the base model's positions "
                            f"(pretrain.block_size {pre.block_size})")  # fmt: skip
        if c.bottleneck < 1 or min([*c.lr.values(), *c.lr_search.full_ft, *c.lr_search.lora]) <= 0:
            problems.append(f"{section}: bottleneck must be >= 1 and every lr > 0")
        for method in ("full_ft", "lora"):
            searched = [c.lr[method], *c.lr_search[method]]
            if len(set(searched)) < len(searched):
                problems.append(
                    f"{section}: {method}'s lrs {searched} repeat one (lr.{method} and lr_search.{method})"
                )
    cap = cfg.captions
    planned = [cap.rank] * ("lora" in cap.variants) + list(cap.ranks) * ("ranks" in cap.variants)
    sub = list(cap.subspace)
    if sub and not (len(sub) == 2 and sub[0] < sub[1] and set(sub) <= set(planned)):
        problems.append(f"captions.subspace {sub}: two increasing ranks of captions' LoRA runs on W_q, W_v "
                        f"({planned}), or []")  # fmt: skip
    tr = cfg.translation
    if tr.beam_size < 1 or tr.bleu_sentences < 1 or tr.max_new_tokens < 1:
        problems.append("translation: beam_size, bleu_sentences and max_new_tokens must be >= 1")
    if problems:
        raise PaperzooError("; ".join(problems))


def plan(cfg: Config) -> list[Run]:
    check(cfg)
    pre = cfg.pretrain

    def build_gpt() -> CausalLM:
        return zoo.build("gpt", pre.model)

    runs = [Run("pretrain", "gpt", build_gpt, LazyTask(lambda: PretrainTask(pre)), train_config(pre.train),
                section="pretrain", seeds=(cfg.seeds[0],))]  # fmt: skip
    base = RunRef("lora", cfg.scale, "pretrain", "gpt", cfg.seeds[0])  # every seed's runs adapt this one
    captions = LazyTask(lambda: CaptionsTask(pre, cfg.captions))
    translation = LazyTask(lambda: TranslationTask(pre, cfg.translation))
    for task, section, data in (("captions", "captions", captions), ("de_en", "translation", translation)):
        c = cfg[section]
        for variant, (adapt, lr, params) in target_variants(c).items():
            train = replace(train_config(c.train), lr=lr, min_lr=lr / 10)
            if adapt is None:
                train.max_steps = 0

            def build(adapt=adapt) -> CausalLM:
                model = build_gpt()
                return model if adapt is None else adapt_after_loading(model, adapt)

            target = Target(data, train, c if variant == "lora" and c.latency else None)
            runs.append(Run(task, variant, build, target, train, {**params, "lr": lr}, section=section,
                            init_from=base))  # fmt: skip
    if cfg.captions.subspace:
        runs.append(subspace_run(cfg, captions, build_gpt))
    return runs


def subspace_run(cfg: Config, captions: LazyTask, build_gpt: Callable[[], CausalLM]) -> Run:
    """Sec. 7.2: a 0-step run from the captions LoRA run at the larger rank of ``captions.subspace`` whose
    evaluation loads the run at the smaller rank; once, at the first seed (``init_from`` names one run)."""
    c = cfg.captions
    small, large = c.subspace
    refs = {
        r: RunRef("lora", cfg.scale, "captions", lora_variant(c.rank, r), cfg.seeds[0])
        for r in (small, large)
    }

    def build(r: int) -> CausalLM:
        return adapt_after_loading(build_gpt(), lora_method(("q", "v"), r, c))

    return Run("subspace", f"r{small}_vs_r{large}", lambda: build(large),
               SubspaceTask(captions, refs[small], lambda: build(small)), replace(train_config(c.train), max_steps=0),
               {"small": small, "large": large}, section="captions", init_from=refs[large], seeds=(cfg.seeds[0],))  # fmt: skip


def figures(mlflow_client, runs: dict, folder) -> list[tuple[str, str]]:
    """The report's figures beside the lab's (common.report): Fig. 3's subspace similarity as heat maps."""
    return subspace_figures(mlflow_client, runs, folder)
