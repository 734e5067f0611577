"""WKV operators of RWKV-4 (Peng et al. 2023, "RWKV: Reinventing RNNs for the Transformer Era", arXiv 2305.13048)
and RWKV-7 (Peng et al. 2025, "RWKV-7 "Goose" with Expressive Dynamic State Evolution", arXiv 2503.14456).

RWKV-4 (Sec. 3.1.2, the WKV operator), per channel, with the bonus u and w = -w' < 0, the log of the per-step
decay e^{-w'} of the paper (the model passes w = -exp(time_decay)):

    wkv_t = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t) / (sum_{i<t} e^{(t-1-i) w + k_i} + e^{u + k_t})

    w, u: (C,)   k, v: (B, T, C)   y = wkv: (B, T, C)
    state (aa, bb, pp), each (B, C):  aa = sum_i e^{e_i - pp} v_i,  bb = sum_i e^{e_i - pp},  pp = max_i e_i,
    over the exponents e_i = k_i + (T-1-i) w of the tokens seen (the official kernel's and the `rwkv` package's
    numerically stable form); zero state: aa = bb = 0, pp = -1e38.

RWKV-7 (Sec. 4, the generalised delta rule), per head, row vectors r_t, w_t, k_t, v_t, a_t, b_t of size N:

    S_t = S_{t-1} (diag(e^{w_t}) + a_t^T b_t) + v_t^T k_t,     y_t = S_t r_t

    r, w, k, v, a, b: (B, T, H, N), w <= 0 the log decay   S: (B, H, N, N) [value dim, key dim]   y: (B, T, H, N)
    (the model passes a = -κ̂_t, b = κ̂_t ⊙ a_t, with κ̂ the unit-normalised removal key and a_t the in-context
    learning rate).

Math is done in fp32, or fp64 for fp64 inputs; outputs come back in the input dtype, states in the compute dtype.
Passing the returned state to the next call continues the sequence: two calls equal one.

``wkv4_ref`` / ``wkv7_ref`` are the sequential recurrences, one token per step. ``wkv4`` / ``wkv7`` are exact
chunked forms in plain PyTorch (any device; autograd, with hand-written backward passes for the two inner loops),
an order of magnitude faster than the references for forward + backward on one CPU core at T = 1024:

* ``wkv4`` cuts time into K chunks of T_c tokens (default 32). wkv_t is a ratio of two sums of e^{exponent}
  over the earlier tokens of its chunk (k_i + (t-1-i) w), the current one (u + k_t) and the state entering the
  chunk (pp_in + t w). Each row t is shifted by its largest exponent before exp, so every term is <= 1 and the
  denominator >= 1: no overflow, no 0/0, whatever k and w. The pairs (t, i) inside chunks go lag by lag,
  d = t-1-i, all chunks at once (``_CausalDecaySums``). The states entering the chunks and the final state come
  from the same construction one level up, without a loop: the summaries (aa, bb, pp) of every chunk run from
  the zero state, and the incoming state, weighted by exponents pp_c + (tokens from chunk c's end) w in a masked
  (K+1) x K matrix shifted by its row maxima.
* ``wkv7`` cuts time into chunks of L tokens (default 16). With g_t = w_1 + ... + w_t the cumulative log decay
  inside the chunk and z_t = S_{t-1} a_t^T, unrolling the recurrence gives, for chunk rows t, s = 1..L,

      S_t = S_0 diag(e^{g_t}) + sum_{s<=t} (v_s^T k_s + z_s^T b_s) diag(e^{g_t - g_s})
      Z = (a ⊙ e^{g_{t-1}}) S_0^T + M_ak V + M_ab Z,     Y = (r ⊙ e^{g_t}) S_0^T + M_rk V + M_rb Z

  with M_xy[t, s] = sum_j x_t[j] y_s[j] e^{g_t[j] - g_s[j]} for s <= t (for x = a: e^{g_{t-1} - g_s}, s < t),
  built lag by lag (``_DecayedPairs``): always exp of a difference of cumulative log decays over s..t, never a
  division by a cumulative decay that could underflow. Solving the unit lower triangular system
  (I - M_ab) Z = ... (the WY / UT transform of the product of the (diag(e^{w_t}) + a_t^T b_t) of a chunk) gives
  Z = W S_0^T + U with W, U independent of S_0, so each chunk is an affine map S_L = S_0 A_c + B_c and its
  outputs Y = (r ⊙ e^{g_t} + M_rb W) S_0^T + M_rk V + M_rb U. Everything is computed for all chunks at once;
  only S <- S A_c + B_c (one matmul per chunk) runs sequentially.

Exponentials of arguments below ``_exp_floor`` (-43.7 in fp32) are taken at the floor: a change of at most
1e-19 relative to the largest term, invisible after rounding, that keeps the CPU off its slow paths for
underflowing exp and subnormal numbers (up to 30x slower).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

ZERO_PP = -1e38  # pp of the empty RWKV-4 state: e^{pp} = 0 without an inf that would make NaNs in differences


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)  # fp16 / bf16 / fp32 -> fp32, fp64 -> fp64


def _v4_state(state, k: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    if state is None:
        zeros = k.new_zeros(k.shape[0], k.shape[2], dtype=dtype)  # (B, C)
        return zeros, zeros, torch.full_like(zeros, ZERO_PP)
    return tuple(s.to(dtype) for s in state)


# ---- RWKV-4 -----------------------------------------------------------------------------------------------
def wkv4_ref(w, u, k, v, state=None) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Reference: the wkv_t recurrence one token at a time, in the running-maximum-exponent form."""
    dtype_in, dtype = v.dtype, _compute_dtype(v.dtype)
    w, u, k, v = w.to(dtype), u.to(dtype), k.to(dtype), v.to(dtype)
    aa, bb, pp = _v4_state(state, k, dtype)  # (B, C) each
    ys = []
    for t in range(k.shape[1]):
        kt, vt = k[:, t], v[:, t]  # (B, C)
        p = torch.maximum(pp, u + kt)  # output: the state's terms and the bonus token e^{u + k_t}
        e1, e2 = torch.exp(pp - p), torch.exp(u + kt - p)
        ys.append((e1 * aa + e2 * vt) / (e1 * bb + e2))  # wkv_t
        p = torch.maximum(pp + w, kt)  # state update: decay everything by e^w, add e^{k_t} v_t
        e1, e2 = torch.exp(pp + w - p), torch.exp(kt - p)
        aa, bb, pp = e1 * aa + e2 * vt, e1 * bb + e2, p
    return torch.stack(ys, dim=1).to(dtype_in), (aa, bb, pp)  # y (B, T, C)


def _exp_floor(dtype: torch.dtype) -> float:
    return 0.5 * math.log(torch.finfo(dtype).tiny)  # -43.7 in fp32 (e^-43.7 = 1e-19), -354 in fp64 (1e-154)


def _exp(x: Tensor) -> Tensor:
    """exp(x) of a log ratio x <= 0 (a term relative to the largest, or a decay), x raised to the floor first."""
    return x.clamp(min=_exp_floor(x.dtype)).exp()


class _CausalDecaySums(torch.autograd.Function):
    """The within-chunk part of wkv4 for all chunks at once, with a hand-written backward.

    Inputs k, v, m_out: (B, Tc, K, C) (step in chunk, chunk), w: (C,). With the exponents e[t, i] = k_i + (t-1-i) w
    for i < t and m_t = max(m_out_t, max_i e[t, i]), returns num_t = sum_{i<t} e^{e[t, i] - m_t} v_i,
    den_t = sum_{i<t} e^{e[t, i] - m_t} and m, all (B, Tc, K, C). m is a shift common to every term of wkv_t, so
    it gets no gradient. The pairs (t, i) go by lag d = t-1-i, all pairs of a lag at once: slices, no masks.
    """

    @staticmethod
    def forward(ctx, k, v, w, m_out):
        Tc = k.shape[1]
        m, run = m_out.clone(), k[:, 0]  # run: max_{i<t} e[t, i], by run_t = max(run_{t-1} + w, k_{t-1})
        for t in range(1, Tc):
            m[:, t] = torch.maximum(m[:, t], run)
            run = torch.maximum(run + w, k[:, t])
        num, den, ps = torch.zeros_like(k), torch.zeros_like(k), []
        for d in range(Tc - 1):  # pairs (t, i) = (i + 1 + d, i), i < Tc - 1 - d
            p = (k[:, : Tc - 1 - d] + d * w).sub_(m[:, d + 1 :])  # (B, Tc-1-d, K, C)   e[t, i] - m_t
            p.clamp_(min=_exp_floor(p.dtype)).exp_()  # as _exp
            num[:, d + 1 :].addcmul_(p, v[:, : Tc - 1 - d])
            den[:, d + 1 :].add_(p)
            ps.append(p)
        ctx.save_for_backward(v, *ps)
        ctx.mark_non_differentiable(m)
        return num, den, m

    @staticmethod
    def backward(ctx, d_num, d_den, d_m):
        v, *ps = ctx.saved_tensors
        d_k, d_v, d_w = torch.zeros_like(v), torch.zeros_like(v), v.new_zeros(v.shape[-1])
        for d, p in enumerate(ps):
            n = p.shape[1]
            d_v[:, :n].addcmul_(p, d_num[:, d + 1 :])
            g = torch.addcmul(d_den[:, d + 1 :], d_num[:, d + 1 :], v[:, :n]).mul_(p)  # dLoss / de[t, i]
            d_k[:, :n].add_(g)
            d_w.add_(g.sum((0, 1, 2)), alpha=d)
        return d_k, d_v, d_w, None


def wkv4(w, u, k, v, state=None, chunk_size: int = 32) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Same contract as ``wkv4_ref``: exact chunked form, chunks of ``chunk_size`` tokens (module doc)."""
    dtype_in, dtype = v.dtype, _compute_dtype(v.dtype)
    w, u, k, v = w.to(dtype), u.to(dtype), k.to(dtype), v.to(dtype)
    aa0, bb0, pp0 = _v4_state(state, k, dtype)  # (B, C) each
    batch, length, channels = k.shape
    Tc = max(1, min(chunk_size, length))
    K = -(-length // Tc)

    def chunks(x):  # (B, T, C) -> (B, Tc, K, C), time t = k * Tc + j at [:, j, k], zero-padded
        return F.pad(x, (0, 0, 0, K * Tc - length)).view(batch, K, Tc, channels).transpose(1, 2).contiguous()

    kc, vc = chunks(k), chunks(v)
    j = torch.arange(Tc, device=k.device)
    starts = torch.arange(K, device=k.device) * Tc  # (K,)
    ends = (starts + Tc).clamp(max=length)  # (K,)   the last chunk may be short

    # every chunk from the zero state: exponents k_j + (end - 1 - j) w of its tokens j < end
    dist = (ends - starts - 1 - j[:, None])[..., None]  # (Tc, K, 1)
    e = (kc + dist * w).masked_fill(dist < 0, -torch.inf)  # (B, Tc, K, C)
    pp_c = e.amax(1)  # (B, K, C)
    p = _exp(e - pp_c[:, None]) * (dist >= 0)  # (B, Tc, K, C)
    aa_c, bb_c = (p * vc).sum(1), p.sum(1)  # (B, K, C)

    # states at the chunk starts and at the end: the incoming state and the summaries of all earlier chunks
    targets = torch.cat([starts, starts.new_tensor([length])])  # (K+1,)
    gap = (targets[:, None] - ends)[..., None]  # (K+1, K, 1)   tokens from chunk c's end to the target
    e = (pp_c[:, None] + gap * w).masked_fill(gap < 0, -torch.inf)  # (B, K+1, K, C)
    e0 = pp0[:, None] + targets[:, None] * w  # (B, K+1, C)
    pp_in = torch.maximum(e.amax(2), e0)  # (B, K+1, C)
    p, p0 = _exp(e - pp_in[:, :, None]) * (gap >= 0), _exp(e0 - pp_in)
    aa_in = (p * aa_c[:, None]).sum(2) + p0 * aa0[:, None]  # (B, K+1, C)
    bb_in = (p * bb_c[:, None]).sum(2) + p0 * bb0[:, None]

    # outputs: exponents k_i + (t-1-i) w (i < t), u + k_t, pp_in + t w, each row shifted by its maximum
    e_u = u + kc  # (B, Tc, K, C)
    e_s = pp_in[:, None, :K] + j[:, None, None] * w  # (B, Tc, K, C)
    num, den, m = _CausalDecaySums.apply(kc, vc, w, torch.maximum(e_u, e_s).detach())
    p_u, p_s = _exp(e_u - m), _exp(e_s - m)
    num = num + p_u * vc + p_s * aa_in[:, None, :K]
    den = den + p_u + p_s * bb_in[:, None, :K]
    y = (num / den).transpose(1, 2).reshape(batch, K * Tc, channels)[:, :length]
    return y.to(dtype_in), (aa_in[:, -1], bb_in[:, -1], pp_in[:, -1])


# ---- RWKV-7 -----------------------------------------------------------------------------------------------
def wkv7_ref(r, w, k, v, a, b, state=None) -> tuple[Tensor, Tensor]:
    """Reference: S_t = S_{t-1} (diag(e^{w_t}) + a_t^T b_t) + v_t^T k_t, y_t = S_t r_t, one token at a time."""
    dtype_in, dtype = r.dtype, _compute_dtype(r.dtype)
    r, w, k, v, a, b = (x.to(dtype) for x in (r, w, k, v, a, b))
    batch, length, heads, n = r.shape
    S = r.new_zeros(batch, heads, n, n) if state is None else state.to(dtype)  # (B, H, N_v, N_k)
    ys = []
    for t in range(length):
        rt, wt, kt, vt, at, bt = (x[:, t, :, :, None] for x in (r, w, k, v, a, b))  # (B, H, N, 1)
        S = S * wt.exp().mT + (S @ at) @ bt.mT + vt @ kt.mT  # (B, H, N, N)
        ys.append((S @ rt).squeeze(-1))  # (B, H, N)
    return torch.stack(ys, dim=1).to(dtype_in), S  # y (B, T, H, N)


class _DecayedPairs(torch.autograd.Function):
    """M[x, y, t, s] = sum_j xs[t, x, j] e^{g_t[j] - g_s[j]} ys[s, y, j] for s <= t (0 above the diagonal).

    xs, ys: (..., L, 2, N), g: (..., L, N) -> M: (..., 2, 2, L_t, L_s), with a hand-written backward. The pairs go
    by lag d = t - s, all s of a lag at once (the d-th subdiagonal of M): slices, no masks, no division.
    """

    @staticmethod
    def forward(ctx, xs, ys, g):
        L = g.shape[-2]
        M, decays = xs.new_zeros(*g.shape[:-2], 2, 2, L, L), []
        for d in range(L):
            decay = _exp(g[..., d:, :] - g[..., : L - d, :])  # (..., L-d, N)   e^{g_{s+d} - g_s}
            xd = xs[..., d:, :, :] * decay[..., None, :]  # (..., L-d, 2, N)
            M.diagonal(-d, -2, -1).copy_(
                (xd[..., :, None, :] * ys[..., : L - d, None, :, :]).sum(-1).movedim(-3, -1)
            )
            decays.append(decay)
        ctx.save_for_backward(xs, ys, *decays)
        return M

    @staticmethod
    def backward(ctx, d_M):
        xs, ys, *decays = ctx.saved_tensors
        d_xs, d_ys = torch.zeros_like(xs), torch.zeros_like(ys)
        d_g = xs.new_zeros(*xs.shape[:-2], xs.shape[-1])
        for d, decay in enumerate(decays):
            n = decay.shape[-2]
            dm = d_M.diagonal(-d, -2, -1).movedim(-1, -3)  # (..., n, 2, 2)
            x, y = xs[..., d:, :, :], ys[..., :n, :, :]  # (..., n, 2, N)
            xd = x * decay[..., None, :]
            # the 2 x 2 products spelled out: faster than broadcasting or batched matmuls of this shape on CPU
            d_ys[..., :n, :, :] += torch.addcmul(
                dm[..., 0, :, None] * xd[..., 0, None, :], dm[..., 1, :, None], xd[..., 1, None, :]
            )
            dx = torch.addcmul(
                dm[..., :, 0, None] * y[..., None, 0, :], dm[..., :, 1, None], y[..., None, 1, :]
            )
            d_xs[..., d:, :, :] += dx * decay[..., None, :]
            d_diff = torch.addcmul(dx[..., 0, :] * x[..., 0, :], dx[..., 1, :], x[..., 1, :]).mul_(decay)
            d_g[..., d:, :] += d_diff  # d_diff = dLoss / d(g_{s+d} - g_s)
            d_g[..., :n, :] -= d_diff
        return d_xs, d_ys, d_g


def wkv7(r, w, k, v, a, b, state=None, chunk_size: int = 16) -> tuple[Tensor, Tensor]:
    """Same contract as ``wkv7_ref``: exact chunked form, chunks of ``chunk_size`` tokens (module doc)."""
    dtype_in, dtype = r.dtype, _compute_dtype(r.dtype)
    batch, length, heads, n = r.shape
    L = max(1, min(chunk_size, length))
    K = -(-length // L)

    def chunks(x):  # (B, T, H, N) -> (B, H, K, L, N); padding: w = 0, r = k = v = a = b = 0 leave S unchanged
        x = F.pad(x.to(dtype), (0, 0, 0, 0, 0, K * L - length))
        return x.view(batch, K, L, heads, n).permute(0, 3, 1, 2, 4).contiguous()

    r, w, k, v, a, b = (chunks(x) for x in (r, w, k, v, a, b))
    g = w.cumsum(-2)  # (B, H, K, L, N)   g_t, cumulative log decay inside the chunk

    # M_xy[t, s] = sum_j x_t[j] e^{g_t[j] - g_s[j]} y_s[j] (s <= t) for x = r_t and a_{t+1} (the a rows, with
    # e^{g_{t-1} - g_s}, are shifted down by one below), y = k_s and b_s
    xs = torch.stack([r, F.pad(a[..., 1:, :], (0, 0, 0, 1))], dim=-2)  # (B, H, K, L, 2, N)
    M = _DecayedPairs.apply(xs, torch.stack([k, b], dim=-2), g)  # (B, H, K, 2, 2, L_t, L_s)
    M_rk, M_rb = M[..., 0, 0, :, :], M[..., 0, 1, :, :]  # (B, H, K, L_t, L_s)
    M_ak, M_ab = F.pad(M[..., 1, :, :, :], (0, 0, 1, 0))[..., :-1, :].unbind(-3)  # s < t

    # (I - M_ab) Z = (a ⊙ e^{g_{t-1}}) S_0^T + M_ak V  =>  Z = W S_0^T + U
    eye = torch.eye(L, dtype=dtype, device=r.device)
    g_prev = F.pad(g[..., :-1, :], (0, 0, 1, 0))  # g_{t-1}
    rhs = torch.cat([a * _exp(g_prev), M_ak @ v], dim=-1)  # (B, H, K, L, 2N)
    W, U = torch.linalg.solve_triangular(eye - M_ab, rhs, upper=False, unitriangular=True).split(n, dim=-1)

    to_end = _exp(g[..., -1:, :] - g)  # (B, H, K, L, N)   e^{g_L - g_s}
    kd, bd = k * to_end, b * to_end
    A = torch.diag_embed(_exp(g[..., -1, :])) + W.mT @ bd  # (B, H, K, N, N)   S_L = S_0 A + B_c
    B_c = v.mT @ kd + U.mT @ bd  # (B, H, K, N, N)

    S = r.new_zeros(batch, heads, n, n) if state is None else state.to(dtype)  # (B, H, N_v, N_k)
    S_in = []
    for A_c, B_cc in zip(A.unbind(2), B_c.unbind(2)):  # the only sequential part: one affine map per chunk
        S_in.append(S)
        S = B_cc + S @ A_c
    S_in = torch.stack(S_in, dim=2)  # (B, H, K, N, N)   state entering each chunk

    Q = r * _exp(g) + M_rb @ W  # (B, H, K, L, N)
    y = Q @ S_in.mT + M_rk @ v + M_rb @ U  # (B, H, K, L, N)
    y = y.permute(0, 2, 3, 1, 4).reshape(batch, K * L, heads, n)[:, :length]
    return y.to(dtype_in), S
