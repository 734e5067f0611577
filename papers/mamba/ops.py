"""Selective scan (the S6 layer) of Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective
State Spaces", arXiv 2312.00752.

Continuous SSM (Eq. 1a, 1b), per channel d and state n:   h'(t) = A h(t) + B x(t),   y(t) = C h(t)
Zero-order-hold discretisation (Eq. 4):                   Ā = exp(Δ A),   B̄ = (ΔA)^-1 (exp(ΔA) - I) ΔB
Recurrence (Eq. 2a, 2b):                                  h_t = Ā_t h_{t-1} + B̄_t x_t,   y_t = C_t h_t
Selection (Sec. 3.2, Algorithm 2): Δ, B, C depend on the time step t; Δ = softplus(Δ_raw + bias).

As in the official kernels, B̄ uses the first-order (Euler) approximation B̄_t ≈ Δ_t B_t, so

    h_t[b, d, n] = exp(Δ_t[b, d] A[d, n]) h_{t-1}[b, d, n] + Δ_t[b, d] B_t[b, n] u_t[b, d]
    y_t[b, d]    = sum_n C_t[b, n] h_t[b, d, n] + D[d] u_t[b, d]        (D: the SSM's skip term, as in S4)
    out          = y * SiLU(z)                                          (gate of the Mamba block, Fig. 3)

Signature, shapes and semantics follow mamba_ssm's ``selective_scan_ref`` (real-valued, ungrouped case):

    u, delta, z: (batch, d, L)    A: (d, n)    D, delta_bias: (d,)
    B, C: (d, n) time-invariant (S4-style) or (batch, n, L) selective (S6)
    out: (batch, d, L) in u's dtype; last_state: (batch, d, n)

Math is done in fp32, or in fp64 for fp64 inputs (so that tests can compare to ~1e-10).

A time-invariant SSM (Δ, B, C fixed, as in S4) is also a convolution (Eq. 3a, 3b), with B̄ ≈ Δ B as above:

    K̄[d, k] = sum_n C[d, n] exp(k Δ[d] A[d, n]) Δ[d] B[d, n]   (k = 0 .. L-1)      (Eq. 3a)
    y[b, d, t] = sum_{k <= t} K̄[d, k] u[b, d, t - k]                              (Eq. 3b)

``selective_scan_ref`` is the readable loop, one time step at a time. ``selective_scan`` is the fast path:
mamba_ssm's fused kernel (the hardware-aware scan of Sec. 3.3.2) when it is installed and the inputs live on a
GPU, otherwise ``ChunkedSelectiveScan``, a two-level chunked scan in plain PyTorch with a hand-written backward:
O(L) work in O(sqrt L) sequential steps, an order of magnitude faster than the reference on CPU (bench.py).
Without gradients (evaluation, generation) it runs ``inference_scan``: the same chunked scan block by block of
the time axis, each block entering with the last one's state, in a fraction of the memory at long lengths.
``ssm_convolution`` is the fast path of the time-invariant case (Δ constant in time, B and C (d, n)): the
kernel of Eq. 3a, then the causal convolution of Eq. 3b by FFT, with no sequential step at all; autograd
gives its gradients. It equals ``selective_scan_ref`` with Δ expanded to (batch, d, L) (the tests).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

try:  # optional, CUDA-only
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
def _sum_n(x: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """sum_n M[..., n, :] x[..., n, d] -> (..., d) for x (..., n, d) and M = B_t or C_t."""
    if M.shape[-1] == 1:  # selective (..., n, 1): a batch of (1, n) @ (n, d) products, no temporary
        return (M.transpose(-1, -2) @ x).squeeze(-2)
    return (x * M).sum(-2)  # time-invariant (n, d)


def _sum_d(x: torch.Tensor, v: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Gradient of M = B_t or C_t from the term sum_n,d M[n, :] x[..., n, d] v[..., 0, d]: M's shape."""
    if M.shape[-1] == 1:  # selective: a batch of (n, d) @ (d, 1) products
        return x @ v.transpose(-1, -2)
    return (x * v).sum_to_size(M.shape)  # time-invariant: summed over the chunks and the batch


def _chunked_states(delta, u, A, B, h_in=None):
    """The forward phases of ``ChunkedSelectiveScan`` (layout and phases 1-3 in its docstring), started from the
    state ``h_in`` (b, n, d) (None: zero): Ā (T, K, b, n, d), every state h_t (T, K, b, n, d) and the state
    entering each chunk h0 (K, b, n, d)."""
    A_bar = (delta[..., None, :] * A).exp_()  # (T, K, b, n, d)   Eq. 4
    hs = (delta * u)[..., None, :] * B  # (T, K, b, n, d)   B̄_t x_t = Δ_t u_t B_t, turned into h_t in place
    T, K = delta.shape[:2]
    end = hs[0].clone()  # (K, b, n, d)   phase 1: each chunk's end state from zero
    for j in range(1, T):
        end = torch.addcmul(hs[j], A_bar[j], end)
    decay = torch.exp(delta.sum(0)[..., None, :] * A)  # (K, b, n, d)   Ā over a whole chunk
    h0 = torch.zeros_like(end)  # (K, b, n, d)   phase 2: the state entering each chunk
    if h_in is not None:
        h0[0] = h_in
    for k in range(1, K):
        torch.addcmul(end[k - 1], decay[k - 1], h0[k - 1], out=h0[k])
    hs[0].addcmul_(A_bar[0], h0)  # phase 3: every chunk rerun from its entering state
    for j in range(1, T):
        hs[j].addcmul_(A_bar[j], hs[j - 1])  # Eq. 2a
    return A_bar, hs, h0


class ChunkedSelectiveScan(torch.autograd.Function):
    """y, h_last = S6 core (Eq. 2a, 2b, 4) on a time axis cut into K chunks of T steps, hand-written backward.

    Inputs are laid out (step in chunk j, chunk k, batch, ...), time t = k*T + j, with the state index n
    before the channel d so that the innermost (vectorised) axis is d: delta, u (T, K, b, d); A (n, d);
    B, C (T, K, b, n, 1) (selective) or (T, 1, 1, n, d) (time-invariant, expanded).
    Outputs y (T, K, b, d) and h_last (b, n, d).

    Forward: Ā_t and B̄_t x_t for every t at once, then a two-level scan, each level a short sequential
    loop over big tensors, that turns B̄_t x_t into h_t in place:
      1. the end state of every chunk started from zero, all K chunks in parallel                T steps
      2. the state entering chunk k:  H_k = exp(A sum_{t in chunk k-1} Δ_t) H_{k-1} + end_{k-1}   K steps
         (the decay over a whole chunk from its sum of Δ: log space, only products of Ā otherwise,
         never a division by a cumulative product, so as stable as the sequential recurrence)
      3. rerun all chunks from their entering states: h_t = Ā_t h_{t-1} + B̄_t x_t                 T steps
    i.e. 2T + K ~ 3 sqrt(L/2) sequential steps; then y_t = C_t h_t for every t at once.
    Backward: the same three phases backwards in time on the adjoint g_t = dLoss/dh_t (total) and
    G_t = Ā_t g_t, using
        g_t = C_t dy_t + G_{t+1},   dLoss/d(B̄_t x_t) = g_t,   dLoss/dlog Ā_t = G_t h_{t-1},
    and every gradient is built for one step j of all K chunks at a time: Ā and h, stored by the forward
    (exp is the costliest op on CPU), are the only tensors of size (T, K, b, n, d).
    """

    @staticmethod
    def forward(ctx, delta, u, A, B, C):
        A_bar, hs, h0 = _chunked_states(delta, u, A, B)
        ctx.save_for_backward(delta, u, A, B, C, A_bar, hs, h0)
        return _sum_n(hs, C), hs[-1, -1].clone()  # Eq. 2b: y (T, K, b, d), h_last (b, n, d)

    @staticmethod
    def backward(ctx, dy, dh_last):
        delta, u, A, B, C, A_bar, hs, h0 = ctx.saved_tensors
        T, K = delta.shape[:2]
        dy, du = dy[..., None, :], (delta * u)[..., None, :]  # (T, K, b, 1, d)
        G_end = torch.zeros_like(h0)  # (K, b, n, d)   G at the first step of each chunk, from zero after it
        for j in reversed(range(T)):
            G_end = A_bar[j] * torch.addcmul(G_end, dy[j], C[j])
        decay = torch.exp(delta.sum(0)[..., None, :] * A)  # (K, b, n, d)
        G = torch.empty_like(h0)  # (K, b, n, d)   G entering each chunk from the right
        G[-1] = dh_last
        for k in reversed(range(K - 1)):
            torch.addcmul(G_end[k + 1], decay[k + 1], G[k + 1], out=G[k])
        grad_delta, grad_u = torch.empty_like(delta), torch.empty_like(u)
        grad_A, grad_B, grad_C = torch.zeros_like(h0), [], []  # grad_A summed over (K, b) at the end
        for j in reversed(range(T)):
            g = torch.addcmul(G, dy[j], C[j])  # (K, b, n, d)   dLoss/dh_t = dLoss/d(B̄_t x_t)
            G = A_bar[j] * g
            grad_log_A_bar = G * (hs[j - 1] if j > 0 else h0)  # (K, b, n, d)
            grad_du = _sum_n(g, B[j])  # (K, b, d)
            torch.addcmul((grad_log_A_bar * A).sum(-2), grad_du, u[j], out=grad_delta[j])
            torch.mul(grad_du, delta[j], out=grad_u[j])
            grad_A.addcmul_(grad_log_A_bar, delta[j, ..., None, :])
            grad_B.append(_sum_d(g, du[j], B[j]))
            grad_C.append(_sum_d(hs[j], dy[j], C[j]))
        grad_B, grad_C = torch.stack(grad_B[::-1]), torch.stack(grad_C[::-1])
        return grad_delta, grad_u, grad_A.sum((0, 1)), grad_B, grad_C


def _chunked(t: torch.Tensor, K: int, T: int) -> torch.Tensor:
    """(batch, c, L) -> (T, K, batch, c), time t = k*T + j zero-padded to K*T steps (Δ = 0: h unchanged)."""
    t = F.pad(t, (0, K * T - t.shape[-1])).permute(2, 0, 1)  # (K*T, batch, c)
    return t.view(K, T, *t.shape[1:]).transpose(0, 1).contiguous()


def _unchunked(y: torch.Tensor, length: int) -> torch.Tensor:
    """The inverse of ``_chunked`` for an output: (T, K, batch, c) -> (L, batch, c), the padding dropped."""
    T, K = y.shape[:2]
    return y.transpose(0, 1).reshape(K * T, *y.shape[2:])[:length]


def selective_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False
):
    """Same contract as ``selective_scan_ref``; fused CUDA kernel if available, else the chunked scan
    (``inference_scan`` when no input needs a gradient)."""
    if _fused_selective_scan is not None and u.is_cuda and u.dtype != torch.float64:
        return _fused_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    dtype_in, dtype = u.dtype, _compute_dtype(u.dtype)
    length = u.shape[-1]
    u, A, B, C = u.to(dtype), A.to(dtype), B.to(dtype), C.to(dtype)
    delta = _softplus_delta(delta, delta_bias, delta_softplus, dtype)  # (batch, d, L)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C)):
        T, K = _chunk_shape(length)
        y, last_state = ChunkedSelectiveScan.apply(
            _chunked(delta, K, T), _chunked(u, K, T), A.t().contiguous(), _state_layout(B, K, T),
            _state_layout(C, K, T),
        )  # fmt: skip
        y = _unchunked(y, length).permute(1, 2, 0).contiguous()  # (batch, d, L)
    else:
        y, last_state = inference_scan(u, delta, A, B, C)
    out = _skip_and_gate(y, u, D, z).to(dtype_in)
    return (out, last_state.transpose(1, 2)) if return_last_state else out


def _chunk_shape(length: int) -> tuple[int, int]:
    """T steps a chunk, K chunks: T ~ sqrt(L / 2) balances the 2T steps of phases 1, 3 with the K of phase 2."""
    T = max(1, round(math.sqrt(length / 2)))
    return T, -(-length // T)


def _state_layout(M: torch.Tensor, K: int, T: int) -> torch.Tensor:
    """B or C in the chunked layout: (batch, n, L) -> (T, K, batch, n, 1);   (d, n) -> (T, 1, 1, n, d)."""
    return _chunked(M, K, T)[..., None] if M.dim() == 3 else M.t().expand(T, 1, 1, *M.t().shape)


INFERENCE_BLOCK = 256  # steps a block of ``inference_scan``: its working set is (block, batch, n, d)


def inference_scan(u, delta, A, B, C, block: int = INFERENCE_BLOCK):
    """The fast path without gradients: y (batch, d, L) before D and the gate, and h_last (batch, n, d), for
    u, delta (batch, d, L) in the compute dtype (delta after the softplus), A (d, n), B, C as in
    ``selective_scan_ref``. The time axis is cut into blocks of ``block`` steps, each a chunked scan (phases
    1-3 of ``ChunkedSelectiveScan``) entering with the previous block's last state: the same recurrence
    (Eq. 2a, 2b), but no tensor of the whole length's (L, batch, n, d) states: at 2^14 steps and batch 8 a
    call adds 0.27 GB to the peak memory instead of 2.3 GB. Speed: the same where the allocator reuses big
    blocks (nox's MALLOC_* settings; bench.py), 1.5x faster (2.15 vs 3.19 s, one Intel Xeon thread) where it
    maps fresh pages for every big tensor (glibc's defaults)."""
    length = u.shape[-1]
    A_t, h, ys = A.t().contiguous(), None, []  # A_t (n, d)
    for start in range(0, length, block):
        stop = min(start + block, length)
        T, K = _chunk_shape(stop - start)
        B_blk, C_blk = (M[..., start:stop] if M.dim() == 3 else M for M in (B, C))  # (d, n): time-invariant
        blk_delta, blk_u = _chunked(delta[..., start:stop], K, T), _chunked(u[..., start:stop], K, T)
        _, hs, _ = _chunked_states(blk_delta, blk_u, A_t, _state_layout(B_blk, K, T), h)  # hs (T, K, b, n, d)
        h = hs[-1, -1]  # (batch, n, d)   the padded steps past the end have Δ = 0: h unchanged
        y = _sum_n(hs, _state_layout(C_blk, K, T))  # (T, K, batch, d)   Eq. 2b
        ys.append(_unchunked(y, stop - start))  # (steps, batch, d)
    return torch.cat(ys).permute(1, 2, 0).contiguous(), h.clone()  # (batch, d, L), (batch, n, d): not a view


# ---- convolution mode of a time-invariant SSM (Eq. 3a, 3b) ---------------------------------------------
def ssm_kernel(delta, A, B, C, length: int) -> torch.Tensor:
    """K̄ = (C B̄, C Ā B̄, ..., C Ā^(L-1) B̄) of every channel (Eq. 3a): (d, L), for delta (d,), A, B, C (d, n)."""
    k = torch.arange(length, dtype=A.dtype, device=A.device)  # (L,)
    A_bar_pow = torch.exp((delta[:, None] * A)[..., None] * k)  # (d, n, L)   Ā^k = exp(k Δ A), Eq. 4
    return torch.einsum("dn,dnl->dl", C * delta[:, None] * B, A_bar_pow)  # (d, L)   C Ā^k B̄, B̄ ≈ Δ B


def ssm_convolution(u, delta, A, B, C, D=None, z=None):
    """A time-invariant SSM as one causal convolution y = u * K̄ (Eq. 3b), by FFT: O(L log L), no time loop.

    u, z: (batch, d, L)   delta: (d,) the step Δ > 0 (after any softplus)   A, B, C: (d, n)
    -> (batch, d, L) in u's dtype; the same as ``selective_scan_ref`` with Δ constant in time."""
    dtype_in, dtype = u.dtype, _compute_dtype(u.dtype)
    u, delta, A, B, C = (t.to(dtype) for t in (u, delta, A, B, C))
    length = u.shape[-1]
    n_fft = 1 << (2 * length - 1).bit_length()  # >= 2L - 1: the linear, not circular, convolution
    kernel = ssm_kernel(delta, A, B, C, length)  # (d, L)
    spectrum = torch.fft.rfft(u, n=n_fft) * torch.fft.rfft(kernel, n=n_fft)  # (batch, d, n_fft // 2 + 1)
    y = torch.fft.irfft(spectrum, n=n_fft)[..., :length]  # (batch, d, L)   Eq. 3b, causal
    return _skip_and_gate(y, u, D, z).to(dtype_in)
