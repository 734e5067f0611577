"""RWKV-4 and RWKV-7 blocks and language models, as mixers of the lab's LM shell (common.models.lm).

RWKV-4: Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era", arXiv 2305.13048, Sec. 3.1
(3.1.1 token shift, 3.1.2 the WKV operator, 3.1.3 output gating).
RWKV-7: Peng et al. 2025, "RWKV-7 'Goose' with Expressive Dynamic State Evolution", arXiv 2503.14456, Sec. 4
(the time mix: the generalised delta rule; the channel mix). Equations are named, not numbered: the
symbols follow the papers, the code follows RWKV-LM.

Both LMs: embedding -> ln0 (the shell's embed norm) -> N x [x + time_mix(ln1(x)); x + channel_mix(ln2(x))]
-> ln_out -> head (untied). LayerNorms throughout, no positions: order comes from the recurrence.

Token shift (both): each projection reads a per-channel interpolation of the token and the one before,
lerp(x_t, x_{t-1}; μ) = x_t + (x_{t-1} - x_t) ⊙ (1 - μ) (RWKV-4 with μ = time_mix) or
x_t + (x_{t-1} - x_t) ⊙ μ (RWKV-7, μ = x_r ...). The state of a block therefore holds the last
normalised input of the time mix AND of the channel mix.

RWKV-4 time mix, x (B, T, C):
    r, k, v = W_r lerp_r, W_k lerp_k, W_v lerp_v                      (B, T, C) each
    wkv = WKV4(w = -exp(time_decay), u = time_first, k, v)             the WKV operator, ops.wkv4
    out = W_o (σ(r) ⊙ wkv)                                              output gating
RWKV-4 channel mix: σ(W_r' lerp_r') ⊙ W_v' ReLU(W_k' lerp_k')²; hidden 4C.

RWKV-7 time mix (H heads of size N, C = H N):
    r, k, v = W_r x^r, W_k x^k, W_v x^v                                 x^r = lerp_r, ...
    d = -e^{-1/2} σ(w_0 + tanh(x^w W_1) W_2)                           log decay in (-0.607, 0)
    a = σ(a_0 + x^a A_1 A_2)                                            in-context learning rate
    v = v + (v_first - v) σ(v_0 + x^v V_1 V_2)   (layers > 0)           value residual
    g = σ(x^g G_1) G_2                                                  output gate
    κ̂ = normalize_head(k ⊙ ξ),  k̃ = k ⊙ (1 + (a - 1) ⊙ α)              removal key, replacement key
    S_t = S_{t-1} (diag(e^{d_t}) - κ̂_tᵀ (a_t ⊙ κ̂_t)) + v_tᵀ k̃_t          ops.wkv7 with a=-κ̂, b=κ̂⊙a
    p = GroupNorm_H(S_t r_t) + (Σ_head r ⊙ k̃ ⊙ ρ) v                      bonus term
    out = W_o (p ⊙ g)
RWKV-7 channel mix: W_v' ReLU(W_k' lerp_k')² (no receptance), hidden 4C.

Parameter names and shapes follow RWKV-LM's checkpoints (time_decay, time_mix_k, x_r, w0, w1, ..., r_k,
ln_x), so ``papers.rwkv.blinkdl`` maps a state dict by renaming only; per-channel vectors are (C,) here
and (1, 1, C) in the ``.pth``. Initialisation: RWKV-LM's (RWKV-v4neo and RWKV-v7/train_temp), as commented.

Recurrent form: ``step`` runs the sequential reference kernels (ops.wkv4_ref / wkv7_ref) on one token with
an O(1) state; ``forward`` / ``prefill`` run the chunked fast kernels over a sequence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.models.lm import CausalLM
from common.models.zoo import register

from .ops import ZERO_PP, wkv4, wkv4_ref, wkv7, wkv7_ref

LOG_DECAY_SCALE = math.exp(-0.5)  # RWKV-7: log decay = -e^{-1/2} σ(...) ∈ (-0.607, 0)
GROUP_NORM_EPS = (
    64e-5  # RWKV-7's ln_x eps (head_size_divisor² · 1e-5 in RWKV-LM; the `rwkv` package hard-codes it)
)


def token_shift(x: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """(B, T, C), (B, C) -> (B, T, C): the input one position back, ``prev`` at t = 0."""
    return prev[:, None] if x.shape[1] == 1 else torch.cat([prev[:, None], x[:, :-1]], dim=1)


def _ratios(layer_id: int, n_layers: int) -> tuple[float, float]:
    """RWKV-LM's depth ratios: 0 -> 1 over the layers, and 1 -> almost 0."""
    return layer_id / max(n_layers - 1, 1), 1.0 - layer_id / n_layers


def _channel_ramp(d_model: int) -> torch.Tensor:
    return torch.arange(d_model, dtype=torch.float32) / d_model  # (C,) 0 .. (C-1)/C


def _orthogonal(rows: int, cols: int, scale: float) -> torch.Tensor:
    """RWKV-LM's orthogonal init: gain sqrt(rows / cols) for tall matrices, times ``scale``."""
    gain = math.sqrt(rows / cols) if rows > cols else 1.0
    return nn.init.orthogonal_(torch.empty(rows, cols), gain=gain * scale)


def _linear(d_in: int, d_out: int, scale: float) -> nn.Linear:
    """Bias-free Linear with RWKV-LM's init: orthogonal times ``scale``, zeros when scale is 0."""
    layer = nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        layer.weight.copy_(_orthogonal(d_out, d_in, scale) if scale else torch.zeros(d_out, d_in))
    return layer


def _lora_dim(d_model: int, factor: float, power: float) -> int:
    """RWKV-7's suggested low-rank sizes: max(32, round(factor · C^power / 32) · 32)."""
    return max(32, int(round(factor * d_model**power / 32)) * 32)


class TokenShiftMix(nn.Module):
    """A channel mix whose only state is the previous token's input x_prev (B, C): subclasses define
    ``prefill(x (B, T, C), x_prev) -> (y, x[:, -1])``; forward and step follow from it."""

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = d_model

    def init_state(self, batch_size: int, device=None, dtype=None) -> torch.Tensor:
        return torch.zeros(batch_size, self.d_model, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prefill(x, self.init_state(x.shape[0], x.device, x.dtype))[0]

    def step(self, x: torch.Tensor, prev: torch.Tensor):
        y, prev = self.prefill(x[:, None], prev)
        return y[:, 0], prev


# ---- RWKV-4 --------------------------------------------------------------------------------------
class TimeMix4(nn.Module):
    """RWKV-4 time mixing. State: (x_prev (B, C), aa, bb, pp (B, C) fp32)."""

    def __init__(self, d_model: int, layer_id: int, n_layers: int):
        super().__init__()
        up, down = _ratios(layer_id, n_layers)
        ramp, channel = _channel_ramp(d_model), torch.arange(d_model, dtype=torch.float32)
        # decay speeds from -5 (slow... exp(-e^-5) per step) to 3, curved more in deeper layers
        self.time_decay = nn.Parameter(-5 + 8 * (channel / max(d_model - 1, 1)) ** (0.7 + 1.3 * up))
        zigzag = ((channel + 1) % 3 - 1) * 0.5
        self.time_first = nn.Parameter(math.log(0.3) + zigzag)  # u: the current token's bonus
        self.time_mix_k = nn.Parameter(ramp**down)
        self.time_mix_v = nn.Parameter(ramp**down + 0.3 * up)
        self.time_mix_r = nn.Parameter(ramp ** (0.5 * down))
        # RWKV-v4neo zeroes key, receptance and output; value is orthogonal
        self.key, self.receptance = _linear(d_model, d_model, 0), _linear(d_model, d_model, 0)
        self.value, self.output = _linear(d_model, d_model, 1.0), _linear(d_model, d_model, 0)

    def _rkv(self, x: torch.Tensor, prev: torch.Tensor):  # (B, T, C) each
        xx = token_shift(x, prev)
        lerp = lambda mix: x * mix + xx * (1 - mix)  # noqa: E731   token shift
        return torch.sigmoid(self.receptance(lerp(self.time_mix_r))), self.key(lerp(self.time_mix_k)), \
            self.value(lerp(self.time_mix_v))  # fmt: skip

    def _wkv(self, kernel, x: torch.Tensor, state):
        prev, *wkv_state = state
        r, k, v = self._rkv(x, prev)
        fp = torch.promote_types(x.dtype, torch.float32)
        w, u = -torch.exp(self.time_decay.to(fp)), self.time_first.to(fp)  # (C,)
        wkv, wkv_state = kernel(w, u, k.to(fp), v.to(fp), tuple(wkv_state))  # WKV
        return self.output(r * wkv.to(r.dtype)), (x[:, -1], *wkv_state)  # output gating

    def init_state(self, batch_size: int, device=None, dtype=None):
        fp = torch.promote_types(dtype or torch.get_default_dtype(), torch.float32)
        zeros = lambda dt: torch.zeros(batch_size, self.time_decay.numel(), device=device, dtype=dt)  # noqa: E731
        return zeros(dtype), zeros(fp), zeros(fp), zeros(fp) + ZERO_PP  # x_prev, aa, bb, pp (empty: e^pp = 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return self.prefill(x, self.init_state(x.shape[0], x.device, x.dtype))[0]

    def prefill(self, x: torch.Tensor, state):
        return self._wkv(wkv4, x, state)

    def step(self, x: torch.Tensor, state):  # (B, C): the sequential recurrence, one token
        y, state = self._wkv(wkv4_ref, x[:, None], state)
        return y[:, 0], state


class ChannelMix4(TokenShiftMix):
    """RWKV-4 channel mixing."""

    def __init__(self, d_model: int, layer_id: int, n_layers: int, hidden: int = 0):
        super().__init__(d_model)
        hidden = hidden or 4 * d_model
        _, down = _ratios(layer_id, n_layers)
        self.time_mix_k = nn.Parameter(_channel_ramp(d_model) ** down)
        self.time_mix_r = nn.Parameter(_channel_ramp(d_model) ** down)
        self.key = _linear(d_model, hidden, 1.0)
        self.receptance, self.value = _linear(d_model, d_model, 0), _linear(hidden, d_model, 0)

    def prefill(self, x: torch.Tensor, prev: torch.Tensor):  # (B, T, C), (B, C)
        xx = token_shift(x, prev)
        xk = x * self.time_mix_k + xx * (1 - self.time_mix_k)
        xr = x * self.time_mix_r + xx * (1 - self.time_mix_r)
        return torch.sigmoid(self.receptance(xr)) * self.value(torch.relu(self.key(xk)) ** 2), x[:, -1]


# ---- RWKV-7 --------------------------------------------------------------------------------------
class TimeMix7(nn.Module):
    """RWKV-7 time mixing. State: (x_prev (B, C), S (B, H, N, N) fp32, [value, key]).

    Layer 0 stores its values in the shell's ``ctx`` as ``v_first``; later layers mix them back in.
    LoRA sizes 0 take RWKV-7's suggestions (at least 32)."""

    def __init__(self, d_model: int, layer_id: int, n_layers: int, head_size: int = 64,
                 decay_lora: int = 0, a_lora: int = 0, v_lora: int = 0, gate_lora: int = 0):  # fmt: skip
        super().__init__()
        if d_model % head_size:
            raise ValueError(f"d_model {d_model} is not a multiple of head_size {head_size}")
        C, N = d_model, head_size
        self.layer_id, self.n_heads, self.head_size = layer_id, C // N, N
        up, down = _ratios(layer_id, n_layers)
        ramp, channel = _channel_ramp(C), torch.arange(C, dtype=torch.float32)
        for name, power in (
            ("x_r", 0.2),
            ("x_w", 0.9),
            ("x_k", 0.7),
            ("x_v", 0.7),
            ("x_a", 0.9),
            ("x_g", 0.2),
        ):
            setattr(self, name, nn.Parameter(1.0 - ramp ** (power * down)))  # token-shift mixes
        linear = channel / max(C - 1, 1) - 0.5  # -0.5 .. 0.5
        zigzag = ((channel % N) - (N - 1) / 2) / max((N - 1) / 2, 1)
        zigzag = zigzag * zigzag.abs()  # per head, -1 .. 1
        decay = -6 + 6 * (channel / max(C - 1, 1)) ** (1 + up**0.3)

        def lora(name: str, rank: int, bias: torch.Tensor | None):
            setattr(self, f"{name}1", nn.Parameter(torch.zeros(C, rank)))
            setattr(self, f"{name}2", nn.Parameter(_orthogonal(rank, C, 0.1)))
            if bias is not None:
                setattr(self, f"{name}0", nn.Parameter(bias))

        lora("w", decay_lora or _lora_dim(C, 1.8, 0.5), decay + 0.5 + zigzag * 2.5)
        lora("a", a_lora or _lora_dim(C, 1.8, 0.5), -0.19 + zigzag * 0.3 + linear * 0.4)
        if layer_id > 0:  # the value residual: layer 0 only provides v_first
            lora("v", v_lora or _lora_dim(C, 1.3, 0.5), 0.73 - linear * 0.4)
        lora("g", gate_lora or _lora_dim(C, 0.6, 0.8), None)
        self.k_k = nn.Parameter(0.71 - linear * 0.1)  # ξ: removal-key scale
        self.k_a = nn.Parameter(torch.full((C,), 1.02))  # α: replacement-key mix
        self.r_k = nn.Parameter(torch.full((self.n_heads, N), -0.04))  # ρ: bonus
        self.receptance, self.key = _linear(C, C, 1.0), _linear(C, C, 0.1)
        self.value, self.output = _linear(C, C, 1.0), _linear(C, C, 0)
        self.ln_x = nn.GroupNorm(self.n_heads, C, eps=GROUP_NORM_EPS)
        with torch.no_grad():
            self.ln_x.weight.fill_(((1 + layer_id) / n_layers) ** 0.7)

    def _wkv(self, kernel, x: torch.Tensor, state, ctx: dict | None):
        prev, S = state
        (B, T, C), H, N = x.shape, self.n_heads, self.head_size
        xx = token_shift(x, prev) - x
        xr, xw, xk, xv, xa, xg = (x + xx * mix for mix in (self.x_r, self.x_w, self.x_k, self.x_v,
                                                             self.x_a, self.x_g))  # fmt: skip
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)  # (B, T, C)
        log_decay = -LOG_DECAY_SCALE * torch.sigmoid(self.w0 + torch.tanh(xw @ self.w1) @ self.w2)
        ctx = {} if ctx is None else ctx
        if self.layer_id == 0:
            ctx["v_first"] = v
        elif "v_first" not in ctx:
            raise ValueError("RWKV-7 layers > 0 need layer 0's values (ctx['v_first']): run them in the LM")
        else:
            v = v + (ctx["v_first"] - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)  # in-context learning rate
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1)  # κ̂: removal key, unit per head
        k = k * (1 + (a - 1) * self.k_a)  # k̃
        heads = lambda t: t.view(B, T, H, N)  # noqa: E731
        fp = S.dtype
        y, S = kernel(heads(r).to(fp), heads(log_decay).to(fp), heads(k).to(fp), heads(v).to(fp),
                      -kk.to(fp), (kk * heads(a)).to(fp), S)  # fmt: skip
        y = self.ln_x(y.to(x.dtype).reshape(B * T, C)).view(B, T, H, N)
        y = y + (heads(r) * heads(k) * self.r_k).sum(-1, keepdim=True) * heads(v)  # bonus
        return self.output(y.reshape(B, T, C) * g), (x[:, -1], S)

    def init_state(self, batch_size: int, device=None, dtype=None):
        fp = torch.promote_types(dtype or torch.get_default_dtype(), torch.float32)
        H, N = self.n_heads, self.head_size
        return (torch.zeros(batch_size, H * N, device=device, dtype=dtype),
                torch.zeros(batch_size, H, N, N, device=device, dtype=fp))  # fmt: skip

    def forward(self, x: torch.Tensor, ctx: dict | None = None) -> torch.Tensor:
        return self.prefill(x, self.init_state(x.shape[0], x.device, x.dtype), ctx)[0]

    def prefill(self, x: torch.Tensor, state, ctx: dict | None = None):
        return self._wkv(wkv7, x, state, ctx)

    def step(self, x: torch.Tensor, state, ctx: dict | None = None):  # (B, C)
        y, state = self._wkv(wkv7_ref, x[:, None], state, ctx)
        return y[:, 0], state


class ChannelMix7(TokenShiftMix):
    """RWKV-7 channel mixing: W_v ReLU(W_k lerp_k)²."""

    def __init__(self, d_model: int, layer_id: int, n_layers: int, hidden: int = 0):
        super().__init__(d_model)
        hidden = hidden or 4 * d_model
        _, down = _ratios(layer_id, n_layers)
        self.x_k = nn.Parameter(1.0 - _channel_ramp(d_model) ** (down**4))
        self.key, self.value = _linear(d_model, hidden, 1.0), _linear(hidden, d_model, 0)

    def prefill(self, x: torch.Tensor, prev: torch.Tensor):  # (B, T, C), (B, C)
        xk = x + (token_shift(x, prev) - x) * self.x_k
        return self.value(torch.relu(self.key(xk)) ** 2), x[:, -1]


# ---- language models -------------------------------------------------------------------------------
@dataclass
class RWKV4Config:
    vocab_size: int
    d_model: int
    n_layers: int
    ffn_hidden: int = 0  # 0: 4 * d_model


@dataclass
class RWKV7Config:
    vocab_size: int
    d_model: int
    n_layers: int
    head_size: int = 64
    ffn_hidden: int = 0  # 0: 4 * d_model
    decay_lora: int = 0  # 0: RWKV-7's suggested sizes (at least 32)
    a_lora: int = 0
    v_lora: int = 0
    gate_lora: int = 0


def _rwkv_lm(vocab_size: int, d_model: int, n_layers: int, mixer, mlp) -> CausalLM:
    lm = CausalLM(vocab_size, d_model, n_layers, mixer_factory=mixer, mlp_factory=mlp, norm="layer",
                  tie_weights=False, embed_norm=True)  # fmt: skip
    with torch.no_grad():  # RWKV-LM: tiny embeddings (ln0 rescales them), orthogonal head
        nn.init.uniform_(lm.embed.weight, -1e-4, 1e-4)
        scale = 0.5 * math.sqrt(vocab_size / d_model) if vocab_size > d_model else 0.5
        lm.head.weight.copy_(nn.init.orthogonal_(torch.empty(vocab_size, d_model), gain=scale))
    return lm


@register("rwkv4", RWKV4Config)
def build_rwkv4(cfg: RWKV4Config) -> CausalLM:
    n = cfg.n_layers
    return _rwkv_lm(cfg.vocab_size, cfg.d_model, n, lambda i: TimeMix4(cfg.d_model, i, n),
                    lambda i: ChannelMix4(cfg.d_model, i, n, cfg.ffn_hidden))  # fmt: skip


@register("rwkv7", RWKV7Config)
def build_rwkv7(cfg: RWKV7Config) -> CausalLM:
    n, lora = cfg.n_layers, {k: v for k, v in asdict(cfg).items() if k.endswith("lora")}
    return _rwkv_lm(cfg.vocab_size, cfg.d_model, n,
                    lambda i: TimeMix7(cfg.d_model, i, n, cfg.head_size, **lora),
                    lambda i: ChannelMix7(cfg.d_model, i, n, cfg.ffn_hidden))  # fmt: skip
