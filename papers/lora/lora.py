"""LoRA: low-rank adaptation of a frozen pretrained model.

Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv 2106.09685.

Sec. 4.1, Eq. 3: a pretrained weight W0 (d_out, d_in) stays frozen; its update is constrained to a
low-rank product ΔW = B A with B (d_out, r), A (r, d_in), r << min(d_in, d_out), so that

    h = W0 x + ΔW x = W0 x + (α / r) B A x

Only A and B are trained: r (d_in + d_out) parameters per adapted matrix. The update is scaled by α / r
(with Adam, tuning α is roughly tuning the learning rate: "we simply set α to the first r we try"), which
reduces the need to retune hyperparameters when r changes.
Initialisation: B = 0, so ΔW = 0 and the adapted model equals the pretrained one at step 0; A is
random (the paper says Gaussian; the reference code, microsoft/LoRA's loralib, and peft use
Kaiming-uniform with a = sqrt(5), nn.Linear's default, which we follow). No inference latency: W = W0 +
ΔW can be merged into the frozen weight once trained (``merge``) and subtracted again (``unmerge``).

Sec. 4.2: in a Transformer only attention weights are adapted (W_q and W_v in most experiments, Sec. 7.1),
each treated as one d_model x d_model matrix even though its output is split into heads. GPT-2 stores
W_q, W_k, W_v fused in one projection ``qkv`` (d_model -> 3 d_model, in q, k, v order). ``slices``
adapts chosen equal output chunks of such a fused projection, as loralib's ``MergedLinear``
(``enable_lora=[True, False, True]``): each enabled chunk j gets its own A_j (r, d_in) and B_j (d_s, r),
d_s = d_out / n_chunks, and a disabled chunk (k) gets no parameters and an exactly zero ΔW:

    ΔW = (α / r) [B_q A_q; 0; B_v A_v]          (3 d, d): r (d + d) parameters per adapted matrix

Layout (that of loralib and, for one chunk, of peft): ``lora_A`` (m r, d_in) stacks A_1 .. A_m and
``lora_B`` (m d_s, r) stacks B_1 .. B_m over the m enabled chunks. Without ``slices`` the whole matrix is
one chunk: A (r, d_in), B (d_out, r), which is what peft does with GPT-2's fused ``c_attn``. The m pairs
are exactly one adapter of rank m r on the whole matrix whose B is block-structured (``full_B``):

    ΔW = (α / r) full_B A,   full_B (d_out, m r) = [[B_q, 0], [0, 0], [0, B_v]],   A = [A_q; A_v] (2 r, d_in)

which is how the forward computes it (the zero blocks cost ~m times the rank-r work, negligible next to
W0 x) and how ``peft_format`` writes sliced adapters in peft's format.

``merge`` / ``unmerge`` are float arithmetic on W0 itself; no copy of W0 is kept (that would double the
memory of every adapted matrix). ``unmerge(merge(W0))`` therefore restores W0 up to two roundings:
elementwise |error| <= 2^-p (|W0 + ΔW| + |W0|), p = 24 in fp32 (~1e-7 for weights of magnitude <= 0.8),
provided A and B did not change in between. A merged layer computes W x with no gradient reaching
A or B: merge for inference, unmerge before training again.

``inject`` swaps the matched ``nn.Linear`` modules of any model (ours or a Hugging Face one) for
``LoRALinear`` and freezes everything else; ``gpt_targets("q", "v")`` spells the paper's choices for our
GPT. ``papers/lora/peft_format.py`` reads and writes adapters in peft's format.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import PaperzooError
from common.runs import count_parameters

Targets = Sequence[str] | Mapping[str, Sequence[bool] | None]


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` W0 plus a trainable low-rank update: y = W0 x + b + (α / r) B A dropout(x).

    ``slices``: None adapts the whole matrix; else one flag per equal output chunk (e.g. (True, False,
    True) for q and v of a fused qkv), each enabled chunk with its own rank-r pair (A_j, B_j).
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        slices: Sequence[bool] | None = None,
    ):
        super().__init__()
        slices = (True,) if slices is None else tuple(bool(s) for s in slices)
        if r <= 0:
            raise PaperzooError(f"LoRA rank r must be positive, got {r}")
        if not any(slices) or base.out_features % len(slices):
            raise PaperzooError(
                f"slices {slices} must enable at least one of equal chunks of {base.out_features} outputs"
            )
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scale = r, alpha, alpha / r
        self.slices = slices
        self.chunk = base.out_features // len(slices)  # d_s
        enabled = [i for i, s in enumerate(slices) if s]
        self.register_buffer("enabled", torch.tensor(enabled, device=base.weight.device), persistent=False)
        self.n_enabled = m = len(enabled)
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(m * r, base.in_features, **kw))  # [A_1; ...; A_m]
        self.lora_B = nn.Parameter(torch.zeros(m * self.chunk, r, **kw))  # [B_1; ...; B_m]
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # bound 1/sqrt(d_in) for every A_j
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def full_B(self) -> torch.Tensor:
        """B as one (d_out, m r) matrix with ΔW = (α / r) full_B A: B_j in the rows of the j-th enabled
        chunk and columns j r .. (j + 1) r, zeros elsewhere. For the whole matrix it is ``lora_B``."""
        return self._embed(self.lora_B.view(self.n_enabled, self.chunk, self.r))

    def _embed(self, blocks: torch.Tensor) -> torch.Tensor:
        """(m, d_s, r) blocks B_j -> the (d_out, m r) block matrix of ``full_B``."""
        if len(self.slices) == 1:
            return blocks[0]
        rows = torch.block_diag(*blocks).view(self.n_enabled, self.chunk, -1)  # (m, d_s, m r)
        full = rows.new_zeros(len(self.slices), self.chunk, rows.shape[-1])  # (n, d_s, m r)
        return full.index_copy(0, self.enabled, rows).flatten(0, 1)

    @torch.no_grad()
    def load_full_B(self, full_B: torch.Tensor) -> None:
        """The inverse of ``full_B``: take the blocks B_j of a (d_out, m r) matrix into ``lora_B``; refuses
        one with a nonzero entry outside the blocks (it is no adapter of these slices)."""
        m = self.n_enabled
        if full_B.shape != (self.out_features, m * self.r):
            raise PaperzooError(
                f"B of shape {tuple(full_B.shape)} for {self.out_features} outputs, rank {m * self.r}"
            )
        full_B = full_B.to(self.lora_B)
        index = torch.arange(m, device=full_B.device)
        blocks = full_B.view(len(self.slices), self.chunk, m, self.r)[self.enabled, :, index]  # (m, d_s, r)
        if not torch.equal(self._embed(blocks), full_B):
            raise PaperzooError(f"this B is not block-structured for slices {self.slices}")
        self.lora_B.copy_(blocks.reshape_as(self.lora_B))

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α / r) B A, exactly zero in disabled chunks: (d_out, d_in)."""
        return self.full_B() @ self.lora_A * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d_in) -> (..., d_out)
        y = self.base(x)
        if self.merged:
            return y
        h = F.linear(self.dropout(x), self.lora_A)  # (..., m r)
        if len(self.slices) == 1:
            return y + F.linear(h, self.lora_B) * self.scale
        # each enabled chunk j: y_j += (α / r) B_j h_j, without building the block matrix full_B
        blocks = self.lora_B.view(self.n_enabled, self.chunk, self.r)  # (m, d_s, r)
        delta = torch.einsum(
            "...mr,mdr->...md", h.unflatten(-1, (self.n_enabled, self.r)), blocks
        )  # (..., m, d_s)
        chunks = y.unflatten(-1, (len(self.slices), self.chunk))  # (..., n, d_s)
        return chunks.index_add(-2, self.enabled, delta * self.scale).flatten(-2)

    @torch.no_grad()
    def merge(self) -> None:
        """W0 <- W0 + ΔW; the layer then computes W x with no extra cost (and no gradient to A, B)."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 + ΔW <- W0 + ΔW - ΔW: W0 again, up to float rounding (see the module docstring)."""
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, slices={self.slices}, merged={self.merged}"


def gpt_targets(*matrices: str) -> dict[str, tuple[bool, ...] | None]:
    """The paper's attention matrices for our GPT (``common.models.gpt``): any of "q", "k", "v", "o".

    q, k, v are chunks of the fused ``qkv``: ``gpt_targets("q", "v")`` ->
    ``{"blocks.*.mixer.qkv": (True, False, True)}``; "o" is ``proj`` (the paper's W_o).
    """
    if not matrices or set(matrices) - {"q", "k", "v", "o"}:
        raise PaperzooError(f"attention matrices {list(matrices)}: choose one or more of q, k, v, o")
    targets: dict[str, tuple[bool, ...] | None] = {}
    if {"q", "k", "v"} & set(matrices):
        targets["blocks.*.mixer.qkv"] = tuple(name in matrices for name in ("q", "k", "v"))
    if "o" in matrices:
        targets["blocks.*.mixer.proj"] = None
    return targets


def inject(model: nn.Module, targets: Targets, r: int, alpha: float, dropout: float = 0.0) -> list[str]:
    """Replace the ``nn.Linear`` modules whose qualified names match ``targets`` by ``LoRALinear``.

    ``targets``: fnmatch patterns (``"blocks.*.mixer.proj"``; ``*`` also crosses dots), or a mapping
    pattern -> slices (None: the whole matrix). Every parameter of ``model`` except the new A and B is
    frozen (adapters of an earlier call stay trainable). Returns the adapted names; ``n_trainable(model)``
    counts what is left to train.
    """
    if not isinstance(targets, Mapping):
        targets = dict.fromkeys(targets)
    adapted = tuple(f"{name}." for name in lora_modules(model))
    names = [name for name, _ in model.named_modules() if not name.startswith(adapted)]
    chosen: dict[str, Sequence[bool] | None] = {}
    for pattern, slices in targets.items():
        matched = [name for name in names if fnmatchcase(name, pattern)]
        if not matched:
            raise PaperzooError(f"LoRA target '{pattern}' matches no module of {type(model).__name__}")
        for name in matched:
            module = model.get_submodule(name)
            if isinstance(module, LoRALinear) or not isinstance(module, nn.Linear):
                kind = "is already adapted" if isinstance(module, LoRALinear) else "is not an nn.Linear"
                raise PaperzooError(f"LoRA target '{pattern}' matches '{name}', which {kind}")
            if chosen.get(name, slices) != slices:
                raise PaperzooError(f"'{name}' is matched by two targets with different slices")
            chosen[name] = slices
    model.requires_grad_(False)
    for name, slices in chosen.items():
        parent, _, child = name.rpartition(".")
        lora = LoRALinear(model.get_submodule(name), r, alpha, dropout, slices)
        setattr(model.get_submodule(parent), child, lora)
    for layer in lora_modules(model).values():  # adapters of an earlier inject stay trainable
        layer.lora_A.requires_grad_(True)
        layer.lora_B.requires_grad_(True)
    return list(chosen)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """Every ``LoRALinear`` of ``model`` by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters' A and B: what a LoRA checkpoint needs next to the pretrained weights."""
    return {
        f"{name}.{p}": getattr(m, p).detach()
        for name, m in lora_modules(model).items()
        for p in ("lora_A", "lora_B")
    }


def n_trainable(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (tied weights counted once): the lab's count, which
    common.reproduce logs as ``model/n_trainable``."""
    return count_parameters(model)[1]


def merge_all(model: nn.Module) -> None:
    """Merge every adapter into its frozen weight (inference without extra latency)."""
    for m in lora_modules(model).values():
        m.merge()


def unmerge_all(model: nn.Module) -> None:
    """Undo ``merge_all``: W0 back, up to float rounding."""
    for m in lora_modules(model).values():
        m.unmerge()
