"""What `nox -s reproduce-transformer` trains (Vaswani et al. 2017, arXiv 1706.03762).

    copy/transformer           the Annotated Transformer's copy task: greedy decoding copies exactly
    multi30k/base              Multi30k de->en, the paper's architecture and training recipe (Sec. 5)
    multi30k/one_head          Table 3 row (A): one head of size d_model instead of 8 heads
    multi30k/learned_pos       Table 3 row (E): learned instead of sinusoidal positions
    shakespeare_char/gpt       the decoder-only descendant: nanoGPT's shakespeare_char recipe
    wmt14_en_de/base           opt-in (``wmt14.enabled=true``; internet and a big GPU): Table 2

Every task has its own ``model`` and ``train`` sections; tasks load their data lazily, on the first
batch, so ``only=[copy]`` never reads a corpus. ``train.noam_d_model`` follows ``model.d_model``
(an interpolation in base.yaml) so the schedule of Eq. 3 always uses the model's width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.config import BaseConfig, TrainConfig, train_config
from common.data.corpus import LanguageModelingTask
from common.errors import PaperzooError
from common.experiment import LazyTask, Run
from common.models.gpt import GPTConfig, build_gpt

from .model import Transformer, TransformerConfig
from .task import CopyTask, Multi30kTask, WMT14Task

MULTI30K_VARIANTS = ("base", "one_head", "learned_pos")


@dataclass
class ModelConfig:
    """The encoder-decoder (papers.transformer.model.TransformerConfig without the vocabulary)."""

    d_model: int = 256
    n_heads: int = 8
    d_ff: int = 1024
    n_layers: int = 3
    dropout: float = 0.1
    label_smoothing: float = 0.1
    norm_first: bool = False
    max_len: int = 256


@dataclass
class CopyConfig:
    vocab_size: int = 11  # including <pad>, <s>, </s>
    length: int = 10
    test_size: int = 200
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class TranslationConfig:
    vocab_size: int = 8000  # joint BPE, including the 4 specials
    bucket: int = 100  # > 1: batches of pairs of similar length (data.translation_batch); 0: plain shuffle
    beam_size: int = 4  # test/bleu: beam search on the test set at the end of training (Sec. 6.1)
    alpha: float = 0.6  # length penalty
    eval_batch_size: int = 64
    bleu_sentences: int | None = None  # None: the whole test set
    model: ModelConfig = field(default_factory=ModelConfig)
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
class GPTSection:
    """nanoGPT's shakespeare_char (a GPT-2 on characters; common.models.gpt)."""

    block_size: int = 64
    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 128
    dropout: float = 0.0
    bias: bool = False  # nanoGPT's train.py default
    eval_batches: int = 100  # val/loss over eval_batches x eval_batch_size random windows
    eval_batch_size: int = 32
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class Config(BaseConfig):
    copy: CopyConfig = field(default_factory=CopyConfig)
    multi30k: Multi30kConfig = field(default_factory=Multi30kConfig)
    shakespeare_char: GPTSection = field(default_factory=GPTSection)
    wmt14: WMT14Config = field(default_factory=WMT14Config)


def _transformer(vocab: Callable[[], int], m: ModelConfig, **changes) -> Callable[[], Transformer]:
    def build() -> Transformer:
        fields_ = dict(d_model=m.d_model, n_heads=m.n_heads, d_ff=m.d_ff, n_layers=m.n_layers,
                       dropout=m.dropout, label_smoothing=m.label_smoothing, norm_first=m.norm_first,
                       max_len=m.max_len)  # fmt: skip
        return Transformer(TransformerConfig(vocab_size=vocab(), **{**fields_, **changes}))

    return build


def _model_params(m: ModelConfig, **changes) -> dict[str, Any]:
    return {**{k: getattr(m, k) for k in ("d_model", "n_heads", "d_ff", "n_layers", "dropout")},
            "positions": "sinusoidal", **changes}  # fmt: skip


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
    copy_task = CopyTask(c.vocab_size, c.length, c.test_size)
    runs.append(Run("copy", "transformer", _transformer(lambda: c.vocab_size, c.model), copy_task,
                    train_config(c.train), _model_params(c.model)))  # fmt: skip

    t = cfg.multi30k
    multi30k = LazyTask(lambda: Multi30kTask(t.vocab_size, t.beam_size, t.alpha, t.eval_batch_size,
                                         t.bleu_sentences, bucket=t.bucket))  # fmt: skip
    for variant in t.variants:
        change = multi30k_variant(variant)
        runs.append(Run("multi30k", variant, _transformer(lambda: multi30k.task.vocab_size, t.model, **change),
                        multi30k, train_config(t.train), _model_params(t.model, **change)))  # fmt: skip

    g = cfg.shakespeare_char
    shakespeare = LazyTask(lambda: LanguageModelingTask("tinyshakespeare", "char", block_size=g.block_size,
                                                    eval_batches=g.eval_batches,
                                                    eval_batch_size=g.eval_batch_size))  # fmt: skip

    def gpt():
        return build_gpt(GPTConfig(vocab_size=shakespeare.task.vocab_size, block_size=g.block_size,
                                   n_layers=g.n_layers, n_heads=g.n_heads, d_model=g.d_model,
                                   dropout=g.dropout, bias=g.bias))  # fmt: skip

    runs.append(Run("shakespeare_char", "gpt", gpt, shakespeare, train_config(g.train),
                    {k: getattr(g, k) for k in ("block_size", "n_layers", "n_heads", "d_model", "dropout",
                                                "bias")}))  # fmt: skip

    w = cfg.wmt14
    if w.enabled:
        wmt = LazyTask(lambda: WMT14Task(w.source, w.target, w.vocab_size, w.beam_size, w.alpha,
                                     w.eval_batch_size, w.bleu_sentences, bucket=w.bucket,
                                     max_train_pairs=w.max_train_pairs, max_tokens=w.max_tokens))  # fmt: skip
        runs.append(Run(f"wmt14_{w.source}_{w.target}", w.variant, _transformer(lambda: wmt.task.vocab_size, w.model),
                        wmt, train_config(w.train), _model_params(w.model)))  # fmt: skip
    return runs
