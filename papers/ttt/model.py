"""TTT layers and language models (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive
Hidden States", arXiv 2407.04620), as mixers of the lab's LM shell (common.models.lm).

The TTT layer (Sec. 2, Fig. 4; the inner loop in ``ops``), x (B, L, C) with H heads of size D = C / H:

    q, k, v = θ_Q x, θ_K x, θ_V x                         (B, H, L, D) each    the views of Eq. 4
    η_s = η_base σ(θ_lr · x_s)  (learn_lr)  or  η_base    (B, H, L)            Sec. 2.7, learnable inner lr
    z = TTT(q, k, v, η; W_0)                               ops.ttt_dual: mini-batch TTT (Sec. 2.4), dual form
    out = W_o (LN(z) [⊙ GELU(W_g x)])                      post-norm, and the gate of the Mamba backbone

with η_base = inner_lr / D (the official code's base lr per head dimension; our loss ‖·‖² carries a factor 2
theirs does not, so inner_lr 0.5 is their 1.0), W_0 learnable (``learn_init``; else W_0 = 0 and no inner
bias: Theorem 1's f(x) = x W), f = x + LN(f_res(x)) (``ln_residual``) and ``grad_mean``: each mini-batch step
on the mean loss of its tokens so far (the official weighting, α_t = 1 / (t - t')).

Backbones (Sec. 2.7, "Backbone architecture"), N x [x + TTT(RMSNorm(x)); x + MLP(RMSNorm(x))] in both:

    "transformer"   TTT (T): the TTT layer in place of attention, separate q, k, v projections
    "mamba"         TTT (M): the layer with the Mamba backbone's temporal convolutions and gate: a shared q/k
                    projection followed by two causal depthwise convolutions (kernel 4) for q and k, and the
                    output gate GELU(W_g x) (the official code's share_qk / use_gate; its extra pre-conv
                    residual block before each layer is not built here). Same parameters as TTT (T) up to the
                    convolutions: W_qk, W_v, W_g replace W_qkv.

Deviations from the official code, on purpose: no RoPE on q and k (it rotates them by the position inside
the mini-batch; here order comes from the recurrence alone) and the 1 / i weighting of ``grad_mean`` without
its learnable offset.

``step`` runs the dual form on one token: the state is
(the conv window, the weights at the current mini-batch's start, its accumulators, the position), O(1) in the
position: W and the accumulators have fixed sizes. ``forward`` / ``prefill`` run the dual form over a sequence.
In the model zoo as ``ttt`` (``zoo.build("ttt", TTTConfig(...))``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from common.errors import PaperzooError
from common.models.lm import CausalLM, GeluMLP
from common.models.zoo import register

from .ops import inner_shapes, output_rule, per_sample, ttt_dual

INIT_STD = 0.02  # the official code's initializer_range


class TTTMixer(nn.Module):
    """The TTT layer of the module docstring, with the ``forward`` / ``init_state`` / ``step`` / ``prefill``
    protocol of common.models.lm."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        inner: str = "linear",
        mini_batch: int = 16,
        ln_residual: bool = True,
        learn_init: bool = True,
        learn_lr: bool = True,
        inner_lr: float = 0.5,
        grad_mean: bool = True,
        conv_kernel: int = 0,
        gated: bool = False,
    ):
        super().__init__()
        self.n_heads, self.head_dim, self.d_model = n_heads, d_model // n_heads, d_model
        self.inner, self.mini_batch, self.grad_mean, self.learn_lr = inner, mini_batch, grad_mean, learn_lr
        self.eta_base, self.conv_kernel = inner_lr / self.head_dim, conv_kernel
        if conv_kernel:  # Mamba backbone: shared q/k projection, then a temporal conv for each
            self.qk = nn.Linear(d_model, d_model, bias=False)
            self.v = nn.Linear(d_model, d_model, bias=False)
            self.conv_q = nn.Conv1d(
                d_model, d_model, conv_kernel, groups=d_model
            )  # causal: run on [window, x]
            self.conv_k = nn.Conv1d(d_model, d_model, conv_kernel, groups=d_model)
        else:
            self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.lr_gate = nn.Linear(d_model, n_heads) if learn_lr else None  # θ_lr
        self.gate = nn.Linear(d_model, d_model, bias=False) if gated else None
        h, d = n_heads, self.head_dim
        shapes = inner_shapes(inner, h, d)
        if learn_init:  # W_0 (and biases b_0): learnable, normal(0.02) and zeros as the official code
            self.init_weights = nn.ParameterList(
                nn.Parameter(torch.randn(s) * INIT_STD if len(s) == 3 else torch.zeros(s)) for s in shapes
            )
        else:  # Theorem 1: W_0 = 0, f(x) = x W
            self.register_buffer("w0_zero", torch.zeros(shapes[0]))
            self.init_weights = None
        self.ln_weight = nn.Parameter(torch.ones(h, d)) if ln_residual else None
        self.ln_bias = nn.Parameter(torch.zeros(h, d)) if ln_residual else None
        self.post_norm = nn.LayerNorm(d_model, eps=1e-6)
        self.out = nn.Linear(d_model, d_model, bias=False)
        for linear in (m for m in self.modules() if isinstance(m, nn.Linear)):
            nn.init.normal_(linear.weight, std=INIT_STD)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)  # the lr gate starts at σ(0) = 1/2 for every token
        for p in [self.ln_weight, self.ln_bias, *(self.init_weights or [])[1::2]]:
            if p is not None:
                p._no_weight_decay = (
                    True  # norms and biases, (H, D) shaped: weight decay would pull them to 0
                )

    def params(self) -> tuple[torch.Tensor, ...]:
        """The inner model's W_0 (H, ...): (W, b) or (W1, b1, W2, b2); (W,) = 0 without ``learn_init``."""
        return tuple(self.init_weights) if self.init_weights is not None else (self.w0_zero,)

    def _ln(self):
        return None if self.ln_weight is None else (self.ln_weight, self.ln_bias)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        return rearrange(t, "b l (h d) -> b h l d", h=self.n_heads)

    def _views(self, x: torch.Tensor, window: torch.Tensor | None):
        """q, k, v (B, H, L, D), η (B, H, L), and the conv window after x (None without convs)."""
        if self.conv_kernel:
            qk = torch.cat([window, self.qk(x).transpose(1, 2)], dim=-1)  # (B, C, K - 1 + L)
            q = F.conv1d(qk, self.conv_q.weight, self.conv_q.bias, groups=self.d_model).transpose(1, 2)
            k = F.conv1d(qk, self.conv_k.weight, self.conv_k.bias, groups=self.d_model).transpose(1, 2)
            v, window = self.v(x), qk[..., qk.shape[-1] - (self.conv_kernel - 1) :]
        else:
            q, k, v = self.qkv(x).chunk(3, dim=-1)  # (B, L, C) each
        if self.lr_gate is not None:
            eta = self.eta_base * torch.sigmoid(self.lr_gate(x)).transpose(1, 2)  # (B, H, L)
        else:
            eta = x.new_full((x.shape[0], self.n_heads, x.shape[1]), self.eta_base)
        return self._heads(q), self._heads(k), self._heads(v), eta, window

    def _output(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = self.post_norm(rearrange(z, "b h l d -> b l (h d)").to(x.dtype))  # (B, L, C)
        if self.gate is not None:
            y = y * F.gelu(self.gate(x), approximate="tanh")
        return self.out(y)  # (B, L, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, C) -> (B, L, C), from position 0
        return self.prefill(x, self.init_state(x.shape[0], x.device, x.dtype))[0]

    def init_state(self, batch_size: int, device=None, dtype=None):
        """(conv window (B, C, K - 1) or None, W at the mini-batch's start (B, H, ...), accumulators, position)."""
        window = None
        if self.conv_kernel:
            window = torch.zeros(batch_size, self.d_model, self.conv_kernel - 1, device=device, dtype=dtype)
        weights = per_sample(self.params(), batch_size)
        return (
            window,
            weights,
            tuple(torch.zeros(w.shape, device=w.device, dtype=w.dtype) for w in weights),
            0,
        )

    def prefill(self, x: torch.Tensor, state):  # x (B, L, C) after ``state`` -> (B, L, C), state after x
        window, weights, acc, position = state
        q, k, v, eta, window = self._views(x, window)
        fresh = position % self.mini_batch == 0  # a mini-batch starts: its accumulators are zero (skipped)
        z_bar, weights, acc = ttt_dual(q, k, v, eta, weights, self._ln(), self.mini_batch, self.grad_mean,
                                       acc=None if fresh else acc, start=position)  # fmt: skip
        return self._output(output_rule(z_bar, q, self._ln()), x), (
            window,
            weights,
            acc,
            position + x.shape[1],
        )

    def step(self, x: torch.Tensor, state):  # x (B, C) -> (B, C): one token of the dual form
        y, state = self.prefill(x[:, None], state)
        return y[:, 0], state


@dataclass
class TTTConfig:
    """A TTT language model: ``backbone`` "transformer" (TTT (T)) or "mamba" (TTT (M): temporal convolutions
    and a gate in the layer), an MLP of ``mlp_hidden`` (default 4C) in every block."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int = 4
    inner: str = "linear"  # "linear" (TTT-Linear) or "mlp" (TTT-MLP)
    backbone: str = "transformer"
    mini_batch: int = 16
    ln_residual: bool = True
    learn_init: bool = True
    learn_lr: bool = True
    inner_lr: float = 0.5
    grad_mean: bool = True
    mlp_hidden: int = 0  # 0: 4 d_model
    conv_kernel: int = 4


def _check(cfg: TTTConfig) -> None:
    problems = []
    if cfg.inner not in ("linear", "mlp"):
        problems.append(f"inner '{cfg.inner}' (choose linear or mlp)")
    if cfg.backbone not in ("transformer", "mamba"):
        problems.append(f"backbone '{cfg.backbone}' (choose transformer or mamba)")
    if cfg.inner == "mlp" and not cfg.learn_init:
        problems.append("inner mlp needs learn_init (W_0 = 0 gives zero gradients through GELU)")
    if cfg.ln_residual and not cfg.learn_init:
        problems.append(
            "ln_residual needs learn_init (the LayerNorm of W_0 k = 0 has gradients of 1/sqrt(eps))"
        )
    if cfg.mini_batch < 1 or cfg.d_model % cfg.n_heads:
        problems.append("mini_batch must be >= 1 and d_model divisible by n_heads")
    if problems:
        raise PaperzooError(f"ttt config: {'; '.join(problems)}")


@register("ttt", TTTConfig)
def build_ttt(cfg: TTTConfig) -> CausalLM:
    _check(cfg)
    mamba = cfg.backbone == "mamba"

    def mixer(_: int) -> TTTMixer:
        m = TTTMixer(cfg.d_model, cfg.n_heads, cfg.inner, cfg.mini_batch, cfg.ln_residual, cfg.learn_init,
                     cfg.learn_lr, cfg.inner_lr, cfg.grad_mean, conv_kernel=cfg.conv_kernel if mamba else 0,
                     gated=mamba)  # fmt: skip
        with torch.no_grad():  # GPT-2's residual rescaling, as the lab's GPT
            m.out.weight /= math.sqrt(2 * cfg.n_layers)
        return m

    def mlp(_: int) -> GeluMLP:
        return GeluMLP(cfg.d_model, cfg.mlp_hidden or 4 * cfg.d_model, bias=False)

    return CausalLM(
        cfg.vocab_size, cfg.d_model, cfg.n_layers, mixer_factory=mixer, mlp_factory=mlp, norm="rms"
    )
