"""generation_costs: a KV cache grows with the position, a recurrent state does not."""

import torch

from common.inference import generation_costs
from common.models import zoo
from common.models.gpt import GPTConfig


def test_the_kv_cache_grows_linearly_and_a_recurrent_state_not_at_all():
    torch.manual_seed(0)
    gpt = zoo.build("gpt", GPTConfig(11, 300, n_layers=2, n_heads=2, d_model=16))
    costs = generation_costs(gpt, (32, 256), n_tokens=3)
    short, long = costs[32], costs[256]
    assert short["state_bytes"] == 2 * 2 * 32 * 16 * 4  # layers x (k, v) x positions x d_model x fp32
    assert long["state_bytes"] == 8 * short["state_bytes"] and long["ms_per_token"] > 0
    mamba = zoo.build("mamba", zoo.config_class("mamba")(11, d_model=16, n_layers=2, d_state=4))
    costs = generation_costs(mamba, (32, 256), n_tokens=3)
    assert costs[32]["state_bytes"] == costs[256]["state_bytes"] > 0
