"""What generating one more token costs a zoo LM deep into a sequence: milliseconds per token and the bytes
of the state it carries (a KV cache for attention, a fixed recurrent state for RWKV / Mamba / TTT).

RWKV-4 (Peng et al. 2023, Fig. "inference time vs tokens generated") and Mamba (Gu & Dao 2023, Sec. 4.5)
claim constant per-token cost and memory for the recurrent form, against the growing cache of attention:

    cost = generation_cost(lm, position=4096)      # {"ms_per_token": ..., "state_bytes": ...}

The prompt (``position`` random tokens) is prefilled in one parallel pass; then ``n_tokens`` single-token
steps are timed, each from the same prefilled state (states are values: a step returns a new one), and the
median is reported, so the position measured is exactly ``position``. A model with learned positions
(the GPT) needs ``max_len > position``: build a twin with a longer table for this (the cost does not depend
on the weights).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from common.models.lm import state_tensors


@torch.inference_mode()
def generation_cost(model: nn.Module, position: int, n_tokens: int = 32, seed: int = 0) -> dict[str, float]:
    """{"ms_per_token": median time of one ``step`` at ``position``, "state_bytes": the state's size there}."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.vocab_size, (1, position + 1), generator=g).to(device)
    _, state = model.prefill(prompt[:, :position], model.init_state(1))
    token = prompt[:, position]
    times = []
    for _ in range(n_tokens + 2):  # two warm-up steps
        start = time.perf_counter()
        model.step(token, state)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    model.train(was_training)
    state_bytes = sum(t.numel() * t.element_size() for t in state_tensors(state["layers"]))
    return {"ms_per_token": 1e3 * statistics.median(times[2:]), "state_bytes": float(state_bytes)}
