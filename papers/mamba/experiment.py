"""What `nox -s reproduce-mamba` trains (Gu & Dao 2023, Sec. 4.1-4.2 and Appendix E.1, scaled down).

selective_copying   Table 1: S6 vs LTI (S4D-style) SSM, each in the Mamba block and without gate
induction_heads     Table 2: Mamba vs MHA-Abs, trained at L=256 (cpu: 64, both through curricula),
                    tested at 2^6 .. 2^20 (cpu: 2^14)
shakespeare_char    Sec. 4.2: Mamba vs a GPT of about equal parameter count, val loss and tokens/s
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from omegaconf import OmegaConf

from common.config import BaseConfig, TrainConfig, train_config
from common.data.corpus import LanguageModelingTask
from common.data.synthetic import CurriculumStage, InductionHeads, SelectiveCopying
from common.errors import PaperzooError
from common.experiment import Run
from common.models.attention import CausalSelfAttention
from common.models.gpt import GPTConfig, build_gpt
from common.models.lm import CausalLM, GeluMLP

from .model import build_mamba_lm

# variant -> (selective, gated)
SSM_VARIANTS = {
    "s6": (True, True),
    "lti": (False, True),
    "s6_nogate": (True, False),
    "lti_nogate": (False, False),
}


@dataclass
class SelectiveCopyingConfig:
    n_ctx: int = 256  # context length (paper: 4096); 16 outputs follow
    n_data: int = 16
    vocab: int = 16
    d_model: int = 64
    n_layers: int = 2
    d_state: int = 16
    test_size: int = 512
    variants: list[str] = field(default_factory=lambda: list(SSM_VARIANTS))
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class InductionHeadsConfig:
    train_len: int = 256
    vocab: int = 16
    test_lengths: list[int] = field(default_factory=lambda: [2**k for k in range(6, 15)])
    attention_max_test_len: int = 2048  # MHA-Abs is quadratic: not tested beyond this
    mamba_d_model: int = 64
    # Length curricula (common.data.synthetic.InductionHeads): a run with stages trains their steps in order
    # (the sum replaces train.max_steps); none: train.max_steps at train_len
    mamba_stages: list[CurriculumStage] = field(default_factory=list)
    mha_abs_stages: list[CurriculumStage] = field(default_factory=list)
    attention_d_model: int = 128
    n_layers: int = 2
    n_heads: int = 8
    test_size: int = 256
    max_eval_tokens: int = 2**17  # per evaluation forward pass
    variants: list[str] = field(default_factory=lambda: ["mamba", "mha_abs"])
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class LanguageModelConfig:
    corpus: str = "tinyshakespeare"
    tokenizer: str = "char"
    block_size: int = 128
    d_model: int = 128
    gpt_layers: int = 2
    gpt_heads: int = 4
    mamba_layers: int = 4  # a Mamba block has about half the parameters of attention + MLP
    eval_batches: int = 40
    variants: list[str] = field(default_factory=lambda: ["mamba", "gpt"])
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class Config(BaseConfig):
    selective_copying: SelectiveCopyingConfig = field(default_factory=SelectiveCopyingConfig)
    induction_heads: InductionHeadsConfig = field(default_factory=InductionHeadsConfig)
    language_model: LanguageModelConfig = field(default_factory=LanguageModelConfig)


def attention_lm(vocab: int, d_model: int, n_layers: int, n_heads: int) -> CausalLM:
    """MHA-Abs of Table 2: multi-head attention + MLP blocks with absolute (sinusoidal) positions."""
    return CausalLM(
        vocab, d_model, n_layers,
        mixer_factory=lambda i: CausalSelfAttention(d_model, n_heads),
        mlp_factory=lambda i: GeluMLP(d_model),
        norm="layer", positions="sinusoidal",
    )  # fmt: skip


def selective_copying_runs(c: SelectiveCopyingConfig) -> list[Run]:
    task = SelectiveCopying(c.n_ctx, c.n_data, c.vocab, c.test_size)
    runs = []
    for name in c.variants:
        selective, gated = SSM_VARIANTS[name]

        def build(selective=selective, gated=gated):
            return build_mamba_lm(
                c.vocab, c.d_model, c.n_layers, d_state=c.d_state, selective=selective, gated=gated
            )

        runs.append(Run("selective_copying", name, build, task, train_config(c.train),
                        {"selective": selective, "gated": gated}))  # fmt: skip
    return runs


def induction_heads_runs(c: InductionHeadsConfig) -> list[Run]:
    runs = []
    for name in c.variants:
        if name == "mamba":
            lengths, build = c.test_lengths, lambda: build_mamba_lm(c.vocab, c.mamba_d_model, c.n_layers)
        elif name == "mha_abs":
            lengths = [n for n in c.test_lengths if n <= c.attention_max_test_len]
            build = lambda: attention_lm(c.vocab, c.attention_d_model, c.n_layers, c.n_heads)  # noqa: E731
        else:
            raise ValueError(f"unknown induction_heads variant '{name}'; choose mamba or mha_abs")
        stages = [OmegaConf.to_object(s) for s in c[f"{name}_stages"]]
        train = train_config(c.train)
        label = " ".join(f"{s.steps}x{s.length}{'+shift' if s.shift else ''}" for s in stages)
        params = {"stages": label} if stages else {}
        if stages:
            train = replace(train, max_steps=sum(s.steps for s in stages))
            stages = [replace(s, steps=s.steps * train.grad_accum) for s in stages]
        task = InductionHeads(
            c.train_len, c.vocab, tuple(lengths), c.test_size, c.max_eval_tokens, stages=tuple(stages)
        )
        runs.append(Run("induction_heads", name, build, task, train, params))
    return runs


def language_model_runs(c: LanguageModelConfig) -> list[Run]:
    task = LanguageModelingTask(c.corpus, c.tokenizer, c.block_size, eval_batches=c.eval_batches)
    builders = {
        "mamba": lambda: build_mamba_lm(task.vocab_size, c.d_model, c.mamba_layers),
        "gpt": lambda: build_gpt(
            GPTConfig(task.vocab_size, c.block_size, c.gpt_layers, c.gpt_heads, c.d_model)
        ),
    }
    return [Run("shakespeare_char", name, builders[name], task, train_config(c.train)) for name in c.variants]


def plan(cfg: Config) -> list[Run]:
    for section, allowed in (("selective_copying", SSM_VARIANTS), ("induction_heads", ("mamba", "mha_abs")),
                             ("language_model", ("mamba", "gpt"))):  # fmt: skip
        unknown = set(cfg[section].variants) - set(allowed)
        if unknown:
            raise PaperzooError(
                f"unknown {section}.variants {sorted(unknown)}; choose from {', '.join(allowed)}"
            )
    for variant in ("mamba", "mha_abs"):
        for i, stage in enumerate(cfg.induction_heads[f"{variant}_stages"]):
            if stage.length < 3 or stage.steps < 1 or stage.batch_size < 0 or not 0 < stage.first <= 1:
                raise PaperzooError(
                    f"induction_heads.{variant}_stages[{i}] (length {stage.length}, steps {stage.steps}, batch_size "
                    f"{stage.batch_size}, first {stage.first}): needs length >= 3, steps >= 1, batch_size >= 0, "
                    "0 < first <= 1"
                )
    return [
        *selective_copying_runs(cfg.selective_copying),
        *induction_heads_runs(cfg.induction_heads),
        *language_model_runs(cfg.language_model),
    ]
