"""Selective scan (the S6 layer) of Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces", arXiv 2312.00752.

Continuous SSM (Eq. 1a, 1b), per channel d and state n:   h'(t) = A h(t) + B x(t),   y(t) = C h(t)
Zero-order-hold discretisation (Eq. 4):                   Ā = exp(Δ A),   B̄ = (ΔA)^-1 (exp(ΔA) - I) ΔB
Recurrence (Eq. 2a, 2b):                                  h_t = Ā_t h_{t-1} + B̄_t x_t,   y_t = C_t h_t
Selection (Sec. 3.2, Algorithm 2): Δ, B, C depend on the time step t; Δ = softplus(Δ_raw + bias).

As in the official kernels, B̄ uses the first-order (Euler) approximation B̄_t ≈ Δ_t B_t, so

    h_t[b, d, n] = exp(Δ_t[b, d] A[d, n]) h_{t-1}[b, d, n] + Δ_t[b, d] B_t[b, n] u_t[b, d]
    y_t[b, d]    = sum_n C_t[b, n] h_t[b, d, n] + D[d] u_t[b, d]        (D: skip connection, Sec. 3.4)
    out          = y * SiLU(z)                                          (gate of the Mamba block, Fig. 3)

Signature, shapes and semantics follow mamba_ssm's ``selective_scan_ref`` (real-valued, ungrouped case):

    u, delta, z: (batch, d, L)    A: (d, n)    D, delta_bias: (d,)
    B, C: (d, n) time-invariant (S4-style) or (batch, n, L) selective (S6)
    out: (batch, d, L) in u's dtype; last_state: (batch, d, n)

Math is done in fp32, or in fp64 for fp64 inputs.

``selective_scan_ref`` is the readable sequential loop. ``selective_scan`` is the fast path: mamba_ssm's fused
CUDA kernel when it is installed and the inputs live on a GPU, otherwise a blocked two-level scan in plain
PyTorch with a hand-written backward (``LinearScan``): O(L) work in O(sqrt L) sequential steps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

try:  # the fused, hardware-aware kernel of Sec. 3.3.2; optional and CUDA-only
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _fused_selective_scan
except (ImportError, OSError):
    _fused_selective_scan = None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # fp16 / bf16 / fp32 -> fp32, fp64 -> fp64


def _softplus_delta(delta, delta_bias, delta_softplus, dtype):
    delta = delta.to(dtype)  # (batch, d, L)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    return F.softplus(delta) if delta_softplus else delta


def _skip_and_gate(y, u, D, z):
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * u  # (batch, d, L)
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y


def selective_scan_ref(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """Reference: one step of Eq. 2a / 2b per time step, written for reading, not for speed."""
    dtype_in, dtype = u.dtype, _compute_dtype(u.dtype)
    u, A, B, C = u.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype)
    delta = _softplus_delta(delta, delta_bias, delta_softplus, dtype)  # (batch, d, L)
    batch, _, length = u.shape
    h = u.new_zeros(batch, A.shape[0], A.shape[1])  # (batch, d, n)
    ys = []
    for t in range(length):
        A_bar = torch.exp(delta[:, :, t, None] * A)  # (batch, d, n)   Eq. 4, zero-order hold
        B_t = B[:, None, :, t] if B.dim() == 3 else B  # (batch, 1, n) or (d, n)
        C_t = C[:, None, :, t] if C.dim() == 3 else C  # (batch, 1, n) or (d, n)
        Bu_bar = (delta[:, :, t] * u[:, :, t])[:, :, None] * B_t  # (batch, d, n)   B̄_t x_t with B̄ ≈ Δ B
        h = A_bar * h + Bu_bar  # (batch, d, n)   Eq. 2a
        ys.append((h * C_t).sum(-1))  # (batch, d)   Eq. 2b
    y = torch.stack(ys, dim=-1)  # (batch, d, L)
    out = _skip_and_gate(y, u, D, z).to(dtype_in)
    return (out, h) if return_last_state else out


# ---- fast path ------------------------------------------------------------------------------------------
def _blocked_scan(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """h_t = a_t h_{t-1} + x_t along dim 0 with h_{-1} = 0; a, x, h: (L, M), a_0 is never read.

    Reduce-then-scan over K chunks of T ≈ sqrt(L/2) steps (the first K*T steps; the rest run one by one):
      1. end state of every chunk started from zero, all chunks in parallel        T steps on (K, M)
      2. carry across chunks: H_k = (prod_j a_{k,j}) H_{k-1} + end_k                 K steps on (M,)
      3. rerun every chunk from its true initial state H_{k-1}, writing h           T steps on (K, M)
    Only products of the a_t are formed (no division by a cumulative product, no exp of a positive sum),
    so it is as stable as the sequential recurrence.
    """
    length = a.shape[0]
    T = max(1, round(math.sqrt(length / 2)))
    K = length // T
    a_blk, x_blk = a[: K * T].view(K, T, -1), x[: K * T].view(K, T, -1)  # (K, T, M)
    end = x_blk[:, 0].clone()  # (K, M)
    for j in range(1, T):
        end = torch.addcmul(x_blk[:, j], a_blk[:, j], end)
    decay = a_blk.prod(dim=1)  # (K, M)   Ā accumulated over a whole chunk
    for k in range(1, K):
        end[k].addcmul_(decay[k], end[k - 1])  # end[k] is now H_k, the state after chunk k
    h = torch.empty_like(x)
    h_blk = h[: K * T].view(K, T, -1)  # (K, T, M)
    h_blk[:, 0] = x_blk[:, 0]
    h_blk[1:, 0].addcmul_(a_blk[1:, 0], end[:-1])
    for j in range(1, T):
        torch.addcmul(x_blk[:, j], a_blk[:, j], h_blk[:, j - 1], out=h_blk[:, j])
    for t in range(K * T, length):
        torch.addcmul(x[t], a[t], h[t - 1], out=h[t])
    return h


class LinearScan(torch.autograd.Function):
    """h = scan(log_a, x): h_t = exp(log_a_t) h_{t-1} + x_t along dim 0, h_{-1} = 0; (L, M) -> (L, M).

    Backward (adjoint recurrence, run backwards in time with the same blocked scan):
        g_t = dLoss/dh_t + a_{t+1} g_{t+1},   dLoss/dx_t = g_t,   dLoss/dlog_a_t = g_t a_t h_{t-1}
    """

    @staticmethod
    def forward(ctx, log_a, x):
        a = log_a.exp()  # (L, M)
        h = _blocked_scan(a, x)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad_h):
        a, h = ctx.saved_tensors
        a_rev = a.flip(0).roll(1, dims=0)  # a_rev[s] = a[L - s]: the factor multiplying g_{t+1}, reversed
        g = _blocked_scan(a_rev, grad_h.flip(0)).flip(0)  # (L, M)
        grad_log_a = torch.zeros_like(g)
        torch.mul(g[1:] * a[1:], h[:-1], out=grad_log_a[1:])
        return grad_log_a, g


def _time_major(t: torch.Tensor) -> torch.Tensor:
    return t.permute(2, 0, 1).contiguous()  # (batch, c, L) -> (L, batch, c)


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """Same contract as ``selective_scan_ref``; fused CUDA kernel if available, else the blocked scan."""
    if _fused_selective_scan is not None and u.is_cuda and u.dtype != torch.float64:
        return _fused_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    dtype_in, dtype = u.dtype, _compute_dtype(u.dtype)
    batch, d, length = u.shape
    n = A.shape[1]
    u, A, B, C = u.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype)
    delta = _softplus_delta(delta, delta_bias, delta_softplus, dtype)  # (batch, d, L)
    log_A_bar = _time_major(delta)[..., None] * A  # (L, batch, d, n)   log Ā_t, Eq. 4
    B_t = _time_major(B)[:, :, None, :] if B.dim() == 3 else B  # (L, batch, 1, n) or (d, n)
    Bu_bar = _time_major(delta * u)[..., None] * B_t  # (L, batch, d, n)   B̄_t x_t
    h = LinearScan.apply(log_A_bar.view(length, -1), Bu_bar.view(length, -1)).view(length, batch, d, n)
    if C.dim() == 3:
        y = torch.matmul(h, _time_major(C)[..., None])[..., 0]  # (L, batch, d)   Eq. 2b
    else:
        y = (h * C).sum(-1)  # (L, batch, d)
    out = _skip_and_gate(y.permute(1, 2, 0), u, D, z).to(dtype_in)  # (batch, d, L)
    return (out, h[-1]) if return_last_state else out
