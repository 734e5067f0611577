"""fla-core's pure-PyTorch RWKV-7 kernel references, loaded by path, for comparison with ``ops.wkv7`` only.

fla-core is the core of flash-linear-attention (Yang, Zhang et al., https://github.com/fla-org/
flash-linear-attention, MIT licence): triton kernels for linear-attention models, RWKV-7 among them as the
diagonal-plus-low-rank (DPLR) delta rule. Next to the kernels it ships plain PyTorch references in
``fla/ops/generalized_delta_rule/dplr/naive.py``: ``dplr_recurrence`` (one token per step) and
``dplr_chunkwise`` (chunks of tokens). That is code nobody here wrote; it is used only as an independent
check of our kernels (``tests/test_rwkv_fla_parity.py``) and as a baseline in ``bench.py``, loaded by path
through ``common.fla`` (``import fla`` needs triton).

fla's convention, inputs (B, H, T, D), state S (B, H, D_k, D_v), the transpose of ours:

    S_t = diag(e^{gk_t}) S_{t-1} + k_t^T v_t + beta_t^T (alpha_t S_{t-1}),   o_t = (q_t / sqrt(D)) S_t

Transposed, S^T_t = S^T_{t-1} (diag(e^{gk_t}) + alpha_t^T beta_t) + v_t^T k_t: the wkv7 recurrence of ops.py
with alpha = a, beta = b, gk = w, q = r sqrt(N) (the naive functions have no scale argument) and
initial_state = S_0^T. fla's references compute in fp32.

    dplr = dplr_naive()                                   # the loaded naive.py module
    y, S = wkv7_fla(r, w, k, v, a, b, state)              # ops.wkv7's contract, through dplr_recurrence
    y, S = wkv7_fla(r, w, k, v, a, b, state, chunk_size=16)   # through dplr_chunkwise
"""

from __future__ import annotations

import math
from types import ModuleType

import torch.nn.functional as F
from torch import Tensor

from common.fla import fla_naive

DPLR_NAIVE = "ops/generalized_delta_rule/dplr/naive.py"


def dplr_naive() -> ModuleType:
    """fla-core's ``dplr/naive.py`` as a module: ``dplr_recurrence``, ``dplr_chunkwise``."""
    return fla_naive(DPLR_NAIVE)


def wkv7_fla(r, w, k, v, a, b, state=None, chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """``ops.wkv7``'s contract (r, w, k, v, a, b (B, T, H, N), state S (B, H, N_v, N_k)) computed by fla's
    ``dplr_recurrence``, or by ``dplr_chunkwise`` with chunks of ``chunk_size`` tokens (T is padded to a
    multiple of it with w = 0 and zeros elsewhere, which leaves the state unchanged). Returns y (B, T, H, N)
    and the final S (B, H, N_v, N_k), computed in fp32 as fla's references do."""
    dplr = dplr_naive()
    length, n = r.shape[1], r.shape[-1]
    pad = 0 if chunk_size is None else -length % chunk_size

    def fla_layout(x):  # (B, T, H, N) -> (B, H, T + pad, N), fp32
        return F.pad(x.float(), (0, 0, 0, 0, 0, pad)).transpose(1, 2)

    q, k, v, alpha, beta, gk = (fla_layout(x) for x in (r * math.sqrt(n), k, v, a, b, w))
    S0 = None if state is None else state.float().mT  # (B, H, N_k, N_v)
    if chunk_size is None:
        o, S = dplr.dplr_recurrence(q, k, v, alpha, beta, gk, initial_state=S0)
    else:
        o, S = dplr.dplr_chunkwise(q, k, v, alpha, beta, gk, initial_state=S0, chunk_size=chunk_size)
    return o.transpose(1, 2)[:, :length], S.mT  # y (B, T, H, N), S (B, H, N_v, N_k)
