"""The CausalLM shell: stateful channel mixers, the start / ctx hooks, embed norm, prefill; check_mixer can fail."""

import pytest
import torch
from torch import nn

from common.models.attention import CausalSelfAttention
from common.models.lm import CausalLM, GeluMLP
from common.testing import check_mixer


class TokenShiftMLP(nn.Module):
    """RWKV-style channel mix: mixes x_t with x_{t-1}; its state is the previous token (B, D)."""

    def __init__(self, d: int):
        super().__init__()
        self.mix = nn.Linear(2 * d, d)

    def forward(self, x):  # (B, L, D)
        previous = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
        return self.mix(torch.cat([x, previous], -1))

    def init_state(self, batch_size, device, dtype):
        return torch.zeros(batch_size, self.mix.out_features, device=device, dtype=dtype)

    def step(self, x, state):  # (B, D)
        return self.mix(torch.cat([x, state], -1)), x


class TokenShiftMLPWithPrefill(TokenShiftMLP):
    def prefill(self, x, state):  # (B, L, D) after the token in ``state``
        previous = torch.cat([state[:, None], x[:, :-1]], dim=1)
        return self.mix(torch.cat([x, previous], -1)), x[:, -1]


class PositionalMixer(nn.Module):
    """Adds a function of the absolute position (as RoPE would use it) and hands layer 0's input on (v_first)."""

    def __init__(self, d: int, layer: int):
        super().__init__()
        self.proj, self.layer = nn.Linear(d, d), layer

    def forward(self, x, start=0, ctx=None):  # (B, L, D)
        pos = torch.arange(x.shape[1]) + (start[:, None] if torch.is_tensor(start) else start)
        if self.layer == 0:
            ctx["v_first"] = x
        return self.proj(x + ctx["v_first"]) * torch.cos(0.1 * pos.to(x.dtype))[..., None]

    def init_state(self, batch_size, device, dtype):
        return None

    def step(self, x, state, start=0, ctx=None):  # (B, D)
        return self.forward(x[:, None], start, ctx)[:, 0], state

    def prefill(self, x, state, start=0, ctx=None):
        return self.forward(x, start, ctx), state


class FutureLeak(nn.Module):
    """Not causal: each output also sees the next token."""

    def __init__(self, d):
        super().__init__()
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        return self.proj(x + torch.roll(x, -1, dims=1))

    def init_state(self, batch_size, device, dtype):
        return None

    def step(self, x, state):
        return self.proj(x), state


class ForgetfulStep(nn.Module):
    """Causal, but its step forgets the past that its forward uses (a running sum)."""

    def __init__(self, d):
        super().__init__()
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        return self.proj(x.cumsum(1))

    def init_state(self, batch_size, device, dtype):
        return torch.zeros(batch_size, self.proj.in_features, device=device, dtype=dtype)

    def step(self, x, state):
        return self.proj(x), state + x  # should use state + x


class GrowingState(ForgetfulStep):
    """Correct in every form, but its state keeps every token (like a KV cache) instead of a running sum."""

    def init_state(self, batch_size, device, dtype):
        return torch.zeros(batch_size, 0, self.proj.in_features, device=device, dtype=dtype)

    def step(self, x, state):
        state = torch.cat([state, x[:, None]], 1)
        return self.proj(state.sum(1)), state


class StalePrefill(ForgetfulStep):
    """Step is right; its own prefill ignores the state it is handed (chunked prefill breaks)."""

    def step(self, x, state):
        return self.proj(state + x), state + x

    def prefill(self, x, state):
        return self.forward(x), state + x.sum(1)


def _lm(mixer, mlp, **kw):
    torch.manual_seed(0)
    return CausalLM(17, 16, 3, mixer, mlp, norm="layer", **kw).double().eval()


@pytest.mark.parametrize(
    "mixer_cls, message",
    [(FutureLeak, "not causal"), (ForgetfulStep, "step by step != forward"),
     (StalePrefill, "prefill \\+ step != forward"), (GrowingState, "state's size depends on the position")],
)  # fmt: skip
def test_check_mixer_catches_each_kind_of_broken_mixer(mixer_cls, message):
    with pytest.raises(AssertionError, match=message):
        check_mixer(lambda: mixer_cls(8), d_model=8, length=15)
    if mixer_cls is GrowingState:  # what is wrong is only the flat state: declared as growing, it passes
        check_mixer(lambda: mixer_cls(8), d_model=8, length=15, state_grows=True)


@pytest.mark.parametrize("mlp_cls", [TokenShiftMLPWithPrefill, TokenShiftMLP])  # parallel / stepped prefill
def test_stateful_channel_mixer_and_hooks_in_every_form(mlp_cls):
    lm = _lm(lambda i: PositionalMixer(16, i), lambda i: mlp_cls(16), embed_norm=True)
    idx = torch.randint(0, 17, (3, 21))
    start = torch.tensor([0, 4, 9])
    with torch.no_grad():
        full = lm.logits(idx, start)
        head, state = lm.prefill(idx[:, :8], lm.init_state(3, start=start))
        tail = []
        for t in range(8, 21):
            logits, state = lm.step(idx[:, t], state)
            tail.append(logits)
    torch.testing.assert_close(torch.cat([head, torch.stack(tail, 1)], 1), full, rtol=0, atol=1e-10)
    assert not torch.allclose(full[1], lm.logits(idx[1:2], 0)[0])  # the start reaches the mixer
    assert torch.equal(state["pos"], start + 21)
    with torch.no_grad():  # ln0 is applied: changing its gain changes the logits
        lm.embed_norm.weight.mul_(2.0)
        assert not torch.allclose(lm.logits(idx, start), full)


def test_generate_prefills_the_prompt_like_stepping():
    lm = _lm(lambda i: CausalSelfAttention(16, 2), lambda i: GeluMLP(16))
    idx = torch.randint(0, 17, (2, 9))
    out = lm.generate(idx, max_new_tokens=6, greedy=True)
    assert torch.equal(out[:, :9], idx)
    with torch.no_grad():
        torch.testing.assert_close(lm.logits(out)[:, 8:-1].argmax(-1), out[:, 9:])


def test_check_mixer_names_a_module_that_is_no_mixer():
    with pytest.raises(AssertionError, match="lacks forward, init_state or step"):
        check_mixer(lambda: nn.Linear(8, 8), d_model=8, length=15)
