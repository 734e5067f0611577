"""What `nox -s reproduce-rwkv` trains: RWKV-4 (Peng et al. 2023) and RWKV-7 (Peng et al. 2025) against a
GPT of equal size, each architecture with its own learning-rate search over the same ``lrs`` (the same
budget, tokens and steps; no borrowed lr).

language_model   tinyshakespeare characters (RWKV-4 Sec. 5 / RWKV-7 Sec. 7: competitive with Transformers at
                 equal size); the final evaluation also measures, on each trained LM, recurrent == parallel
                 (RWKV's central claim), the official `rwkv` package's logits on our exported weights, and the
                 generation cost at two positions (RWKV-4 Fig. "inference time vs tokens": constant per token)
mqar             multi-query associative recall (Zoology): data-dependent state updates (RWKV-7) vs a fixed
                 decay (RWKV-4) vs attention
state_tracking   group word problems (RWKV-7 Sec. 6 and App. D: state tracking beyond TC0), scaled down

Run variants are ``<arch>_lr<lr>``; the claims take each architecture's best lr per seed (``measure.best``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from omegaconf import MISSING

from common.config import BaseConfig, TrainConfig, train_config
from common.data.corpus import LanguageModelingTask
from common.data.synthetic import MQAR, StateTracking
from common.errors import PaperzooError
from common.experiment import LazyTask, Run
from common.inference import generation_costs, recurrent_vs_parallel
from common.models import zoo
from common.models.gpt import GPTConfig

from .blinkdl import save_blinkdl
from .model import RWKV4Config, RWKV7Config, TimeMix4, TimeMix7
from .official import official_logits

ARCHS = ("rwkv4", "rwkv7", "gpt")


def _rwkv7(ffn_hidden: int, lora: int = 16) -> RWKV7Config:
    """Two layers of width 64 in heads of 32, LoRA ranks 16 (RWKV-7 suggests >= 32, sized for wide models)."""
    return RWKV7Config(MISSING, 64, n_layers=2, head_size=32, ffn_hidden=ffn_hidden, decay_lora=lora,
                       a_lora=lora, v_lora=lora, gate_lora=lora)  # fmt: skip


@dataclass
class LanguageModelConfig:
    corpus: str = "tinyshakespeare"
    tokenizer: str = "char"
    block_size: int = 128
    eval_batches: int = 40
    variants: list[str] = field(default_factory=lambda: list(ARCHS))
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3])  # every variant trains at each
    check_tokens: int = 64  # recurrent == parallel and the official runtime, on this many val tokens
    cost_positions: list[int] = field(default_factory=lambda: [64, 4096])  # generation cost at these
    # equal parameter counts: RWKV's untied head and token-shift mixes are paid for by a narrower channel mix
    rwkv4: RWKV4Config = field(default_factory=lambda: RWKV4Config(MISSING, 64, n_layers=2, ffn_hidden=240))
    rwkv7: RWKV7Config = field(default_factory=lambda: _rwkv7(ffn_hidden=208))
    gpt: GPTConfig = field(
        default_factory=lambda: GPTConfig(MISSING, "${..block_size}", n_layers=2, n_heads=4, d_model=64)
    )
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class MQARConfig:
    length: int = 128
    n_pairs: int = 16
    vocab: int = 256
    test_size: int = 512
    variants: list[str] = field(default_factory=lambda: list(ARCHS))
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3])
    # equal parameters with the GPT's (a 256-token vocabulary: RWKV's untied head costs more)
    rwkv4: RWKV4Config = field(default_factory=lambda: RWKV4Config(MISSING, 64, n_layers=2, ffn_hidden=192))
    rwkv7: RWKV7Config = field(default_factory=lambda: _rwkv7(ffn_hidden=160))
    gpt: GPTConfig = field(default_factory=lambda: GPTConfig(MISSING, "${..length}", n_layers=2, n_heads=4,
                                                             d_model=64))  # fmt: skip
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class StateTrackingConfig:
    group: str = "A5"
    length: int = 32
    test_lengths: list[int] = field(default_factory=lambda: [64])
    test_size: int = 512
    variants: list[str] = field(default_factory=lambda: list(ARCHS))
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3])
    rwkv4: RWKV4Config = field(default_factory=lambda: RWKV4Config(MISSING, 64, n_layers=2, ffn_hidden=224))
    rwkv7: RWKV7Config = field(default_factory=lambda: _rwkv7(ffn_hidden=192))
    gpt: GPTConfig = field(default_factory=lambda: GPTConfig(MISSING, 64, n_layers=2, n_heads=4, d_model=64))
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class Config(BaseConfig):
    language_model: LanguageModelConfig = field(default_factory=LanguageModelConfig)
    mqar: MQARConfig = field(default_factory=MQARConfig)
    state_tracking: StateTrackingConfig = field(default_factory=StateTrackingConfig)


def is_rwkv(model) -> bool:
    return all(isinstance(block.mixer, (TimeMix4, TimeMix7)) for block in model.blocks)


@torch.no_grad()
def official_runtime_gap(model, tokens: list[int], ours: torch.Tensor) -> float:
    """max |``ours`` (T, V): our logits of tokens - the `rwkv` package's| (its sequence forward and its
    token-by-token form)."""
    with tempfile.TemporaryDirectory() as tmp:
        theirs = official_logits(save_blinkdl(model, Path(tmp) / "model.pth"), tokens)
    return float(max((theirs["seq"] - ours).abs().max(), (theirs["steps"] - ours).abs().max()))


def cost_twin(model, longest: int):
    """The model itself, or, for learned positions too few for ``longest``, the same architecture with a longer
    table (generation cost does not depend on the weights)."""
    if model.pos_embed is None or model.max_len > longest:
        return model
    spec = zoo.spec_of(model)
    return zoo.from_spec({**spec, "config": {**spec["config"], "block_size": longest + 1}})


class RecurrentLMTask(LanguageModelingTask):
    """Language modelling whose evaluation also checks the recurrent form, the official runtime and the
    generation cost (``cpu`` float32; see the module docstring)."""

    def __init__(self, c: LanguageModelConfig):
        super().__init__(c.corpus, c.tokenizer, c.block_size, eval_batches=c.eval_batches)
        self.check_tokens, self.cost_positions = c.check_tokens, sorted(c.cost_positions)

    def evaluate(self, model, device) -> dict[str, float]:
        metrics = super().evaluate(model, device)
        cpu = model.to("cpu").float()
        idx = self.batch("val", 0, 1, self.eval_seed)["idx"][:, : self.check_tokens]
        with torch.no_grad():
            parallel = cpu.logits(idx)  # (1, T, V)
        metrics["rnn/max_logit_diff"] = recurrent_vs_parallel(cpu, idx, parallel)
        if is_rwkv(cpu):
            metrics["official/max_logit_diff"] = official_runtime_gap(cpu, idx[0].tolist(), parallel[0])
        costs = generation_costs(cost_twin(cpu, self.cost_positions[-1]), tuple(self.cost_positions))
        first, last = costs[self.cost_positions[0]], costs[self.cost_positions[-1]]
        for p, cost in costs.items():
            metrics |= {
                f"gen/ms_per_token_at_{p}": cost["ms_per_token"],
                f"gen/state_bytes_at_{p}": cost["state_bytes"],
            }
        metrics["gen/ms_ratio"] = last["ms_per_token"] / first["ms_per_token"]
        metrics["gen/state_ratio"] = last["state_bytes"] / first["state_bytes"]
        model.to(device)
        return metrics


def lr_search(task_name: str, section: str, c, data, vocab_size) -> list[Run]:
    """One run per (variant, lr): ``<variant>_lr<lr>``, its model from the zoo config of the same name."""
    unknown = set(c.variants) - set(ARCHS)
    if unknown or not c.lrs:
        raise PaperzooError(f"{section}: variants must be among {', '.join(ARCHS)} and lrs non-empty "
                            f"(unknown: {sorted(unknown)})")  # fmt: skip
    runs = []
    for arch in c.variants:
        for lr in c.lrs:

            def build(arch=arch):
                return zoo.build(arch, c[arch], vocab_size=vocab_size())

            train = replace(train_config(c.train), lr=lr, min_lr=lr / 10)
            runs.append(Run(task_name, f"{arch}_lr{lr:g}", build, data, train, {"lr": lr}, section=section))
    return runs


def plan(cfg: Config) -> list[Run]:
    lm = cfg.language_model
    lm_task = LazyTask(lambda: RecurrentLMTask(lm))
    q, st = cfg.mqar, cfg.state_tracking
    try:  # synthetic tasks build no data until they train: their arguments are checked here, before any run
        mqar = MQAR(q.length, q.n_pairs, q.vocab, test_size=q.test_size)
    except ValueError as err:
        raise PaperzooError(f"mqar: {err}") from None
    try:
        tracking = StateTracking(st.group, st.length, tuple(st.test_lengths), st.test_size)
    except ValueError as err:
        raise PaperzooError(f"state_tracking: {err}") from None
    return [
        *lr_search("shakespeare_char", "language_model", lm, lm_task, lambda: lm_task.task.vocab_size),
        *lr_search("mqar", "mqar", q, mqar, lambda: q.vocab),
        *lr_search("state_tracking", "state_tracking", st, tracking, lambda: tracking.vocab_size),
    ]
