"""What `nox -s reproduce-transformer` trains (Vaswani et al. 2017, arXiv 1706.03762).

    copy/transformer           the Annotated Transformer's copy task: greedy decoding copies exactly
    multi30k/base              Multi30k de->en, the paper's architecture and training recipe (Sec. 5)
    multi30k/one_head          Table 3 row (A): one head of size d_model instead of 8 heads
    multi30k/learned_pos       Table 3 row (E): learned instead of sinusoidal positions
    shakespeare_char/gpt       the decoder-only descendant: nanoGPT's shakespeare_char recipe
    wmt14_en_de/base           opt-in (``wmt14.enabled=true``; internet and a big GPU): Table 2

Every task has its own ``model`` (the architecture's config dataclass: papers.transformer.model.TransformerConfig,
common.models.gpt.GPTConfig; vocab_size is the task's, filled in at build time) and ``train`` sections; tasks
load their data lazily, on the first batch, so ``only=[copy]`` never reads a corpus. ``train.noam_d_model`` follows ``model.d_model``
(an interpolation in base.yaml) so the schedule of Eq. 3 always uses the model's width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from common.config import BaseConfig, TrainConfig, train_config
from common.data.corpus import LanguageModelingTask
from common.errors import PaperzooError
from common.experiment import LazyTask, Run
from common.models import zoo
from common.models.gpt import GPTConfig

from .model import TransformerConfig
from .task import CopyTask, Multi30kTask, WMT14Task

MULTI30K_VARIANTS = ("base", "one_head", "learned_pos")


def _transformer_config() -> TransformerConfig:
    """The encoder-decoder of each task; vocab_size comes from the task when the model is built."""
    return TransformerConfig(MISSING, d_model=256, n_heads=8, d_ff=1024, n_layers=3)


@dataclass
class CopyConfig:
    vocab_size: int = 11  # including <pad>, <s>, </s>
    length: int = 10
    test_size: int = 200
    model: TransformerConfig = field(default_factory=_transformer_config)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class TranslationConfig:
    vocab_size: int = 8000  # joint BPE, including the 4 specials
    bucket: int = 100  # > 1: batches of pairs of similar length (data.translation_batch); 0: plain shuffle
    beam_size: int = 4  # test/bleu: beam search on the test set at the end of training (Sec. 6.1)
    alpha: float = 0.6  # length penalty
    eval_batch_size: int = 64
    bleu_sentences: int | None = None  # None: the whole test set
    model: TransformerConfig = field(default_factory=_transformer_config)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class Multi30kConfig(TranslationConfig):
    variants: list[str] = field(default_factory=lambda: list(MULTI30K_VARIANTS))


@dataclass
class WMT14Config(TranslationConfig):
    enabled: bool = False  # opt-in: downloads WMT 2014 through Hugging Face `datasets`
    variant: str = "base"  # the run's name: "base" or "big" (set model.* to the big model's sizes)
    source: str = "en"  # Table 2: EN-DE (en -> de) and EN-FR (en -> fr)
    target: str = "de"
    max_train_pairs: int | None = None  # None: all of them (4.5M for EN-DE)
    max_tokens: int | None = 128  # drop training pairs longer than this on either side


@dataclass
class ShakespeareCharConfig:
    """nanoGPT's shakespeare_char (a GPT-2 on characters; common.models.gpt)."""

    block_size: int = 64  # the training window, and the model's context
    eval_batches: int = 100  # val/loss over eval_batches x eval_batch_size random windows
    eval_batch_size: int = 32
    # vocab_size: the corpus's; bias=False: nanoGPT's train.py default
    model: GPTConfig = field(
        default_factory=lambda: GPTConfig(
            MISSING, "${..block_size}", n_layers=4, n_heads=4, d_model=128, bias=False
        )
    )
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class Config(BaseConfig):
    copy: CopyConfig = field(default_factory=CopyConfig)
    multi30k: Multi30kConfig = field(default_factory=Multi30kConfig)
    shakespeare_char: ShakespeareCharConfig = field(default_factory=ShakespeareCharConfig)
    wmt14: WMT14Config = field(default_factory=WMT14Config)


def multi30k_variant(name: str) -> dict[str, Any]:
    """The change a Multi30k variant makes to the base model (Table 3)."""
    if name == "base":
        return {}
    if name == "one_head":  # row (A): h = 1, d_k = d_v = d_model
        return {"n_heads": 1}
    if name == "learned_pos":  # row (E): learned positional embedding
        return {"positions": "learned"}
    raise PaperzooError(
        f"unknown Multi30k variant '{name}' in multi30k.variants; choose {', '.join(MULTI30K_VARIANTS)}"
    )


def plan(cfg: Config) -> list[Run]:
    runs = []

    c = cfg["copy"]  # (not cfg.copy: DictConfig.copy is a method)
    copy_task = CopyTask(c.vocab_size, c.length, c.test_size)  # synthetic: reads no data
    runs.append(Run("copy", "transformer", lambda: zoo.build("transformer", c.model, vocab_size=c.vocab_size),
                    copy_task, train_config(c.train), section="copy"))  # fmt: skip

    t = cfg.multi30k
    multi30k = LazyTask(lambda: Multi30kTask(t.vocab_size, t.beam_size, t.alpha, t.eval_batch_size,
                                         t.bleu_sentences, bucket=t.bucket))  # fmt: skip
    for variant in t.variants:
        change = multi30k_variant(variant)

        def build(change=change):
            return zoo.build("transformer", t.model, vocab_size=multi30k.task.vocab_size, **change)

        runs.append(
            Run("multi30k", variant, build, multi30k, train_config(t.train), change, section="multi30k")
        )

    g = cfg.shakespeare_char
    shakespeare = LazyTask(lambda: LanguageModelingTask("tinyshakespeare", "char", block_size=g.block_size,
                                                    eval_batches=g.eval_batches,
                                                    eval_batch_size=g.eval_batch_size))  # fmt: skip
    runs.append(Run("shakespeare_char", "gpt", lambda: zoo.build("gpt", g.model, vocab_size=shakespeare.task.vocab_size),
                    shakespeare, train_config(g.train), section="shakespeare_char"))  # fmt: skip

    w = cfg.wmt14
    if w.enabled:
        wmt = LazyTask(lambda: WMT14Task(w.source, w.target, w.vocab_size, w.beam_size, w.alpha,
                                     w.eval_batch_size, w.bleu_sentences, bucket=w.bucket,
                                     max_train_pairs=w.max_train_pairs, max_tokens=w.max_tokens))  # fmt: skip
        runs.append(Run(f"wmt14_{w.source}_{w.target}", w.variant,
                        lambda: zoo.build("transformer", w.model, vocab_size=wmt.task.vocab_size),
                        wmt, train_config(w.train), section="wmt14"))  # fmt: skip
    return runs
