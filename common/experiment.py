"""How a paper plugs into the lab.

``papers/<slug>/`` is a package holding

    paper.yaml       title, authors, year, arXiv id and the claims (see common.report)
    configs/         base.yaml + smoke.yaml / cpu.yaml / gpu.yaml
    experiment.py    ``Config`` (a dataclass schema subclassing common.config.BaseConfig) and
                     ``plan(cfg) -> list[Run]``: every (task, variant) to train, with its model
                     factory, task and TrainConfig

Papers are discovered from the folders (never a hand-kept list); the nox session of
``papers/my_idea`` is ``reproduce-my-idea`` (``papers/_template`` -> ``reproduce-template``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from common.config import TrainConfig
from common.errors import PaperzooError
from common.paths import PAPERS_DIR, discover_papers, session_name
from common.runs import RunRef
from common.train import Task


@dataclass
class Run:
    """One thing to train: a variant of a method on a task (repeated for every seed)."""

    task: str  # e.g. "selective_copying"; a run name is "<task>/<variant>/s<seed>"
    variant: str  # e.g. "s6"
    build_model: Callable[[], nn.Module]
    data: Task
    train: TrainConfig
    params: dict[str, Any] = field(default_factory=dict)  # extra MLflow params for this run
    section: str = ""  # the config section this run is resolved from (its MLflow params); "" = whole config
    init_from: RunRef | None = None  # start from that finished run's final weights

    @property
    def key(self) -> str:
        return f"{self.task}/{self.variant}"


class LazyTask:
    """A Task built on first use, so that planning reads no data: only runs that train build theirs."""

    def __init__(self, factory: Callable[[], Any]):
        self._factory, self._task = factory, None

    @property
    def task(self):
        if self._task is None:
            self._task = self._factory()
        return self._task

    def batch(self, split, index, batch_size, seed):
        return self.task.batch(split, index, batch_size, seed)

    def evaluate(self, model, device):
        return self.task.evaluate(model, device)


@dataclass
class Paper:
    slug: str
    path: Path
    meta: dict[str, Any]
    module: Any

    @property
    def session(self) -> str:
        return session_name(self.slug)

    @property
    def title(self) -> str:
        return self.meta.get("title", self.slug)

    def plan(self, cfg) -> list[Run]:
        return self.module.plan(cfg)

    @property
    def schema(self) -> type:
        return self.module.Config


def resolve_slug(name: str) -> str:
    """Accepts a slug (``my_idea``) or a session name (``my-idea``, ``template``)."""
    papers = discover_papers()
    for slug in papers:
        if name in (slug, session_name(slug)):
            return slug
    raise PaperzooError(f"unknown paper '{name}'; known papers: {', '.join(session_name(s) for s in papers)}")


def read_meta(slug: str) -> dict[str, Any]:
    path = PAPERS_DIR / slug / "paper.yaml"
    try:
        meta = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise PaperzooError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(meta, dict) or "title" not in meta:
        raise PaperzooError(f"{path} must be a mapping with at least 'title' and 'claims'")
    return meta


def load_paper(name: str) -> Paper:
    slug = resolve_slug(name)
    module = importlib.import_module(f"papers.{slug}.experiment")
    return Paper(slug=slug, path=PAPERS_DIR / slug, meta=read_meta(slug), module=module)
