"""The model zoo: every architecture builds by name from its config and rebuilds from its spec."""

import pytest
import torch

from common.errors import PaperzooError
from common.models import zoo
from common.models.attention import CausalSelfAttention
from common.models.lm import CausalLM, GeluMLP

SMALL = {
    "gpt": {"vocab_size": 11, "block_size": 16, "n_layers": 2, "n_heads": 2, "d_model": 16},
    "mha": {"vocab_size": 11, "d_model": 16, "n_layers": 2, "n_heads": 2},
    "mamba": {"vocab_size": 11, "d_model": 16, "n_layers": 2, "d_state": 4},
    "transformer": {"vocab_size": 11, "d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 1},
}


def _shapes(model):
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def test_the_lab_architectures_are_registered():
    assert set(SMALL) <= set(zoo.names())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_builds_from_its_config_and_rebuilds_from_its_spec(name):
    model = zoo.build(name, SMALL[name])
    assert isinstance(model, torch.nn.Module)
    assert zoo.build(name, zoo.config_class(name)(**SMALL[name])).zoo_spec == zoo.spec_of(model)
    twin = zoo.from_spec(zoo.spec_of(model))
    assert _shapes(twin) == _shapes(model) and zoo.spec_of(twin) == zoo.spec_of(model)


def test_mha_initialises_as_the_mamba_papers_mha_abs_did():
    torch.manual_seed(0)
    expected = CausalLM(11, 16, 2, mixer_factory=lambda i: CausalSelfAttention(16, 2),
                        mlp_factory=lambda i: GeluMLP(16), norm="layer", positions="sinusoidal")  # fmt: skip
    torch.manual_seed(0)
    built = zoo.build("mha", SMALL["mha"])
    assert all(torch.equal(a, b) for a, b in zip(expected.state_dict().values(), built.state_dict().values()))


def test_unknown_name_or_key_is_a_one_line_error():
    with pytest.raises(PaperzooError, match="unknown architecture 'gtp'; the zoo has: .*gpt"):
        zoo.build("gtp", {})
    with pytest.raises(PaperzooError, match=r"unknown gpt config keys \['d_modle'\]"):
        zoo.build("gpt", {**SMALL["gpt"], "d_modle": 8})
