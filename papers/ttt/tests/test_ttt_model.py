"""TTT mixers and LMs: the lab's mixer contract (causality, step == forward, prefill + step == forward, a state
that does not grow), every Table 1 configuration in both backbones, the zoo, and one-line config errors."""

import pytest
import torch

from common.errors import PaperzooError
from common.models import zoo
from common.models.lm import state_bytes
from common.testing import check_mixer
from papers.ttt.experiment import RUNGS
from papers.ttt.model import TTTMixer

MIXERS = {
    "linear": dict(inner="linear"),
    "mlp": dict(inner="mlp", mini_batch=4),
    "mamba_backbone": dict(inner="linear", conv_kernel=4, gated=True),
    "mlp_mamba_backbone": dict(inner="mlp", conv_kernel=4, gated=True, mini_batch=8),
    **{f"rung_{name}": {"mini_batch": 63, **changes} for name, changes in RUNGS.items()},
}


@pytest.mark.parametrize("name", MIXERS)
def test_mixer_contract(name):
    check_mixer(lambda: TTTMixer(32, 4, **MIXERS[name]), d_model=32)


@pytest.mark.parametrize("backbone", ["transformer", "mamba"])
@pytest.mark.parametrize("inner", ["linear", "mlp"])
def test_lm_generates_with_a_constant_state(backbone, inner):
    torch.manual_seed(0)
    lm = zoo.build(
        "ttt", dict(vocab_size=20, d_model=32, n_layers=2, n_heads=4, inner=inner, backbone=backbone)
    )
    assert zoo.spec_of(lm)["arch"] == "ttt" and zoo.from_spec(zoo.spec_of(lm)).num_params() == lm.num_params()
    idx = torch.randint(0, 20, (2, 40))
    loss = lm({"idx": idx, "targets": idx})
    loss.backward()
    assert all(p.grad is not None for p in lm.parameters())  # W_0, η gate, inner LN: all learn
    with torch.no_grad():
        logits, state = lm.prefill(idx[:, :37], lm.init_state(2))
        sizes = {state_bytes(state["layers"])}
        for t in range(37, 40):
            step_logits, state = lm.step(idx[:, t], state)
            sizes.add(state_bytes(state["layers"]))
        full = lm.logits(idx)
    torch.testing.assert_close(step_logits, full[:, -1], rtol=1e-4, atol=1e-4)
    assert len(sizes) == 1


@pytest.mark.parametrize("changes, needle", [
    (dict(inner="rnn"), "inner 'rnn'"),
    (dict(backbone="cnn"), "backbone 'cnn'"),
    (dict(inner="mlp", learn_init=False), "needs learn_init"),
    (dict(mini_batch=0), "mini_batch"),
])  # fmt: skip
def test_bad_configs_are_one_line_errors(changes, needle):
    with pytest.raises(PaperzooError, match=needle) as err:
        zoo.build("ttt", dict(vocab_size=20, d_model=32, n_layers=1, **changes))
    assert "\n" not in str(err.value)
