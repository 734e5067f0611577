"""What the LoRA paper (Hu et al. 2021, arXiv 2106.09685) measures beside quality, and the runs that log it.

training_memory      Sec. 4.2: the peak bytes of live tensors (``LiveTensors``) and the optimizer-state bytes of
                     one steady-state AdamW step
generation_latency   Sec. 4.2 and Table 1: a generation step at batch 1 of merged LoRA, unmerged LoRA and
                     Houlsby adapters, each over the base model's
subspace_similarity  Sec. 7.2, Eq. 4: φ(A1, A2, i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j), U the
                     right-singular vectors of A (r, d_in); ``phi_metrics`` over every adapted matrix
Target               a target task as one method's run sees it: its metrics plus the trainable fraction, the
                     training memory against FT and, for the headline run, generation latency
SubspaceTask         the 0-step run that compares the A's of two finished LoRA runs
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from common.config import TrainConfig
from common.experiment import LazyTask
from common.models import zoo
from common.models.lm import CausalLM
from common.models.zoo import spec_of
from common.runs import RunRef, load_run_weights
from common.train import build_optimizer

from .baselines import inject_adapters
from .lora import lora_modules, merge_all, n_trainable

if TYPE_CHECKING:  # the configs live with the plan, which imports this module
    from .experiment import TargetConfig


class LiveTensors(TorchDispatchMode):
    """The bytes of tensor storage alive while the mode is active, and their high-water mark ``peak``: the
    ``resident`` tensors, then every storage an aten op returns (forward, backward and the optimizer's ops
    alike), counted until it is freed. Unlike the process's RSS (``resource``) it can be reset and sees no
    allocator caching; ``tracemalloc`` sees no tensor at all."""

    def __init__(self, resident: Iterable[torch.Tensor]):
        super().__init__()
        self.sizes, self.live = WeakIdKeyDictionary(), 0
        for tensor in resident:
            self._add(tensor)
        self.peak = self.live

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage not in self.sizes:
            self.sizes[storage] = size = storage.nbytes()
            self.live += size
            weakref.finalize(storage, self._free, size)

    def _free(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._add(leaf)
        self.peak = max(self.peak, self.live)
        return out


def training_memory(
    model: nn.Module, batch: dict[str, torch.Tensor], cfg: TrainConfig, device
) -> tuple[int, int]:
    """(peak bytes of live tensors, optimizer-state bytes) of a steady-state training step of a copy of ``model``:
    a first AdamW step creates the optimizer state, the second (forward, backward, step) is measured; it holds
    the weights, the optimizer state, the gradients of the trainable parameters and the activations."""
    twin = copy.deepcopy(model).train()
    optimizer = build_optimizer(twin, cfg, device)
    batch = {k: v.to(device) for k, v in batch.items()}

    def state() -> list[torch.Tensor]:
        return [t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)]

    def step() -> None:
        twin(batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with torch.enable_grad():
        step()
        with LiveTensors([*twin.state_dict().values(), *batch.values(), *state()]) as live:
            step()
    return live.peak, sum(t.nbytes for t in state())


def strip_lora(model: nn.Module) -> nn.Module:
    """``model`` with every (unmerged) LoRALinear replaced by its frozen W0: the base model again."""
    for name, layer in lora_modules(model).items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.base)
    return model


@torch.inference_mode()
def step_latency(models: dict[str, CausalLM], prompt: torch.Tensor, n_tokens: int) -> dict[str, float]:
    """Median milliseconds of one generation step of each model after ``prompt`` (1, P): every model prefills it,
    then single steps from that state are timed, the models taking turns step by step so that a busy moment of
    the machine slows them alike (as common.inference.generation_costs does for positions)."""
    states = {name: m.prefill(prompt, m.init_state(1))[1] for name, m in models.items()}
    token, times = prompt[:, -1], {name: [] for name in models}
    for _ in range(n_tokens + 2):  # two rounds of warm-up
        for name, m in models.items():
            start = time.perf_counter()
            m.step(token, states[name])
            if prompt.device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t[2:]) for name, t in times.items()}


def generation_latency(
    model: CausalLM, prompt: torch.Tensor, n_tokens: int, bottleneck: int
) -> dict[str, float]:
    """Sec. 4.2 and Table 1 at batch 1: the step time of the LoRA model merged (W = W0 + BA in place), unmerged
    (the extra B A x), and of Houlsby adapters (untrained: the time does not depend on the weights), each over
    the base model's (W0 alone)."""
    base = strip_lora(copy.deepcopy(model)).eval()
    merged = copy.deepcopy(model).eval()
    merge_all(merged)
    houlsby = copy.deepcopy(base)
    inject_adapters(houlsby, bottleneck)
    ms = step_latency({"base": base, "merged": merged, "unmerged": model.eval(), "houlsby": houlsby.eval()},
                      prompt, n_tokens)  # fmt: skip
    return {"latency/base_ms_per_token": ms["base"],
            **{f"latency/{name}_over_base": ms[name] / ms["base"] for name in ("merged", "unmerged", "houlsby")}}  # fmt: skip


def subspace_similarity(A1: torch.Tensor, A2: torch.Tensor) -> torch.Tensor:
    """Sec. 7.2, Eq. 4: φ(A1, A2, i, j) = ||U1[:, :i]^T U2[:, :j]||_F^2 / min(i, j) for every i, j, where U are the
    right-singular vectors of A (r, d_in) by decreasing singular value: a (k1, k2) float64 matrix in [0, 1]."""
    V1, V2 = (torch.linalg.svd(A.double(), full_matrices=False).Vh for A in (A1, A2))  # (k, d_in)
    overlap = (V1 @ V2.T).square().cumsum(0).cumsum(1)  # [i-1, j-1]: ||U1^i^T U2^j||_F^2
    i = torch.arange(1, overlap.shape[0] + 1, dtype=torch.float64)[:, None]
    j = torch.arange(1, overlap.shape[1] + 1, dtype=torch.float64)[None, :]
    return overlap / torch.minimum(i, j)


def slice_As(model: nn.Module) -> dict[str, torch.Tensor]:
    """The A of every adapted matrix: '<layer>.q' -> A_q (r, d_in), one per enabled slice of a fused qkv."""
    out = {}
    for name, layer in lora_modules(model).items():
        names = "qkv" if len(layer.slices) == 3 else "w" * len(layer.slices)
        for A, index in zip(layer.lora_A.detach().view(layer.n_enabled, layer.r, -1), layer.enabled.tolist()):
            out[f"{name}.{names[index]}"] = A.cpu()
    return out


def mean_phi(A_small: dict[str, torch.Tensor], A_large: dict[str, torch.Tensor]) -> torch.Tensor:
    """φ(A_small[n], A_large[n], i, j) averaged over the adapted matrices n: a (k_small, k_large) grid."""
    return torch.stack([subspace_similarity(A_small[n], A_large[n]) for n in A_small]).mean(0)


def phi_metrics(small: nn.Module, large: nn.Module, seed: int = 0) -> dict[str, float]:
    """φ(A_small, A_large, i, j) averaged over every adapted matrix (``subspace/phi_<i>_<j>``: the diagonal i = j and
    the first row i = 1 at j = 1, 2, 4, ...), per matrix kind at (1, 1) (``subspace/phi_q_1_1``), and the same
    (1, 1) for Gaussian matrices of the same shapes (``subspace/random_phi_1_1``: the paper's reference)."""
    A_small, A_large = slice_As(small), slice_As(large)
    mean = mean_phi(A_small, A_large)
    metrics = {f"subspace/phi_{i}_{i}": mean[i - 1, i - 1].item() for i in range(1, min(mean.shape) + 1)}
    metrics |= {
        f"subspace/phi_1_{j}": mean[0, j - 1].item() for j in (2**k for k in range(8)) if j <= mean.shape[1]
    }
    for kind in sorted({name.rsplit(".", 1)[1] for name in A_small}):
        names = [name for name in A_small if name.endswith(f".{kind}")]
        metrics[f"subspace/phi_{kind}_1_1"] = mean_phi(
            *({n: A[n] for n in names} for A in (A_small, A_large))
        )[0, 0].item()
    g = torch.Generator().manual_seed(seed)
    metrics["subspace/random_phi_1_1"] = statistics.fmean(
        subspace_similarity(torch.randn(A_small[n].shape, generator=g), torch.randn(A_large[n].shape, generator=g))[0, 0].item()
        for n in A_small
    )  # fmt: skip
    return metrics


def saved_As(weights: dict[str, torch.Tensor], r: int) -> dict[str, torch.Tensor]:
    """The A of every adapted matrix in a LoRA run's saved tensors (``<layer>.lora_A``, (m r, d_in) for m
    enabled slices): '<layer>.<slice number>' -> (r, d_in)."""
    return {f"{key.removesuffix('.lora_A')}.{j}": A
            for key, stacked in weights.items() if key.endswith(".lora_A")
            for j, A in enumerate(stacked.view(-1, r, stacked.shape[-1]))}  # fmt: skip


def final_weights(mlflow_client, run) -> dict[str, torch.Tensor]:
    """The tensors a finished run saved (its MLflow artifact ``model/model.safetensors``)."""
    from mlflow.artifacts import download_artifacts
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        return load_file(download_artifacts(run_id=run.info.run_id, artifact_path="model/model.safetensors",
                                            dst_path=tmp, tracking_uri=mlflow_client.tracking_uri))  # fmt: skip


def lora_variant(rank: int, r: int) -> str:
    """The captions run that holds LoRA on W_q, W_v at rank r: the headline (``lora``) at its ``rank``, else the
    rank sweep's ``rank_r<r>``."""
    return "lora" if r == rank else f"rank_r{r}"


def subspace_figures(mlflow_client, runs: dict, folder: Path) -> list[tuple[str, str]]:
    """Fig. 3 as heat maps, one per subspace run: φ(A_{r=a}, A_{r=b}, i, j) at every i <= a, j <= b, averaged
    over the adapted matrices, from the final weights of the two captions runs it compared (``lora_variant`` of
    its params ``run.small``, ``run.large`` and ``captions.rank``, at its seed). Returns (title, file name) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = []
    for (task, variant, seed), run in sorted(runs.items()):
        if task != "subspace":
            continue
        params = run.data.params
        small, large = (int(params[f"run.{k}"]) for k in ("small", "large"))
        sources = [
            runs.get(("captions", lora_variant(int(params["captions.rank"]), r), seed))
            for r in (small, large)
        ]
        if None in sources:
            continue
        grid = mean_phi(
            *(saved_As(final_weights(mlflow_client, src), r) for src, r in zip(sources, (small, large)))
        )
        fig, ax = plt.subplots(figsize=(7, 2.6))
        rows, cols = grid.shape  # at most r, or d_in where r > d_in (a rank-r A has only d_in directions)
        image = ax.imshow(grid.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto", interpolation="nearest",
                          extent=(0.5, cols + 0.5, rows + 0.5, 0.5))  # fmt: skip
        fig.colorbar(image, ax=ax, label="φ")
        ax.set_xlabel(f"j (directions of A, r = {large})")
        ax.set_ylabel(f"i (r = {small})")
        title = f"φ(A_r={small}, A_r={large}, i, j), mean over the adapted W_q, W_v; seed {seed}"
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        name = f"subspace_{variant}_s{seed}.png"
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        drawn.append((title, name))
    return drawn


class Target:
    """A target task as one method's run sees it: the task's batches and metrics, plus its trainable fraction and
    training memory against FT (``training_memory``) and, with ``latency`` (the headline run), generation latency."""

    def __init__(self, data: LazyTask, train: TrainConfig, latency: TargetConfig | None = None):
        self.data, self.train, self.latency = data, train, latency

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        return self.data.batch(split, index, batch_size, seed)

    def evaluate(self, model: CausalLM, device: torch.device) -> dict[str, float]:
        metrics = self.data.evaluate(model, device)
        with torch.random.fork_rng(devices=[]):  # the measurements leave the run's random stream alone
            metrics |= self.measure(model, device)
        return metrics

    def measure(self, model: CausalLM, device: torch.device) -> dict[str, float]:
        plain = zoo.from_spec(spec_of(model)).to(device)  # FT's model: the same GPT, every weight trainable
        metrics = {"model/trainable_fraction": n_trainable(model) / plain.num_params()}
        for suffix, size in (("", self.train.batch_size), ("_b1", 1)):
            batch = self.data.batch("train", 0, size, 0)
            (peak, state), (ft_peak, ft_state) = (
                training_memory(m, batch, self.train, device) for m in (model, plain)
            )
            metrics[f"memory/peak_mb{suffix}"] = peak / 2**20
            metrics[f"memory/peak_over_ft{suffix}"] = peak / ft_peak
        metrics["memory/optimizer_mb"], metrics["memory/optimizer_over_ft"] = state / 2**20, state / ft_state
        if self.latency is not None:
            prompt = self.data.batch("val", 0, 1, 0)["idx"][:, : self.latency.latency_prompt].to(device)
            metrics |= generation_latency(model, prompt, self.latency.latency_tokens, self.latency.bottleneck)
        return metrics


class SubspaceTask:
    """Sec. 7.2: φ between the A's of two finished LoRA runs. The run starts from the larger rank's run
    (``init_from``, 0 steps) and this evaluation loads the smaller rank's run into ``build_small()``."""

    def __init__(self, data: LazyTask, small: RunRef, build_small: Callable[[], nn.Module]):
        self.data, self.small, self.build_small = data, small, build_small

    def batch(self, split: str, index: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
        return self.data.batch(split, index, batch_size, seed)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        small = self.build_small()
        load_run_weights(small, self.small)
        return phi_metrics(small, model)
