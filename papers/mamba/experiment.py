"""What `nox -s reproduce-mamba` trains (Gu & Dao 2023, Sec. 4.1-4.2 and Appendix E.1, scaled down).

selective_copying   Table 1: S6 vs LTI (S4D-style) SSM, each in the Mamba block and without gate
induction_heads     Table 2: Mamba vs MHA-Abs, trained at L=256 (cpu: 64, both through curricula),
                    tested at 2^6 .. 2^20 (cpu: 2^14)
shakespeare_char    Sec. 4.2: Mamba vs a GPT of about equal parameter count, val loss and tokens/s

Each task's section holds the config of each model it trains (``model``, or one node per variant: the
config dataclass of that architecture in ``common.models.zoo``); fields that come from the data
(vocab_size) are filled in when the model is built. Tasks read no data until they train.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from omegaconf import MISSING, OmegaConf

from common.config import BaseConfig, TrainConfig, train_config
from common.data.corpus import LanguageModelingTask
from common.data.synthetic import CurriculumStage, InductionHeads, SelectiveCopying
from common.errors import PaperzooError
from common.experiment import LazyTask, Run
from common.models import zoo
from common.models.gpt import GPTConfig
from common.models.mha import MHAConfig

from .model import MambaLMConfig

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
    test_size: int = 512
    # a context-length curriculum shared by every variant (CurriculumStage: length = n_ctx of its batches,
    # batch_size 0 = train.batch_size); the stages' steps replace train.max_steps; tested at n_ctx
    stages: list[CurriculumStage] = field(default_factory=list)
    variants: list[str] = field(default_factory=lambda: list(SSM_VARIANTS))
    # vocab_size: the task's vocab; selective / gated: set by each variant
    model: MambaLMConfig = field(default_factory=lambda: MambaLMConfig(MISSING, d_model=64, n_layers=2))
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class InductionHeadsConfig:
    train_len: int = 256
    vocab: int = 16
    test_lengths: list[int] = field(default_factory=lambda: [2**k for k in range(6, 15)])
    attention_max_test_len: int = 2048  # MHA-Abs is quadratic: not tested beyond this
    # Length curricula (common.data.synthetic.InductionHeads): a run with stages trains their steps in order
    # (the sum replaces train.max_steps); none: train.max_steps at train_len
    mamba_stages: list[CurriculumStage] = field(default_factory=list)
    mha_abs_stages: list[CurriculumStage] = field(default_factory=list)
    test_size: int = 256
    max_eval_tokens: int = 2**17  # per evaluation forward pass
    min_test_size: int = 16  # sequences tested at least at every length, however long (more slices)
    variants: list[str] = field(default_factory=lambda: ["mamba", "mha_abs"])
    # the models of the variants of the same names (vocab_size: the task's vocab)
    mamba: MambaLMConfig = field(default_factory=lambda: MambaLMConfig(MISSING, d_model=64, n_layers=2))
    mha_abs: MHAConfig = field(default_factory=lambda: MHAConfig(MISSING, d_model=128, n_layers=2, n_heads=8))
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class LanguageModelConfig:
    corpus: str = "tinyshakespeare"
    tokenizer: str = "char"
    block_size: int = 128
    eval_batches: int = 40
    variants: list[str] = field(default_factory=lambda: ["mamba", "gpt"])
    # the models of the variants of the same names (vocab_size: the corpus's); a Mamba block has about half
    # the parameters of attention + MLP, hence twice the layers
    mamba: MambaLMConfig = field(default_factory=lambda: MambaLMConfig(MISSING, d_model=128, n_layers=4))
    gpt: GPTConfig = field(
        default_factory=lambda: GPTConfig(MISSING, "${..block_size}", n_layers=2, n_heads=4, d_model=128)
    )
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class Config(BaseConfig):
    selective_copying: SelectiveCopyingConfig = field(default_factory=SelectiveCopyingConfig)
    induction_heads: InductionHeadsConfig = field(default_factory=InductionHeadsConfig)
    language_model: LanguageModelConfig = field(default_factory=LanguageModelConfig)


def with_stages(train: TrainConfig, stages: list) -> tuple[TrainConfig, tuple[CurriculumStage, ...], dict]:
    """The run's train config (max_steps: the stages' sum), its stages in batches (x grad_accum) and the MLflow
    param that names them; unchanged without stages."""
    stages = [OmegaConf.to_object(s) for s in stages]
    if not stages:
        return train, (), {}
    label = " ".join(f"{s.steps}x{s.length}{'+shift' if s.shift else ''}" for s in stages)
    train = replace(train, max_steps=sum(s.steps for s in stages))
    return train, tuple(replace(s, steps=s.steps * train.grad_accum) for s in stages), {"stages": label}


def selective_copying_runs(c: SelectiveCopyingConfig) -> list[Run]:
    train, stages, params = with_stages(train_config(c.train), c.stages)
    task = SelectiveCopying(c.n_ctx, c.n_data, c.vocab, c.test_size, stages=stages)
    runs = []
    for name in c.variants:
        selective, gated = SSM_VARIANTS[name]
        change = {"selective": selective, "gated": gated}

        def build(change=change):
            return zoo.build("mamba", c.model, vocab_size=c.vocab, **change)

        runs.append(
            Run("selective_copying", name, build, task, train, change | params, section="selective_copying")
        )
    return runs


def induction_heads_runs(c: InductionHeadsConfig) -> list[Run]:
    runs = []
    for name in c.variants:
        lengths = (
            c.test_lengths
            if name == "mamba"
            else [n for n in c.test_lengths if n <= c.attention_max_test_len]
        )
        train, stages, params = with_stages(train_config(c.train), c[f"{name}_stages"])
        task = InductionHeads(c.train_len, c.vocab, tuple(lengths), c.test_size, c.max_eval_tokens, stages=stages,
                              min_test_size=c.min_test_size)  # fmt: skip
        arch = {"mamba": "mamba", "mha_abs": "mha"}[name]

        def build(arch=arch, model=c[name]):
            return zoo.build(arch, model, vocab_size=c.vocab)

        runs.append(Run("induction_heads", name, build, task, train, params, section="induction_heads"))
    return runs


def language_model_runs(c: LanguageModelConfig) -> list[Run]:
    task = LazyTask(
        lambda: LanguageModelingTask(c.corpus, c.tokenizer, c.block_size, eval_batches=c.eval_batches)
    )

    def builder(name):
        return lambda: zoo.build(name, c[name], vocab_size=task.task.vocab_size)

    return [Run("shakespeare_char", name, builder(name), task, train_config(c.train), section="language_model")
            for name in c.variants]  # fmt: skip


def plan(cfg: Config) -> list[Run]:
    for section, allowed in (("selective_copying", SSM_VARIANTS), ("induction_heads", ("mamba", "mha_abs")),
                             ("language_model", ("mamba", "gpt"))):  # fmt: skip
        unknown = set(cfg[section].variants) - set(allowed)
        if unknown:
            raise PaperzooError(
                f"unknown {section}.variants {sorted(unknown)}; choose from {', '.join(allowed)}"
            )
    if cfg.induction_heads.min_test_size < 1:
        raise PaperzooError(
            f"induction_heads.min_test_size is {cfg.induction_heads.min_test_size}; needs >= 1"
        )
    for variant in ("mamba", "mha_abs"):
        for i, stage in enumerate(cfg.induction_heads[f"{variant}_stages"]):
            if stage.length < 3 or stage.steps < 1 or stage.batch_size < 0 or not 0 < stage.first <= 1:
                raise PaperzooError(
                    f"induction_heads.{variant}_stages[{i}] (length {stage.length}, steps {stage.steps}, batch_size "
                    f"{stage.batch_size}, first {stage.first}): needs length >= 3, steps >= 1, batch_size >= 0, "
                    "0 < first <= 1"
                )
    sc = cfg.selective_copying
    for i, stage in enumerate(sc.stages):
        if (
            stage.length < sc.n_data
            or stage.steps < 1
            or stage.batch_size < 0
            or stage.first != 1
            or stage.shift
        ):
            raise PaperzooError(
                f"selective_copying.stages[{i}] (length {stage.length}, steps {stage.steps}, batch_size "
                f"{stage.batch_size}): needs length >= n_data ({sc.n_data}), steps >= 1, batch_size >= 0, and no "
                "first or shift (induction heads' only)"
            )
    # the longest runs first: workers=N hands the runs out in this order, and a long run handed out last
    # would keep one worker busy while the others idle (cpu preset: induction heads 7-13 min a run)
    return [
        *induction_heads_runs(cfg.induction_heads),
        *selective_copying_runs(cfg.selective_copying),
        *language_model_runs(cfg.language_model),
    ]
