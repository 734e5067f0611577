"""The model zoo: every architecture of the lab, built by name from its own config dataclass.

    register("gpt", GPTConfig)(build_gpt)          # where the architecture lives (common or a paper)
    model = build("gpt", GPTConfig(...))           # a paper takes its baselines from here
    model = build("gpt", cfg.section.model, vocab_size=task.vocab_size)   # a config node + data fields
    spec = spec_of(model)                          # {"arch": "gpt", "config": {...}}: JSON, enough to rebuild
    twin = from_spec(spec)                         # same architecture, fresh weights

A paper registers its own architecture in its model module; ``build`` imports every module of
``common/models/`` and every ``papers/<slug>/model.py`` on the first miss, so a name resolves without
knowing where it lives. In common: ``gpt`` (common.models.gpt) and ``mha`` (common.models.mha).
The config dataclass is the schema node of the paper's config (each hyperparameter is written once).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from common.errors import PaperzooError
from common.paths import PAPERS_DIR, REPO_ROOT

_REGISTRY: dict[str, tuple[type, Callable[[Any], nn.Module]]] = {}


def register(name: str, config_cls: type) -> Callable:
    """Decorator: ``@register("mamba", MambaConfig)`` on a ``builder(config) -> nn.Module``."""

    def wrap(builder: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        known = _REGISTRY.get(name)
        if known is not None and known[1] is not builder:
            raise ValueError(f"architecture '{name}' is registered twice")
        _REGISTRY[name] = (config_cls, builder)
        return builder

    return wrap


def _load_papers() -> None:
    for path in sorted((REPO_ROOT / "common" / "models").glob("[!_]*.py")):
        importlib.import_module(f"common.models.{path.stem}")
    for path in sorted(PAPERS_DIR.glob("*/model.py")):
        importlib.import_module(f"papers.{path.parent.name}.model")


def names() -> list[str]:
    _load_papers()
    return sorted(_REGISTRY)


def config_class(name: str) -> type:
    if name not in _REGISTRY:
        _load_papers()
    if name not in _REGISTRY:
        raise PaperzooError(f"unknown architecture '{name}'; the zoo has: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name][0]


def build(name: str, config: Any, **fields: Any) -> nn.Module:
    """The architecture ``name`` built from ``config`` (its dataclass, a mapping of its fields or a config
    node) with ``fields`` replacing its values (those that come from the data, e.g. vocab_size)."""
    config_cls = config_class(name)
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    elif is_dataclass(config):
        config = asdict(config)
    config = {**config, **fields}
    allowed = {f.name for f in dataclass_fields(config_cls)}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise PaperzooError(f"unknown {name} config keys {unknown}; allowed: {', '.join(sorted(allowed))}")
    config = config_cls(**config)
    model = _REGISTRY[name][1](config)
    model.zoo_spec = {"arch": name, "config": asdict(config)}
    return model


def spec_of(model: nn.Module) -> dict[str, Any] | None:
    """How to rebuild ``model`` (JSON-able), or None for a model not built through the zoo."""
    return getattr(model, "zoo_spec", None)


def from_spec(spec: dict[str, Any]) -> nn.Module:
    return build(spec["arch"], spec["config"])
