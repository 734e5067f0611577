"""What `nox -s reproduce-ttt` trains: TTT-Linear and TTT-MLP (Sun et al. 2024, arXiv 2407.04620) against a GPT
and Mamba of equal size and tokens, Table 1's ladder from linear attention to TTT, the mini-batch size
trade-off, and the loss per position on long documents.

language_model   tinyshakespeare characters: GPT, Mamba, TTT-Linear (T), TTT-MLP (T) and TTT-Linear (M), each
                 with its own lr search over the same ``lrs`` (run variants ``<arch>_lr<lr>``; the claims take
                 each architecture's best lr per seed). The evaluation also checks, on each trained LM, the
                 recurrent form (one token at a time) against the parallel one.
ladder           the same data: Table 1's rungs, each one change on the one before (``RUNGS``), then the
                 full TTT-Linear (T) at every mini-batch size b of ``mini_batches`` and b = T (``mbT``): the
                 paper's mini-batch ablation (Fig. "mini-batch size b": quality vs time per token). One lr for
                 every variant of the section (ablations of one method, as the paper's). The linear-attention
                 rung also measures Theorem 1 on its trained layers and val text (``theorem1/max_abs_diff``).
long_context     cpython-stdlib, windows of ``block_size`` tokens from the start of real documents
                 (common.data.documents): the loss per position bucket of a Transformer (sinusoidal positions:
                 no table to pay for at long context), Mamba, TTT-Linear and TTT-MLP (Fig. 2 / the
                 long-context figures). One lr for all (every architecture judged against itself).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

import torch
from omegaconf import MISSING

from common.config import BaseConfig, TrainConfig, train_config
from common.data.corpus import LanguageModelingTask
from common.data.documents import LongDocumentTask
from common.errors import PaperzooError
from common.experiment import LazyTask, Run
from common.inference import recurrent_vs_parallel
from common.models import zoo
from common.models.gpt import GPTConfig
from common.models.mha import MHAConfig

from .model import TTTConfig, TTTMixer
from .ops import linear_attention

MambaLMConfig = zoo.config_class("mamba")  # the baseline's schema, from the zoo

# Table 1, each rung one change on the previous (b = T is the block size); the last rungs are the sweep's mb16
# (+ learnable η) and language_model's TTT-Linear (M) (+ the Mamba backbone)
RUNGS = {
    "linattn": dict(
        learn_init=False, ln_residual=False, learn_lr=False, grad_mean=False
    ),  # Theorem 1's layer
    "w0": dict(ln_residual=False, learn_lr=False, grad_mean=False),  # + learnable W_0
    "ln": dict(learn_lr=False, grad_mean=False),  # + LN and residual in f
    "ln_mean": dict(learn_lr=False),  # + the official weighting 1 / i of the gradients (still b = T)
    "mb16_fixed": dict(learn_lr=False, mini_batch=16),  # + mini-batch TTT (b = 16)
}
LM_ARCHS = ("gpt", "mamba", "ttt_linear", "ttt_mlp", "ttt_linear_m")
LONG_ARCHS = ("mha", "mamba", "ttt_linear", "ttt_mlp")


def _ttt(**changes) -> TTTConfig:
    return replace(TTTConfig(MISSING, 64, n_layers=2, n_heads=4), **changes)


@dataclass
class LanguageModelConfig:
    corpus: str = "tinyshakespeare"
    tokenizer: str = "char"
    block_size: int = 128
    eval_batches: int = 40
    variants: list[str] = field(default_factory=lambda: list(LM_ARCHS))
    lrs: list[float] = field(default_factory=lambda: [3e-3, 1e-2])
    check_tokens: int = 64  # recurrent == parallel on this many val tokens
    # equal parameter counts (about 112k with 65 characters): see the presets
    gpt: GPTConfig = field(default_factory=lambda: GPTConfig(MISSING, "${..block_size}", n_layers=2, n_heads=4,
                                                             d_model=64))  # fmt: skip
    mamba: MambaLMConfig = field(default_factory=lambda: MambaLMConfig(MISSING, 64, n_layers=3, d_state=24))
    ttt_linear: TTTConfig = field(default_factory=lambda: _ttt(mlp_hidden=280))
    ttt_mlp: TTTConfig = field(default_factory=lambda: _ttt(inner="mlp", inner_lr=0.05, mlp_hidden=224))
    ttt_linear_m: TTTConfig = field(default_factory=lambda: _ttt(backbone="mamba", mlp_hidden=280))
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class LadderConfig:
    corpus: str = "tinyshakespeare"
    tokenizer: str = "char"
    block_size: int = 128
    eval_batches: int = 40
    rungs: list[str] = field(default_factory=lambda: list(RUNGS))
    mini_batches: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])  # and always b = T: "mbT"
    lr: float = 3e-3
    ttt: TTTConfig = field(default_factory=lambda: _ttt(mlp_hidden=280))
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class LongContextConfig:
    corpus: str = "cpython-stdlib"
    tokenizer: str = "char"
    block_size: int = 1024
    buckets: int = 8
    eval_windows: int = 64
    variants: list[str] = field(default_factory=lambda: list(LONG_ARCHS))
    lr: float = 3e-3
    mha: MHAConfig = field(default_factory=lambda: MHAConfig(MISSING, 64, n_layers=2, n_heads=4))
    mamba: MambaLMConfig = field(default_factory=lambda: MambaLMConfig(MISSING, 64, n_layers=3, d_state=16))
    ttt_linear: TTTConfig = field(default_factory=lambda: _ttt(mlp_hidden=248))
    ttt_mlp: TTTConfig = field(default_factory=lambda: _ttt(inner="mlp", inner_lr=0.05, mlp_hidden=192))
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class Config(BaseConfig):
    language_model: LanguageModelConfig = field(default_factory=LanguageModelConfig)
    ladder: LadderConfig = field(default_factory=LadderConfig)
    long_context: LongContextConfig = field(default_factory=LongContextConfig)


def _is_theorem1(mixer) -> bool:
    """A TTT-Linear layer with W_0 = 0 and no LN or residual: Theorem 1's (with b >= T)."""
    return (isinstance(mixer, TTTMixer) and mixer.init_weights is None and mixer.ln_weight is None
            and mixer.inner == "linear")  # fmt: skip


@torch.no_grad()
def theorem1_gap(model, idx: torch.Tensor) -> float:
    """Theorem 1 on a trained LM, fp64, on the tokens idx (B, T): every layer with f(x) = x W, W_0 = 0, batch GD
    (b >= T), a fixed η and no LN / residual gives the output of causal linear attention of its own q, k, v,
    scaled by 2η (the gradient of ‖·‖² carries a 2: η = 1/2 is linear attention itself), through the same
    post-norm and output projection. Returns the largest |difference| over those layers."""
    lm = copy.deepcopy(model).double()
    x, gap = lm._embed(idx), 0.0
    for block in lm.blocks:
        layer = block.mixer
        if _is_theorem1(layer) and layer.mini_batch >= idx.shape[1]:
            u = block.norm1(x)
            q, k, v, eta, _ = layer._views(u, None)  # eta: the layer's fixed η (B, H, T)
            attention = layer._output(2 * eta[..., None] * linear_attention(q, k, v), u)
            gap = max(gap, float((layer(u) - attention).abs().max()))
        x = block(x)
    return gap


class RecurrentCheckTask(LanguageModelingTask):
    """Language modelling whose evaluation also measures, on the trained LM (cpu, float32), recurrent ==
    parallel, and Theorem 1 on the layers that are Theorem 1's (the linear-attention rung)."""

    def __init__(self, c, check_tokens: int = 64):
        super().__init__(c.corpus, c.tokenizer, c.block_size, eval_batches=c.eval_batches)
        self.check_tokens = check_tokens

    def evaluate(self, model, device) -> dict[str, float]:
        metrics = super().evaluate(model, device)
        cpu = model.to("cpu").float()
        idx = self.batch("val", 0, 1, self.eval_seed)["idx"][:, : self.check_tokens]
        with torch.no_grad():
            metrics["rnn/max_logit_diff"] = recurrent_vs_parallel(cpu, idx, cpu.logits(idx))
        if any(_is_theorem1(block.mixer) for block in cpu.blocks):
            metrics["theorem1/max_abs_diff"] = theorem1_gap(
                cpu, self.batch("val", 0, 4, self.eval_seed)["idx"]
            )
        model.to(device)
        return metrics


def _train(c, lr: float) -> TrainConfig:
    return replace(train_config(c.train), lr=lr, min_lr=lr / 10)


def _arch(variant: str) -> str:
    return "ttt" if variant.startswith("ttt") else variant


def plan(cfg: Config) -> list[Run]:
    lm, lad, lc = cfg.language_model, cfg.ladder, cfg.long_context
    problems = [f"{name}: unknown {what} {sorted(bad)}" for name, what, bad in (
        ("language_model", "variants", set(lm.variants) - set(LM_ARCHS)),
        ("ladder", "rungs", set(lad.rungs) - set(RUNGS)),
        ("long_context", "variants", set(lc.variants) - set(LONG_ARCHS)),
    ) if bad]  # fmt: skip
    if not lm.lrs or any(b < 1 for b in lad.mini_batches):
        problems.append("language_model.lrs must be non-empty and ladder.mini_batches >= 1")
    if lc.buckets < 1 or lc.block_size % 4 or lc.block_size % lc.buckets:
        problems.append(
            f"long_context.block_size {lc.block_size} must be divisible by 4 and by buckets {lc.buckets}"
        )
    if problems:
        raise PaperzooError("; ".join(problems))
    runs = []

    lm_task = LazyTask(lambda: RecurrentCheckTask(lm, lm.check_tokens))
    for variant in lm.variants:
        for lr in lm.lrs:

            def build(variant=variant):
                return zoo.build(_arch(variant), lm[variant], vocab_size=lm_task.task.vocab_size)

            runs.append(Run("shakespeare_char", f"{variant}_lr{lr:g}", build, lm_task, _train(lm, lr), {"lr": lr},
                            section="language_model"))  # fmt: skip

    ladder_task = LazyTask(lambda: RecurrentCheckTask(lad))
    ladder = {rung: {"mini_batch": lad.block_size, **RUNGS[rung]} for rung in lad.rungs}
    ladder |= {f"mb{b}": {"mini_batch": b} for b in lad.mini_batches if b < lad.block_size}
    ladder["mbT"] = {"mini_batch": lad.block_size}  # b = T: batch GD over the whole sequence
    for variant, changes in ladder.items():

        def build(changes=changes):
            return zoo.build("ttt", lad.ttt, vocab_size=ladder_task.task.vocab_size, **changes)

        runs.append(
            Run("ladder", variant, build, ladder_task, _train(lad, lad.lr), changes, section="ladder")
        )

    long_task = LazyTask(lambda: LongDocumentTask(lc.corpus, lc.tokenizer, lc.block_size, lc.buckets,
                                                  lc.eval_windows))  # fmt: skip
    for variant in lc.variants:

        def build(variant=variant):
            return zoo.build(_arch(variant), lc[variant], vocab_size=long_task.task.vocab_size)

        runs.append(Run("long_context", variant, build, long_task, _train(lc, lc.lr), {"lr": lc.lr},
                        section="long_context"))  # fmt: skip
    return runs
