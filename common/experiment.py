"""How a paper plugs into the lab: the one contract, checked before any training.

``papers/<slug>/`` is a package holding

    paper.yaml       title, authors, year, arXiv id and the claims (``Claim`` below)
    configs/         base.yaml + smoke.yaml / cpu.yaml / gpu.yaml
    experiment.py    ``Config`` (a dataclass schema subclassing common.config.BaseConfig) and
                     ``plan(cfg) -> list[Run]``: every (task, variant) to train, with its model
                     factory, task and TrainConfig (``PaperModule``); optionally ``figures(mlflow_client,
                     runs, folder) -> [(title, file name)]``: the report's own figures beside the lab's, drawn
                     into ``folder`` from the reproduction's runs ({(task, variant, seed): MLflow run})

Each claim in ``paper.yaml``::

    - id: selcopy-s6
      statement: S6 inside the Mamba block solves selective copying
      source: Table 1                     # where in the paper
      paper: 0.998                        # the paper's value(s): a number, a {label: number} map or text
      format: percent                     # percent | float
      measure:
        task: selective_copying           # which of our runs measures it ...
        variant: s6
        metric: test/acc                  # ... with which metric; a glob ("acc/L*") is reduced
        reduce: min                       # min | max | mean (over the metrics the glob matches)
        relative_to: lti                  # optional: ours = value(variant) - value(relative_to)
        best: min                         # with a variant glob ("gpt_lr*", a learning-rate search): per seed,
                                          # the min | max over the variants it matches (relative_to too) ...
        select_by: val/loss               # ... of this metric (optional; default: metric), e.g. an lr chosen
                                          # on validation while the claim reports a test metric
      criteria: {smoke: null, cpu: ">= 0.95", gpu: ">= 0.99"}   # on the mean over seeds
      setting: {paper: "L=4096, 16 tokens", cpu: "L=64, 4 tokens"}  # optional: where a preset is scaled down
      spread: {cpu: "s0-s2 x 1, 2 threads: 33.1 .. 36.0%"}  # optional: the run-to-run spread measured
                                          # before judging (seeds, thread counts, CPUs), one line per preset
      requires: other-claim-id            # optional: only meaningful if that claim is reproduced
      opt_in: "needs wmt14.enabled=true"  # optional: no preset plans its run by default, and why

``load_paper`` parses the claims once (an unknown or missing key, a bad criterion, a ``requires``
naming no claim: one line naming the file, the claim and the key); ``validate`` checks them
against the plan and the presets, in seconds, before any training. Papers are discovered from the
folders (never a hand-kept list); the nox session of ``papers/my_idea`` is ``reproduce-my-idea``
(``papers/_template`` -> ``reproduce-template``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import yaml
from omegaconf import DictConfig, OmegaConf

from common.config import SCALES, BaseConfig, TrainConfig, load_config
from common.errors import PaperzooError
from common.paths import PAPERS_DIR, REPO_ROOT, discover_papers, session_name

if (
    TYPE_CHECKING
):  # torch is imported by the papers, not here: paper.yaml is checked in a fraction of a second
    import torch
    from torch import nn

    from common.runs import RunRef
    from common.train import Task

__all__ = ["Claim", "Criterion", "LazyTask", "Measure", "Mixer", "Model", "Paper", "PaperModule", "Run", "Task",
           "load_paper", "validate"]  # fmt: skip


def __getattr__(name: str) -> Any:
    """``Task`` (``batch(split, index, batch_size, seed)``, ``evaluate(model, device)``) is defined in
    common.train, which runs it; it is part of this contract and re-exported from here."""
    if name == "Task":
        from common.train import Task

        return Task
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- the code contract -----------------------------------------------------------------------
class Model(Protocol):
    """A paper's nn.Module as the train loop calls it: ``model(batch) -> loss`` or ``(loss, {name: scalar})``."""

    def __call__(
        self, batch: dict[str, torch.Tensor]
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]: ...


@runtime_checkable
class Mixer(Protocol):
    """A sequence mixer of the LM shell (common.models.lm): attention, an SSM, RWKV, TTT, ...

    ``forward``: (B, L, D) -> (B, L, D), causal. ``init_state`` / ``step``: the same map one position
    at a time, x of shape (B, D), with an O(1) state for a recurrent mixer (a KV cache for attention).
    Optional: ``prefill(x, state) -> (y, state)`` for a chunk (B, L, D) after ``state`` (chunked
    prefill; without it the shell steps token by token), and the keyword hooks ``start`` (absolute
    position) and ``ctx`` (a dict shared by the layers of one call), passed when a method names them.
    ``common.testing.check_mixer`` checks the contract.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> Any: ...

    def step(self, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...


class PaperModule(Protocol):
    """``papers/<slug>/experiment.py``: the config schema and the plan."""

    Config: type  # a dataclass subclassing common.config.BaseConfig

    def plan(self, cfg: Any) -> list[Run]: ...


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
    seeds: tuple[int, ...] | None = None  # the seeds it trains (None: the config's), e.g. one shared base
    tags: dict[str, str] = field(
        default_factory=dict
    )  # extra MLflow tags (a comparison's architecture, size)
    may_diverge: bool = False  # a diverged run is a result (an lr search's too-high lr), not an error

    @property
    def key(self) -> str:
        return f"{self.task}/{self.variant}"

    def trained_seeds(self, seeds) -> list[int]:
        """The seeds this run trains: its own ``seeds``, else the config's ``seeds``."""
        return list(self.seeds if self.seeds is not None else seeds)


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

    def target_tokens(self, batch):
        from common.train import target_tokens

        return getattr(self.task, "target_tokens", target_tokens)(batch)


# ---- the claims (paper.yaml) ------------------------------------------------------------------
OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
REDUCERS = ("min", "max", "mean")
FORMATS = ("percent", "float")


@dataclass(frozen=True)
class Criterion:
    """A pass criterion such as ``>= 0.95``, applied to our mean over seeds."""

    text: str
    op: str
    threshold: float

    @classmethod
    def parse(cls, text: Any) -> Criterion:
        match = re.fullmatch(r"\s*(>=|<=|>|<)\s*(-?[0-9.eE+-]+)\s*", str(text))
        try:
            return cls(str(text).strip(), match.group(1), float(match.group(2)))
        except (AttributeError, ValueError):
            raise PaperzooError(f"bad criterion '{text}'; write e.g. '>= 0.95'") from None

    def holds(self, value: float) -> bool:
        return OPS[self.op](value, self.threshold)


@dataclass(frozen=True)
class Measure:
    task: str
    variant: str
    metric: str  # a metric name or a glob ("acc/L*"), reduced with ``reduce``
    reduce: str = "mean"
    relative_to: str | None = None  # ours = value(variant) - value(relative_to), seed by seed
    best: str | None = None  # "min" | "max": a variant glob's best variant per seed (e.g. over an lr search)
    select_by: str | None = None  # the metric that ``best`` ranks the variants by (default: ``metric``)

    @property
    def variants(self) -> tuple[str, ...]:
        return (self.variant, self.relative_to) if self.relative_to else (self.variant,)


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    measure: Measure
    source: str = ""
    paper: Any = None
    format: str = "float"
    criteria: dict[str, Criterion | None] = field(default_factory=dict)
    setting: dict[str, str] = field(default_factory=dict)  # "paper" or a preset -> its lengths, sizes, data
    spread: dict[str, str] = field(default_factory=dict)  # a preset -> the spread measured before judging
    requires: str | None = None
    opt_in: str | None = None  # why no preset plans its run by default (validate then allows that)

    def criterion(self, preset: str) -> Criterion | None:
        return self.criteria.get(preset)

    def measures(self, task: str, variant: str) -> bool:
        return task == self.measure.task and any(
            fnmatch.fnmatchcase(variant, v) for v in self.measure.variants
        )


def _fields(cls: type, raw: Any, where: str) -> dict[str, Any]:
    """``raw`` checked against the dataclass ``cls``: a mapping, no unknown key, every required key."""
    if not isinstance(raw, dict):
        raise PaperzooError(
            f"{where}: expected a mapping with keys {', '.join(f.name for f in dataclasses.fields(cls))}"
        )
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise PaperzooError(f"{where}: unknown key '{key}'; valid keys: {', '.join(names)}")
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and raw.get(f.name) in (None, ""):
            raise PaperzooError(f"{where}: missing key '{f.name}'")
    return dict(raw)


def _text_by_key(fields_: dict, name: str, keys: tuple[str, ...], where: str, example: str) -> dict[str, str]:
    """A claim's ``setting`` or ``spread``: some of ``keys`` -> one line of text each (a table cell: no '|')."""
    found = fields_.get(name) or {}
    if not isinstance(found, dict):
        mapped = "paper and presets" if "paper" in keys else "presets"
        raise PaperzooError(f"{where}: '{name}' must map {mapped} to text, e.g. {example}")
    for key, text in found.items():
        _choice(key, keys, where, f"{name} key")
        if not isinstance(text, str) or not text.strip() or "|" in text or "\n" in text.strip():
            raise PaperzooError(f"{where}, {name}.{key}: expected one line of text without '|', got {text!r}")
    return found


def _choice(value: Any, choices: tuple[str, ...], where: str, key: str) -> str:
    if value not in choices:
        raise PaperzooError(f"{where}: bad {key} '{value}'; choose {', '.join(choices)}")
    return value


def parse_claims(raw: Any, file: str) -> list[Claim]:
    """The claims of a paper.yaml (``file`` names it in every error)."""
    if not isinstance(raw, list):
        raise PaperzooError(f"{file}: 'claims' must be a list of claims")
    claims: list[Claim] = []
    for i, item in enumerate(raw):
        label = item.get("id") if isinstance(item, dict) and item.get("id") else f"#{i + 1}"
        where = f"{file}, claim '{label}'"
        fields_ = _fields(Claim, item, where)
        measure = Measure(**_fields(Measure, fields_["measure"], f"{where}, measure"))
        _choice(measure.reduce, REDUCERS, where, "measure.reduce")
        globbed = any(set("*?[") & set(v) for v in measure.variants)
        if globbed or measure.best is not None or measure.select_by is not None:
            if not globbed:
                raise PaperzooError(
                    f"{where}: measure.best and measure.select_by need a variant glob, e.g. 'gpt_lr*'"
                )
            _choice(measure.best, ("min", "max"), where, "measure.best (the variant glob's best)")
        _choice(fields_.get("format", "float"), FORMATS, where, "format")
        criteria = fields_.get("criteria") or {}
        if not isinstance(criteria, dict):
            raise PaperzooError(
                f"{where}: 'criteria' must map presets to criteria, e.g. {{cpu: \">= 0.95\"}}"
            )
        parsed: dict[str, Criterion | None] = {}
        for preset, text in criteria.items():
            _choice(preset, SCALES, where, "criteria preset")
            try:
                parsed[preset] = None if text is None else Criterion.parse(text)
            except PaperzooError as err:
                raise PaperzooError(f"{where}, criteria.{preset}: {err}") from None
        setting = _text_by_key(
            fields_, "setting", ("paper", *SCALES), where, '{paper: "L=4096", cpu: "L=64"}'
        )
        spread = _text_by_key(fields_, "spread", SCALES, where, '{cpu: "s0-s2: 33.1 .. 36.0%"}')
        if label in {c.id for c in claims}:
            raise PaperzooError(f"{where}: the id is used by an earlier claim")
        claims.append(Claim(**{**fields_, "measure": measure, "criteria": parsed, "setting": setting,
                               "spread": spread}))  # fmt: skip
    ids = {c.id for c in claims}
    for claim in claims:
        if claim.requires and claim.requires not in ids:
            raise PaperzooError(
                f"{file}, claim '{claim.id}': requires '{claim.requires}', which is no claim's id"
            )
    return claims


# ---- a paper -----------------------------------------------------------------------------------
COMPARE = "compare"  # the comparison of architectures (common.compare): a study like a paper, its runs in the
COMPARISON_FILE = REPO_ROOT / "comparisons" / "architectures.yaml"  # MLflow experiment "compare"


@dataclass
class Paper:
    slug: str
    path: Path
    meta: dict[str, Any]
    module: Any  # a PaperModule
    claims: list[Claim] = field(default_factory=list)

    @property
    def title(self) -> str:
        return self.meta.get("title", self.slug)

    def plan(self, cfg) -> list[Run]:
        """The paper's runs, with the seeds ``cfg.seeds_by_run`` gives them (a run's own seeds win)."""
        by_run = cfg.get("seeds_by_run") or {}
        return [
            replace(run, seeds=tuple(by_run.get(run.key, by_run.get(run.task))))
            if run.seeds is None and (run.key in by_run or run.task in by_run)
            else run
            for run in self.module.plan(cfg)
        ]

    @property
    def schema(self) -> type:
        return self.module.Config

    def config(self, overrides: list[str] | None = None) -> DictConfig:
        """The resolved config: the presets of ``configs/`` (a comparison: of its file) and ``overrides``."""
        own = getattr(self.module, "load_config", None)
        return own(overrides) if own else load_config(self.schema, self.path / "configs", overrides)


def resolve_slug(name: str) -> str:
    """Accepts a slug (``my_idea``), a session name (``my-idea``, ``template``) or ``compare`` (the comparison)."""
    if name == COMPARE:
        return COMPARE
    papers = discover_papers()
    for slug in papers:
        if name in (slug, session_name(slug)):
            return slug
    raise PaperzooError(f"unknown paper '{name}'; known papers: {', '.join(session_name(s) for s in papers)}")


def shown_path(path: Path) -> str:
    """``papers/mamba/paper.yaml`` for a file of the lab, the full path otherwise."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def studies() -> list[str]:
    """The comparison (when its file is there), then every paper: what the report index lists."""
    return ([COMPARE] if COMPARISON_FILE.exists() else []) + discover_papers()


def meta_path(slug: str) -> Path:
    """Where a study's title and claims are: ``papers/<slug>/paper.yaml``, or the comparison's file."""
    return COMPARISON_FILE if slug == COMPARE else PAPERS_DIR / slug / "paper.yaml"


def read_meta(slug: str) -> dict[str, Any]:
    path = meta_path(slug)
    try:
        meta = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise PaperzooError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    if not isinstance(meta, dict) or "title" not in meta:
        raise PaperzooError(f"{path} must be a mapping with at least 'title' and 'claims'")
    return meta


def load_paper(name: str) -> Paper:
    """The paper named ``name`` with its claims parsed and its module checked against PaperModule."""
    slug = resolve_slug(name)
    meta = read_meta(slug)
    claims = parse_claims(meta.get("claims", []), shown_path(meta_path(slug)))
    if slug == COMPARE:
        module = importlib.import_module("common.compare")
        return Paper(slug=slug, path=COMPARISON_FILE.parent, meta=meta, module=module, claims=claims)
    source = shown_path(PAPERS_DIR / slug / "experiment.py")
    if not (PAPERS_DIR / slug / "experiment.py").exists():
        raise PaperzooError(f"{source} is missing: a paper defines Config and plan(cfg) there")
    module = importlib.import_module(f"papers.{slug}.experiment")
    schema = getattr(module, "Config", None)
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema) and issubclass(schema, BaseConfig)):
        raise PaperzooError(f"{source} must define Config, a dataclass subclassing common.config.BaseConfig")
    if not callable(getattr(module, "plan", None)):
        raise PaperzooError(f"{source} must define plan(cfg) -> list[Run]")
    return Paper(slug=slug, path=PAPERS_DIR / slug, meta=meta, module=module, claims=claims)


def _check_run_shape(run: Run, source: str) -> None:
    """A Run of the plan holds a model factory, a Task, a TrainConfig and, if any, a RunRef."""
    from common.config import TrainConfig
    from common.runs import RunRef
    from common.train import Task

    problems = [
        ("build_model", "a function that builds the model", callable(run.build_model)),
        ("data", "a Task (batch(split, index, batch_size, seed) and evaluate(model, device))", isinstance(run.data, Task)),
        ("train", "a common.config.TrainConfig (common.config.train_config(section))", isinstance(run.train, TrainConfig)),
        ("init_from", "a common.runs.RunRef or None", run.init_from is None or isinstance(run.init_from, RunRef)),
    ]  # fmt: skip
    for name, wanted, ok in problems:
        if not ok:
            raise PaperzooError(f"{source}: run '{run.key}' has {name} of type {type(getattr(run, name)).__name__}; "
                                f"it must be {wanted}")  # fmt: skip


def validate(paper: Paper, cfg: Any, runs: list[Run]) -> None:
    """What can be checked in seconds before any training; the first problem, in one line.

    The presets exist; the plan's runs are unique, well formed (``_check_run_shape``) and their config
    sections exist; a run that starts from another run of the plan (``init_from``) comes after it, and
    that run trains the seed it names; every claim's (task, variant) and
    ``relative_to`` are runs of the plan, unless the claim is ``opt_in``.
    """
    for scale in SCALES if paper.slug != COMPARE else ():  # the comparison's presets: common.compare
        preset = paper.path / "configs" / f"{scale}.yaml"
        if not preset.exists():
            raise PaperzooError(
                f"{shown_path(preset)} is missing: every paper has the presets {', '.join(SCALES)}"
            )
    source = shown_path(paper.path / "experiment.py")
    keys: set[str] = set()
    for run in runs:
        _check_run_shape(run, source)
        if run.key in keys:
            raise PaperzooError(f"{source}: plan() returns the run '{run.key}' twice")
        base = run.init_from
        if base is not None and (base.paper, base.preset) == (paper.slug, cfg.scale):
            base_key = f"{base.task}/{base.variant}"
            planned = [r for r in runs if r.key == base_key]
            if base_key not in keys and planned:
                raise PaperzooError(
                    f"{source}: run '{run.key}' starts from the run '{base_key}', which plan() does not "
                    f"return before it; return '{base_key}' first"
                )
            if planned and base.seed not in planned[0].trained_seeds(cfg.seeds):
                raise PaperzooError(f"{source}: run '{run.key}' starts from '{base_key}' seed {base.seed}, a "
                                    f"seed that run does not train ({planned[0].trained_seeds(cfg.seeds)})")  # fmt: skip
        keys.add(run.key)
        if run.section and not isinstance(OmegaConf.select(cfg, run.section), DictConfig):
            raise PaperzooError(
                f"{source}: run '{run.key}' has section '{run.section}', which is no config section"
            )
    tasks = {run.task for run in runs}
    for key, seeds in (cfg.get("seeds_by_run") or {}).items():
        if key not in keys | tasks:
            raise PaperzooError(f"seeds_by_run: '{key}' is no task or run of the plan at preset '{cfg.scale}' "
                                f"(runs: {', '.join(sorted(keys))})")  # fmt: skip
        if not seeds:
            raise PaperzooError(f"seeds_by_run: '{key}' has no seeds; give at least one, or leave it out")
    if cfg.get("workers", 1) < 1:
        raise PaperzooError(f"workers={cfg.workers}: give the number of runs to train at once, 1 or more")
    file = shown_path(meta_path(paper.slug))
    for claim in paper.claims:
        if claim.opt_in:
            continue
        m = claim.measure
        for key, variant in (("variant", m.variant), ("relative_to", m.relative_to)):
            if variant and not fnmatch.filter(keys, f"{m.task}/{variant}"):
                wrong = (
                    "measure.task" if not any(k.startswith(m.task + "/") for k in keys) else f"measure.{key}"
                )
                raise PaperzooError(
                    f"{file}, claim '{claim.id}': {wrong}: '{m.task}/{variant}' is not a run of the plan at preset "
                    f"'{cfg.scale}' (runs: {', '.join(sorted(keys))}); fix it, or mark the claim opt_in: \"<why>\""
                )
