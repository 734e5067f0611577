"""The Mamba block and language model of Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces", arXiv 2312.00752 (Sec. 3.4, Fig. 3).

    x (B, L, D) -> in_proj -> x, z (B, L, E*D)
    x -> causal depthwise conv1d (kernel d_conv) -> SiLU -> selective SSM (Algorithm 2, Eq. 2a, 2b, 4) -> y
    y * SiLU(z) -> out_proj -> (B, L, D)

Selection (Algorithm 2): B_t = Linear_N(x_t), C_t = Linear_N(x_t), Δ_t = softplus(Linear_D(Linear_R(x_t)) + bias),
the low-rank (R = dt_rank = ceil(D / 16)) form of the paper's s_Δ(x) = Broadcast_D(Linear_1(x)). Initialisation (Sec. 3.6): A = -(1, 2, ..., N) per channel (S4D-Real, stored as
A_log), Δ log-uniform in [dt_min, dt_max] through the inverse softplus into the bias, D = 1.

Variants of Table 1 (selective copying):
    selective=False  an LTI, S4D-style SSM: Δ (a per-channel bias through softplus), B, C (E*D, N) are
                     learned parameters that do not depend on the input; B = 1, C ~ N(0, 1) at init (S4D);
                     ``forward`` runs it in convolution mode (Eq. 3a, 3b), ``prefill`` and ``step`` as a scan
    gated=False      "no gate": no z branch, y goes straight to out_proj

Recurrent form (``step``): a state of (conv window (B, E*D, d_conv - 1), SSM state h (B, E*D, N)), updated in
O(1) per token: the state does not grow with the position. ``prefill`` runs L tokens after a state in one
parallel scan: the scan from h = 0 plus the decayed entering state, by linearity of Eq. 2a,

    h_t = exp(A sum_{s<=t} Δ_s) h_0 + scan_t(h = 0),    y_t gains sum_n C_t exp(A sum_{s<=t} Δ_s) h_0,

and the conv window continues from the state's last d_conv - 1 inputs.

``build_mamba_lm``: the paper's LM, pure Mamba blocks x + mixer(RMSNorm(x)), no positions, no MLP, tied head;
in the model zoo as ``mamba`` (``zoo.build("mamba", MambaLMConfig(...))``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.models.lm import CausalLM
from common.models.zoo import register

from .ops import selective_scan, ssm_convolution


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))  # softplus(inverse_softplus(y)) = y for y > 0


def _fp32_or_more(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))  # SSM parameters stay fp32 in bf16 models


class MambaMixer(nn.Module):
    """Sequence mixer of the Mamba block (Fig. 3), with the ``forward`` / ``init_state`` / ``step`` protocol."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        selective: bool = True,
        gated: bool = True,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model  # E*D
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.selective, self.gated = selective, gated
        self.in_proj = nn.Linear(d_model, (2 if gated else 1) * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)

        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt_bias = _inverse_softplus(dt.clamp(min=dt_init_floor))  # (E*D,)   softplus(dt_bias) = dt
        if selective:
            self.x_proj = nn.Linear(
                self.d_inner, self.dt_rank + 2 * d_state, bias=False
            )  # Δ (low rank), B, C
            self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
            nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
            with torch.no_grad():
                self.dt_proj.bias.copy_(dt_bias)
        else:
            self.dt_bias = nn.Parameter(dt_bias)
            self.B = nn.Parameter(torch.ones(self.d_inner, d_state))
            self.C = nn.Parameter(torch.randn(self.d_inner, d_state))
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)  # (E*D, N)
        self.A_log = nn.Parameter(torch.log(A))  # A = -exp(A_log) < 0
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def _ssm_params(self, x: torch.Tensor):
        """Δ (before bias and softplus), B, C and the Δ bias, for x (B, E*D, L) or one step x (B, E*D)."""
        if not self.selective:
            return torch.zeros_like(x), self.B, self.C, self.dt_bias
        x_dbl = self.x_proj(x.transpose(1, 2) if x.dim() == 3 else x)  # (B, L, R + 2N) or (B, R + 2N)
        dt, B, C = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = dt @ self.dt_proj.weight.t()  # (B, L, E*D) or (B, E*D)
        if x.dim() == 3:
            delta, B, C = (
                delta.transpose(1, 2),
                B.transpose(1, 2),
                C.transpose(1, 2),
            )  # (B, E*D, L), (B, N, L)
        return delta, B, C, self.dt_proj.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, L, D)
        length = x.shape[1]
        xz = self.in_proj(x).transpose(1, 2)  # (B, 2*E*D or E*D, L)
        x, z = xz.chunk(2, dim=1) if self.gated else (xz, None)  # (B, E*D, L) each
        x = F.silu(self.conv1d(x)[..., :length])  # causal: the conv is padded by d_conv - 1 on both sides
        A = -torch.exp(_fp32_or_more(self.A_log))  # (E*D, N)
        D = _fp32_or_more(self.D)
        if self.selective:
            delta, B, C, delta_bias = self._ssm_params(x)
            y = selective_scan(
                x, delta, A, B, C, D, z, _fp32_or_more(delta_bias), delta_softplus=True
            )  # (B, E*D, L)
        else:  # Δ, B, C fixed: the convolution mode (Eq. 3a, 3b), no per-step Δ to build
            dt = F.softplus(_fp32_or_more(self.dt_bias))  # (E*D,)
            y = ssm_convolution(x, dt, A, self.B, self.C, D, z)  # (B, E*D, L)
        return self.out_proj(y.transpose(1, 2))  # (B, L, D)

    def prefill(self, x: torch.Tensor, state):  # x (B, L, D) after ``state`` -> (B, L, D), state after x
        conv_window, h0 = state
        xz = self.in_proj(x).transpose(1, 2)  # (B, 2*E*D or E*D, L)
        x, z = xz.chunk(2, dim=1) if self.gated else (xz, None)  # (B, E*D, L) each
        window = torch.cat([conv_window, x], dim=-1)  # (B, E*D, d_conv - 1 + L)
        x = F.silu(F.conv1d(window, self.conv1d.weight, self.conv1d.bias, groups=self.d_inner))  # (B, E*D, L)
        delta, B, C, delta_bias = self._ssm_params(x)
        A = -torch.exp(self.A_log.to(h0.dtype))  # (E*D, N)
        y, h = selective_scan(x, delta, A, B, C, self.D.to(h0.dtype), None, delta_bias.to(h0.dtype),
                              delta_softplus=True, return_last_state=True)  # fmt: skip
        # the entering state h0, decayed by exp(A * cumulative Δ) (B, E*D, N, L), read out by C_t
        dt = F.softplus(delta.to(h0.dtype) + delta_bias.to(h0.dtype)[:, None])  # (B, E*D, L)
        decay = torch.exp(A[..., None] * dt.cumsum(-1)[:, :, None, :])  # (B, E*D, N, L)
        C = C[:, None] if self.selective else C[..., None]  # (B, 1, N, L) or (E*D, N, 1)
        y = y.to(h0.dtype) + (decay * h0[..., None] * C.to(h0.dtype)).sum(2)  # (B, E*D, L)
        if z is not None:
            y = y * F.silu(z.to(h0.dtype))
        h = h.to(h0.dtype) + decay[..., -1] * h0  # (B, E*D, N)
        new_window = window[..., window.shape[-1] - (self.d_conv - 1) :]  # the last d_conv - 1 inputs
        return self.out_proj(y.to(x.dtype).transpose(1, 2)), (new_window, h)

    def init_state(self, batch_size: int, device=None, dtype=None):
        """(conv window (B, E*D, d_conv - 1), SSM state h (B, E*D, N)); h kept in at least fp32."""
        conv = torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype)
        h_dtype = torch.promote_types(dtype or torch.get_default_dtype(), torch.float32)
        return conv, torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=h_dtype)

    def step(self, x: torch.Tensor, state):  # x (B, D) -> (B, D), O(1) in the position
        conv_window, h = state
        xz = self.in_proj(x)  # (B, 2*E*D or E*D)
        x, z = xz.chunk(2, dim=-1) if self.gated else (xz, None)  # (B, E*D)
        window = torch.cat([conv_window, x[..., None]], dim=-1)  # (B, E*D, d_conv)
        x = F.silu((window * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)  # (B, E*D)
        delta, B, C, delta_bias = self._ssm_params(x)  # B, C: (B, N) selective, (E*D, N) LTI
        if self.selective:
            B, C = B[:, None, :], C[:, None, :]  # (B, 1, N)
        xf = x.to(h.dtype)
        delta = F.softplus(delta.to(h.dtype) + delta_bias.to(h.dtype))  # (B, E*D)
        A = -torch.exp(self.A_log.to(h.dtype))  # (E*D, N)
        h = torch.exp(delta[..., None] * A) * h + (delta * xf)[..., None] * B.to(h.dtype)  # Eq. 4, 2a
        y = (h * C.to(h.dtype)).sum(-1) + self.D.to(h.dtype) * xf  # (B, E*D)   Eq. 2b
        if z is not None:
            y = y * F.silu(z.to(h.dtype))
        return self.out_proj(y.to(x.dtype)), (window[..., 1:], h)


@dataclass
class MambaLMConfig:
    """The Mamba LM of ``build_mamba_lm``; vocab_size usually comes from the data, at build time."""

    vocab_size: int
    d_model: int
    n_layers: int
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    selective: bool = True
    gated: bool = True


def build_mamba_lm(
    vocab_size: int,
    d_model: int,
    n_layers: int,
    d_state: int = 16,
    d_conv: int = 4,
    expand: int = 2,
    selective: bool = True,
    gated: bool = True,
) -> CausalLM:
    """The paper's Mamba LM: embedding -> n_layers x [x + MambaMixer(RMSNorm(x))] -> RMSNorm -> tied head.

    As in the official model, each out_proj is scaled by 1/sqrt(n_layers) at init (GPT-2's residual rescaling).
    """

    def mixer(_: int) -> MambaMixer:
        m = MambaMixer(d_model, d_state, d_conv, expand, selective=selective, gated=gated)
        with torch.no_grad():
            m.out_proj.weight /= math.sqrt(n_layers)
        return m

    return CausalLM(vocab_size, d_model, n_layers, mixer_factory=mixer, mlp_factory=None, norm="rms")


@register("mamba", MambaLMConfig)
def build_mamba(cfg: MambaLMConfig) -> CausalLM:
    return build_mamba_lm(**asdict(cfg))
