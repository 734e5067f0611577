"""Typed configuration: dataclass schemas + OmegaConf, three scale presets, dotlist overrides.

A paper's ``configs/`` holds ``base.yaml`` and one file per preset:

    smoke  seconds on a CPU; what the tests run
    cpu    the default without a GPU: minutes on 2 cores
    gpu    one GPU, at most an hour, as close to the paper as that allows

Load order: schema defaults -> base.yaml -> <scale>.yaml -> command-line overrides
(``scale=smoke train.max_steps=200``). An unknown key, a wrong type or a bad choice fails with
one line that names the key and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from common.errors import PaperzooError

SCALES = ("smoke", "cpu", "gpu")


class Optimizer(str, Enum):
    adamw = "adamw"
    adam = "adam"


class Schedule(str, Enum):
    cosine = "cosine"  # linear warmup, cosine decay to min_lr
    constant = "constant"  # linear warmup, then constant
    noam = "noam"  # Vaswani et al. 2017, Eq. 3: d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)


@dataclass
class TrainConfig:
    """Everything the shared loop (common.train) needs; each experiment may have its own."""

    max_steps: int = 1000
    batch_size: int = 32  # global micro-batch, split evenly across DDP ranks
    grad_accum: int = 1
    optimizer: Optimizer = Optimizer.adamw
    lr: float = 1e-3  # peak learning rate (for noam: a multiplier on the paper's formula)
    min_lr: float = 1e-4
    schedule: Schedule = Schedule.cosine
    warmup_steps: int = 100
    noam_d_model: int = 512
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping
    eval_every: int = 0  # 0: evaluate only at the end
    log_every: int = 10
    ckpt_every: int = 200  # 0: checkpoint only at the end
    average_last: int = (
        0  # > 1: evaluate the mean weights of the last N checkpoints (Vaswani et al. Sec. 6.1)
    )
    compile: bool = False
    device: str = "auto"  # auto = cuda > mps > cpu
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 elsewhere; or fp32 / bf16


@dataclass
class BaseConfig:
    """Fields every paper has; a paper's schema subclasses this and adds its experiment sections."""

    scale: str = "cpu"
    seeds: list[int] = field(default_factory=lambda: [0])
    # "<task>" or "<task>/<variant>" -> the seeds those runs train instead of ``seeds`` (e.g. three seeds
    # only for the claims near their threshold); a run's own ``Run.seeds`` win over both
    seeds_by_run: dict[str, list[int]] = field(default_factory=dict)
    resume: bool = False  # continue each run from its last checkpoint and its MLflow run
    only: list[str] = field(default_factory=list)  # run only these "<task>" or "<task>/<variant>"
    progress: bool = True  # progress bars
    strict: bool = False  # exit 1 when a claim is not reproduced (the report is written anyway)
    workers: int = 1  # runs trained at once, each in a process with its share of the threads (common.workers)


def default_scale() -> str:
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def _split_overrides(overrides: list[str]) -> tuple[str | None, list[str]]:
    scale, rest = None, []
    for item in overrides:
        if "=" not in item:
            raise PaperzooError(f"override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        if key.strip() == "scale":
            scale = value.strip()
        else:
            rest.append(item)
    return scale, rest


def _explain(err: OmegaConfBaseException, node: Any, where: str, given: tuple[str, ...] = ()) -> str:
    """One line for an OmegaConf error; ``given``: the dotted keys of the layer (for a suggestion)."""
    key = getattr(err, "full_key", None) or getattr(err, "key", None) or "?"
    message = str(err).splitlines()[0].strip()
    if isinstance(err, ConfigKeyError):
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        try:
            options = OmegaConf.select(node, parent) if parent else node
            valid = ", ".join(sorted(str(k) for k in options))
        except Exception:
            valid = "?"
        typed = [k for k in given if k == key or k.startswith(key + ".")] or [key]
        hint = _did_you_mean(node, typed[0])
        return f"unknown config key '{key}' ({where}); {hint or 'valid keys here: ' + valid}"
    if isinstance(err, ValidationError):
        return f"bad value for config key '{key}' ({where}): {message}"
    return f"config error at '{key}' ({where}): {message}"


def _did_you_mean(node: Any, key: str) -> str:
    """'did you mean selective_copying.train.max_steps, ...?' when ``key`` exists under some section."""
    found: list[str] = []

    def walk(tree: Any, prefix: str) -> None:
        if not isinstance(tree, DictConfig):
            return
        for name in tree:
            path = f"{prefix}{name}"
            if path.endswith("." + key) and OmegaConf.select(node, path, default=None) is not None:
                found.append(path)
            walk(tree._get_node(name), path + ".")

    walk(node, "")
    return f"did you mean {', '.join(found)}?" if found else ""


def load_config(
    schema: type, config_dir: Path, overrides: list[str] | None = None, presets: dict[str, Any] | None = None
) -> DictConfig:
    """Resolve a paper's config: schema defaults, base.yaml, the preset, then overrides. ``presets``: the layers
    given instead of the files of ``config_dir`` ({"base": ..., "smoke": ..., ...}, read from the file
    ``config_dir`` names: a comparison declares them all in one)."""
    scale, rest = _split_overrides(list(overrides or []))
    scale = scale or default_scale()
    if scale not in SCALES:
        raise PaperzooError(f"unknown preset '{scale}' (scale={scale}); choose one of {', '.join(SCALES)}")
    cfg = OmegaConf.structured(schema)
    layers: list[tuple[str, Any]] = []
    if presets is not None:
        if scale not in presets:
            raise PaperzooError(f"{config_dir}: preset '{scale}' is missing under 'presets'")
        layers += [
            (f"{config_dir}, base", presets.get("base") or {}),
            (f"{config_dir}, presets.{scale}", presets[scale] or {}),
        ]
    for name in ("base.yaml", f"{scale}.yaml") if presets is None else ():
        path = config_dir / name
        if path.exists():
            try:
                layer = OmegaConf.load(path)
            except Exception as err:
                raise PaperzooError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
            layers.append((path.name, layer))
        elif name != "base.yaml":
            raise PaperzooError(f"preset file {path} is missing")
    layers.append(("command-line override", OmegaConf.from_dotlist(rest)))
    for where, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as err:
            given = tuple(item.split("=", 1)[0].strip() for item in rest) if layer is layers[-1][1] else ()
            raise PaperzooError(_explain(err, cfg, where, given)) from None
    cfg.scale = scale
    OmegaConf.set_readonly(cfg, True)
    return cfg


def to_plain(cfg: Any) -> Any:
    """A resolved config (or dataclass) as plain dicts/lists with enums as strings."""
    if is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3}: how configs become MLflow params."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def train_config(section: Any) -> TrainConfig:
    """A TrainConfig dataclass from a (validated) config section."""
    plain = to_plain(section)
    names = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in plain.items() if k in names})
    cfg.optimizer, cfg.schedule = Optimizer(cfg.optimizer), Schedule(cfg.schedule)
    return cfg
