"""The TTT layer's inner loop, of Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive Hidden
States", arXiv 2407.04620.

The hidden state is the weights W of an inner model f; every token takes a gradient step on a self-supervised
reconstruction loss (Sec. 2.1-2.3), per head, with row vectors q_t = θ_Q x_t, k_t = θ_K x_t,
v_t = θ_V x_t of size D:

    ℓ(W; x_t) = ‖f(k_t; W) - v_t‖²                                        (Eq. 4, the multi-view reconstruction)
    W_t = W_{t-1} - η ∇ℓ(W_{t-1}; x_t)                                    (Eq. 2, online GD)
    z_t = f(q_t; W_t)                                                     (Eq. 5, the output rule; Eq. 1 with
                                                                          x_t itself)

f = f_res (no residual or LayerNorm) or f(x) = x + LN(f_res(x)) (Sec. 2.7), with a per-head LayerNorm
(weight, bias: (H, D)), and

    TTT-Linear   f_res(x) = x W + b                      W: (D, D), b: (D,)          (b optional)
    TTT-MLP      f_res(x) = GELU(x W1 + b1) W2 + b2      W1: (D, 4D), W2: (4D, D)    (GELU: tanh form)

**Mini-batch TTT** (Sec. 2.4): the gradients of the b tokens of a mini-batch are all taken at the
weights W_{t'} of its start, t' = the last token of the previous mini-batch,

    W_t = W_{t'} - α_t Σ_{s=t'+1}^{t} η_s ∇ℓ(W_{t'}; x_s)

with η_s = η(x_s) the (learnable, data-dependent, Sec. 2.7) inner learning rate of token s and α_t = 1 (the
paper's sum; Theorem 1) or α_t = 1 / (t - t') (``mean=True``: the step on the mean loss of the mini-batch's
tokens so far, as the official implementation weighs them). Mini-batches are aligned to absolute positions
0, b, 2b, ...; b = T is batch GD over the whole sequence.

``ttt_primal`` is the reference, token by token: it materialises each ∇ℓ(W_{t'}; x_s) by autograd (differentiable:
``create_graph``) and each W_t. ``ttt_primal_minibatch`` is the primal form as the paper times it: per mini-batch,
the b per-token gradients and b weight copies materialised at once (the benchmark's baseline). All three return
z̄_t = f_res(q_t; W_t); ``output_rule`` gives Eq. 5's z_t = q_t + LN(z̄_t). ``ttt_dual`` is the **dual form**
(Sec. 2.5), the fast path: per mini-batch, the
outputs and the end-of-mini-batch weights come from a few matrix products, without per-token gradients of W.
With Z = K W_{t'} + b (b x D) and G = ∂ℓ/∂Z row by row (the gradient of the loss at each key's output), the
gradient of token s is k_s^T g_s, so for the tokens t of the mini-batch, with E[t, s] = α_t η_s for s <= t:

    z̄_t = q_t W_t + b_t = q_t W_{t'} + b_{t'} - Σ_{s<=t} α_t η_s (q_t·k_s + 1) g_s
        => Z̄ = Q W_{t'} + b_{t'} - (E ⊙ (Q K^T + 1)) G                   (b x D)
    W_{t'+b} = W_{t'} - Σ_s α_b η_s k_s^T g_s = W_{t'} - K^T (α_b η ⊙ G)                  (D x D)

TTT-MLP applies the same twice: G1 = (G2 W2^T) ⊙ GELU'(Z1) for the first layer (taken at the keys), then
X̄2 = GELU(Z̄1) of the queries in the second layer's product. The state between calls is (W_{t'}, the
accumulators A = Σ_{s in the mini-batch so far} η_s ∇ℓ(W_{t'}; x_s)): W_t = W_{t'} - α_t A, so a call may start
inside a mini-batch (``start``) and two calls equal one; on CPU and GPU alike (plain PyTorch, autograd).

Theorem 1: with f(x) = x W, W_0 = 0, no bias, LN or residual, b = T and η = 1/2 (and α = 1), z_t = Σ_{s<=t}
(q_t·k_s) v_s, causal linear attention (``linear_attention``). Theorem 2: the Nadaraya-Watson estimator with the
kernel exp(q·k) as the learner gives causal softmax self-attention (``nadaraya_watson``).

Shapes: q, k, v: (B, H, T, D); eta: (B, H, T); inner weights, as a tuple ``params``: (W,) or (W, b) for linear,
(W1, b1, W2, b2) for MLP, each with leading (B, H) (a state) or (H,) (the learnable W_0, broadcast);
ln: (weight, bias), each (H, D), or None. Outputs (B, H, T, D) in the compute dtype (fp32, or fp64 for fp64).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LN_EPS = 1e-6
Params = tuple[torch.Tensor, ...]


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _gelu_grad(x: torch.Tensor) -> torch.Tensor:
    """d/dx of GELU's tanh form 0.5 x (1 + tanh(u)), u = c (x + 0.044715 x³), c = sqrt(2 / π)."""
    c = math.sqrt(2.0 / math.pi)
    tanh = torch.tanh(c * (x + 0.044715 * x**3))
    return 0.5 * (1 + tanh) + 0.5 * x * (1 - tanh**2) * c * (1 + 3 * 0.044715 * x**2)


def _layer_norm(z: torch.Tensor, ln: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    weight, bias = ln  # (H, D) each; z: (B, H, n, D)
    return F.layer_norm(z, z.shape[-1:], eps=LN_EPS) * weight[:, None] + bias[:, None]


def f_res(params: Params, x: torch.Tensor) -> torch.Tensor:
    """The inner model without residual or norm: x (B, H, n, D) -> (B, H, n, D)."""
    if len(params) == 4:  # MLP
        w1, b1, w2, b2 = params
        return _gelu(x @ w1 + b1[..., None, :]) @ w2 + b2[..., None, :]
    out = x @ params[0]
    return out + params[1][..., None, :] if len(params) == 2 else out


def inner_model(params: Params, x: torch.Tensor, ln) -> torch.Tensor:
    """f(x; W) = x + LN(f_res(x)) (Sec. 2.7), or f_res(x) when ``ln`` is None."""
    out = f_res(params, x)
    return out if ln is None else x + _layer_norm(out, ln)


def output_rule(z_bar: torch.Tensor, q: torch.Tensor, ln) -> torch.Tensor:
    """Eq. 5 from z̄_t = f_res(q_t; W_t): z_t = f(q_t; W_t) = q_t + LN(z̄_t), or z̄_t without LN and residual."""
    return z_bar if ln is None else q + _layer_norm(z_bar, ln)


def inner_loss(params: Params, k: torch.Tensor, v: torch.Tensor, ln) -> torch.Tensor:
    """ℓ(W; x) = ‖f(k; W) - v‖² per token (Eq. 4): k, v (B, H, n, D) -> (B, H, n)."""
    return (inner_model(params, k, ln) - v).pow(2).sum(-1)


# ---- the reference: token by token, gradients by autograd ----------------------------------------------
def _token_grads(params: Params, k: torch.Tensor, v: torch.Tensor, ln) -> Params:
    """∇_W ℓ(W; x_t) for one token per (batch, head): k, v (B, H, D); every W has leading (B, H)."""
    create_graph = torch.is_grad_enabled()  # differentiable when the caller's pass is
    with torch.enable_grad():
        inputs = [p if p.requires_grad else p.detach().requires_grad_() for p in params]
        loss = inner_loss(tuple(inputs), k[:, :, None], v[:, :, None], ln).sum()  # Σ over (B, H): per-sample
        return torch.autograd.grad(loss, inputs, create_graph=create_graph)


def inner_shapes(inner: str, heads: int, dim: int) -> list[tuple[int, ...]]:
    """The shapes of W_0 per head, in ``params`` order: (W, b) for "linear", (W1, b1, W2, b2) for "mlp"."""
    h, d = heads, dim
    return {"linear": [(h, d, d), (h, d)], "mlp": [(h, d, 4 * d), (h, 4 * d), (h, 4 * d, d), (h, d)]}[inner]


def per_sample(params: Params, batch: int) -> Params:
    """(H, ...) learnable W_0 -> (B, H, ...) per-sample weights; (B, H, ...) states pass through. Matrices sit
    at even indices of ``params``, biases at odd ones."""
    return tuple(p if p.dim() == (2 if i % 2 == 0 else 1) + 2 else p.expand(batch, *p.shape)
                 for i, p in enumerate(params))  # fmt: skip


def ttt_primal(q, k, v, eta, params: Params, ln=None, mini_batch: int = 16, mean: bool = False):
    """Mini-batch TTT as written (Eq. 2 with Sec. 2.4's gradients): per token, its gradient at the mini-batch's starting weights, the
    accumulated weights W_t and z̄_t = f_res(q_t; W_t) (``output_rule`` makes it Eq. 5's z_t = f(q_t; W_t)).
    From W_0 = ``params`` at position 0. Returns (z̄ (B, H, T, D), the weights after the last full mini-batch,
    the accumulator of the partial one)."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    q, k, v, eta = (x.to(dtype) for x in (q, k, v, eta))
    batch, heads, length, _ = q.shape
    weights = per_sample(tuple(p.to(dtype) for p in params), batch)
    acc = tuple(torch.zeros_like(w) for w in weights)
    outputs = []
    for t in range(length):
        i = t % mini_batch + 1  # the token's index in its mini-batch, 1-based
        grads = _token_grads(weights, k[:, :, t], v[:, :, t], ln)  # all at W_{t'} (Sec. 2.4)
        acc = tuple(
            a + eta[:, :, t].reshape(batch, heads, *[1] * (a.dim() - 2)) * g for a, g in zip(acc, grads)
        )
        alpha = 1.0 / i if mean else 1.0
        w_t = tuple(w - alpha * a for w, a in zip(weights, acc))  # W_t
        outputs.append(f_res(w_t, q[:, :, t, None])[:, :, 0])  # z̄_t = f_res(q_t; W_t)
        if i == mini_batch:  # the mini-batch ends: W_{t'} <- W_t
            weights, acc = w_t, tuple(torch.zeros_like(a) for a in acc)
    return torch.stack(outputs, dim=2), weights, acc


def _layers(weights: Params) -> list[tuple[int, ...]]:
    """The indices in ``weights`` of each layer of f_res: (matrix,) or (matrix, bias); one layer for linear,
    two for MLP."""
    return [(0, 1), (2, 3)] if len(weights) == 4 else [tuple(range(len(weights)))]


def _layer_grads(
    weights: Params, k: torch.Tensor, v: torch.Tensor, ln
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer of f_res at ``weights``, for the keys k, v (B, H, n, D): (its input rows x, g = ∂ℓ/∂ its output),
    so that token s's gradient is x_s^T g_s for the layer's matrix and g_s for its bias (closed form)."""
    if len(weights) == 4:  # TTT-MLP: G1 = (G2 W2^T) ⊙ GELU'(Z1)
        w1, b1, w2, b2 = weights
        z1 = k @ w1 + b1[..., None, :]  # (B, H, n, 4D)
        x2 = _gelu(z1)
        g2 = _loss_grad_z(x2 @ w2 + b2[..., None, :], k, v, ln)  # (B, H, n, D)
        return [(k, (g2 @ w2.transpose(-1, -2)) * _gelu_grad(z1)), (x2, g2)]
    return [(k, _loss_grad_z(f_res(weights, k), k, v, ln))]


def _grads_per_token(weights: Params, k: torch.Tensor, v: torch.Tensor, ln) -> Params:
    """∇_W ℓ(W; x_s) for every token s of k, v (B, H, n, D) in closed form, materialised: (B, H, n, *W.shape)."""
    grads = []
    for (x, g), layer in zip(_layer_grads(weights, k, v, ln), _layers(weights)):
        grads += [x[..., :, None] * g[..., None, :], g][: len(layer)]
    return tuple(grads)


def ttt_primal_minibatch(q, k, v, eta, params: Params, ln=None, mini_batch: int = 16, mean: bool = False):
    """The primal form vectorised per mini-batch, as the paper times it against the dual form (Sec. 2.5): the b
    per-token gradients G_s (b copies of W), their cumulative sums W_t = W_{t'} - α_t Σ_{s<=t} η_s G_s (b more)
    and every z̄_t = f_res(q_t; W_t) with its own weights. From W_0 at position 0; returns z̄ (B, H, T, D)."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    q, k, v, eta = (x.to(dtype) for x in (q, k, v, eta))
    weights = per_sample(tuple(p.to(dtype) for p in params), q.shape[0])
    outputs = []
    for start in range(0, q.shape[2], mini_batch):
        part = slice(start, start + mini_batch)
        grads = _grads_per_token(weights, k[:, :, part], v[:, :, part], ln)
        n = grads[0].shape[2]
        index = torch.arange(1, n + 1, device=q.device, dtype=dtype)
        alpha = 1.0 / index if mean else torch.ones_like(index)  # (n,)
        w_t = []
        for w, g in zip(weights, grads):  # W_t for each token t of the mini-batch: (B, H, n, *W.shape)
            steps = (eta[:, :, part].reshape(*eta.shape[:2], n, *[1] * (g.dim() - 3)) * g).cumsum(2)
            w_t.append(w[:, :, None] - alpha.reshape(n, *[1] * (g.dim() - 3)) * steps)
        outputs.append(f_res(tuple(w_t), q[:, :, part, None, :])[..., 0, :])  # (B, H, n, D)
        weights = tuple(w[:, :, -1] for w in w_t)  # the mini-batch's last W_t starts the next one
    return torch.cat(outputs, dim=2)


# ---- the dual form: a few matrix products per mini-batch ---------------------------------------------
def _loss_grad_z(z: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ln) -> torch.Tensor:
    """G = ∂ℓ/∂z at z = f_res(k) (B, H, n, D), row by row: LayerNorm's backward written out."""
    if ln is None:
        return 2 * (z - v)
    weight, bias = ln[0][:, None], ln[1][:, None]  # (H, 1, D)
    mu = z.mean(-1, keepdim=True)
    rstd = torch.rsqrt(z.var(-1, unbiased=False, keepdim=True) + LN_EPS)
    z_hat = (z - mu) * rstd  # (B, H, n, D)
    g_hat = 2 * (k + weight * z_hat + bias - v) * weight  # ∂ℓ/∂ẑ
    return rstd * (g_hat - g_hat.mean(-1, keepdim=True) - z_hat * (g_hat * z_hat).mean(-1, keepdim=True))


def _apply(xq, xk, w, b, acc_w, acc_b, g, e_scaled, alpha):
    """One linear layer of the dual form: rows of xq (B, H, n, Din) through W_t = W_{t'} - α_t (A + Σ_{s<=t} η_s
    xk_s^T g_s) (and its bias), with ``e_scaled`` = E = α_t η_s [s <= t] (B, H, n, n); A = None: zero (a call
    that starts the mini-batch)."""
    out = xq @ w  # (B, H, n, Dout)
    if acc_w is not None:
        out = out - alpha * (xq @ acc_w)
    scores = xq @ xk.transpose(-1, -2)  # (B, H, n, n)
    if b is not None:
        out = out + b[..., None, :]
        if acc_b is not None:
            out = out - alpha * acc_b[..., None, :]
        scores = scores + 1
    return out - (e_scaled * scores) @ g


def _segment(q, k, v, eta, weights: Params, acc: Params | None, ln, alpha, causal):
    """Tokens of ONE mini-batch after ``acc`` (the accumulated η_s ∇ℓ of its earlier tokens; None: none), with
    ``alpha`` (n, 1) their α_t and ``causal`` the (n, n) mask s <= t. Returns (z̄ (B, H, n, D), the new acc).
    Layer by layer: the queries' rows through W_t (``_apply``; GELU between the MLP's layers), with the keys'
    rows and loss gradients at W_{t'} (``_layer_grads``)."""
    e_scaled = torch.where(causal, alpha * eta[:, :, None, :], 0.0)  # E[t, s] = α_t η_s [s <= t] (B, H, n, n)
    acc = acc or (None,) * len(weights)
    eta_col = eta[..., None]  # (B, H, n, 1)
    out, new = q, []
    for i, ((x, g), layer) in enumerate(zip(_layer_grads(weights, k, v, ln), _layers(weights))):
        w, b = (weights[j] for j in layer) if len(layer) == 2 else (weights[layer[0]], None)
        acc_w, acc_b = (acc[j] for j in layer) if len(layer) == 2 else (acc[layer[0]], None)
        out = _apply(
            out if i == 0 else _gelu(out), x, w, b, acc_w, acc_b, g, e_scaled, alpha
        )  # (B, H, n, Dout)
        step = eta_col * g
        new += [x.transpose(-1, -2) @ step, step.sum(-2)][: len(layer)]
    return out, tuple(d if a is None else a + d for a, d in zip(acc, new))


def ttt_dual(q, k, v, eta, params: Params, ln=None, mini_batch: int = 16, mean: bool = False,
             acc: Params | None = None, start: int = 0):  # fmt: skip
    """The dual form of ``ttt_primal``'s layer (Sec. 2.5), continuing a state: ``params`` are the weights at the
    start of the current mini-batch (W_0 at position 0), ``acc`` its accumulators (None: zero), ``start`` the
    absolute position of q[:, :, 0]. Returns (z̄ (B, H, T, D), as ``ttt_primal``; the weights at the start of
    the mini-batch after the last token, its accumulators): feed both back with start + T to continue."""
    with torch.autocast(q.device.type, enabled=False):  # W accumulates over mini-batches: never in bf16
        return _dual(q, k, v, eta, params, ln, mini_batch, mean, acc, start)


def _dual(q, k, v, eta, params, ln, mini_batch, mean, acc, start):
    dtype = torch.promote_types(q.dtype, torch.float32)
    q, k, v, eta = (x.to(dtype) for x in (q, k, v, eta))
    ln = None if ln is None else tuple(p.to(dtype) for p in ln)
    batch, _, length, _ = q.shape
    weights = per_sample(tuple(p.to(dtype) for p in params), batch)
    acc = None if acc is None else tuple(a.to(dtype) for a in acc)  # None: zero, at a mini-batch's start
    index = torch.arange(1, min(mini_batch, length + start % mini_batch) + 1, device=q.device, dtype=dtype)
    alphas = (1.0 / index if mean else torch.ones_like(index))[:, None]  # α_t by index in the mini-batch
    causal = torch.ones(len(index), len(index), device=q.device, dtype=torch.bool).tril()
    outputs, t = [], 0
    while t < length:
        first = (start + t) % mini_batch
        n = min(mini_batch - first, length - t)
        part = slice(t, t + n)
        z, acc = _segment(q[:, :, part], k[:, :, part], v[:, :, part], eta[:, :, part], weights, acc, ln,
                          alphas[first : first + n], causal[:n, :n])  # fmt: skip
        outputs.append(z)
        if first + n == mini_batch:  # the mini-batch is complete: W_{t'+b} = W_{t'} - α_b A
            weights = tuple(w - alphas[-1, 0] * a for w, a in zip(weights, acc))
            acc = None
        t += n
    acc = tuple(torch.zeros_like(w) for w in weights) if acc is None else acc
    return torch.cat(outputs, dim=2), weights, acc


# ---- Theorems 1 and 2 -----------------------------------------------------------------------------------
def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal linear attention without normaliser (Katharopoulos et al. 2020): z_t = Σ_{s<=t} (q_t·k_s) v_s."""
    return (q @ k.transpose(-1, -2)).tril() @ v  # (B, H, T, D)


def nadaraya_watson(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Theorem 2's learner, token by token: the kernel regression f(q_t) = Σ_{s<=t} κ(k_s, q_t) v_s /
    Σ_{s<=t} κ(k_s, q_t) on the pairs (k_s, v_s) seen so far, with κ(k, q) = exp(k·q)."""
    outputs = []
    for t in range(q.shape[2]):
        kernel = torch.exp(k[:, :, : t + 1] @ q[:, :, t, :, None])  # (B, H, t+1, 1)
        outputs.append((kernel * v[:, :, : t + 1]).sum(2) / kernel.sum(2))
    return torch.stack(outputs, dim=2)
