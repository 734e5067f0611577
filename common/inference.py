"""What generating one more token costs a zoo LM deep into a sequence: milliseconds per token and the bytes
of the state it carries (a KV cache for attention, a fixed recurrent state for RWKV / Mamba / TTT).

RWKV-4 (Peng et al. 2023, Fig. "inference time vs tokens generated") and Mamba (Gu & Dao 2023, Sec. 4.5)
claim constant per-token cost and memory for the recurrent form, against the growing cache of attention:

    costs = generation_costs(lm, positions=(64, 4096))   # {64: {"ms_per_token": ..., "state_bytes": ...}, 4096: ...}

For each position p, a prompt of p random tokens is prefilled in one parallel pass; then single-token steps
are timed from each prefilled state (states are values: a step returns a new one), the positions taking turns
step by step, so that a busy moment of the machine slows them alike; the median of ``n_tokens`` steps is
reported. A model with learned positions (the GPT) needs ``max_len > max(positions)``: build a twin with a
longer table for this (the cost does not depend on the weights).
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from common.models.lm import state_bytes


@torch.inference_mode()
def generation_costs(
    model: nn.Module, positions: tuple[int, ...], n_tokens: int = 64, seed: int = 0
) -> dict[int, dict[str, float]]:
    """{p: {"ms_per_token": median time of one ``step`` at position p, "state_bytes": the state's size}}."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.vocab_size, (1, max(positions) + 1), generator=g).to(device)
    states = {p: model.prefill(prompt[:, :p], model.init_state(1))[1] for p in positions}
    times: dict[int, list[float]] = {p: [] for p in positions}
    for _ in range(n_tokens + 2):  # the first two rounds warm up
        for p in positions:
            start = time.perf_counter()
            model.step(prompt[:, p], states[p])
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[p].append(time.perf_counter() - start)
    model.train(was_training)
    return {
        p: {
            "ms_per_token": 1e3 * statistics.median(times[p][2:]),
            "state_bytes": float(state_bytes(states[p]["layers"])),
        }
        for p in positions
    }


@torch.no_grad()
def recurrent_vs_parallel(model, idx: torch.Tensor, parallel: torch.Tensor) -> float:
    """max |``parallel`` (the parallel form's logits of idx (1, T)) - the recurrent form's, one token at a time|."""
    state, stepped = model.init_state(1), []
    for t in range(idx.shape[1]):
        logits, state = model.step(idx[:, t], state)
        stepped.append(logits)
    return float((torch.stack(stepped, 1) - parallel).abs().max())
