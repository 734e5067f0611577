from dataclasses import dataclass, field

import pytest
from omegaconf.errors import ReadonlyConfigError

from common.config import BaseConfig, Optimizer, TrainConfig, flatten, load_config, to_plain, train_config
from common.errors import PaperzooError


@dataclass
class ModelSection:
    width: int = 8
    kind: str = "mlp"


@dataclass
class Schema(BaseConfig):
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainConfig = field(default_factory=TrainConfig)


@pytest.fixture
def configs(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "base.yaml").write_text("model: {width: 16}\ntrain: {lr: 0.01}\n")
    (folder / "smoke.yaml").write_text("train: {max_steps: 5}\n")
    (folder / "cpu.yaml").write_text("train: {max_steps: 50}\n")
    (folder / "gpu.yaml").write_text("train: {max_steps: 500}\nmodel: {width: 64}\n")
    return folder


def test_layers_apply_in_order(configs):
    cfg = load_config(Schema, configs, ["scale=gpu", "train.max_steps=7"])
    assert (cfg.scale, cfg.model.width, cfg.train.lr, cfg.train.max_steps) == ("gpu", 64, 0.01, 7)
    assert load_config(Schema, configs, ["scale=smoke"]).train.max_steps == 5


def test_default_preset_without_gpu_is_cpu(configs):
    import torch

    assert load_config(Schema, configs, []).scale == ("gpu" if torch.cuda.is_available() else "cpu")


def test_unknown_key_names_it_and_the_valid_keys(configs):
    with pytest.raises(PaperzooError) as err:
        load_config(Schema, configs, ["train.max_stepz=3"])
    message = str(err.value)
    assert "train.max_stepz" in message and "max_steps" in message and "\n" not in message


def test_unknown_key_in_a_preset_file_names_the_file(configs):
    (configs / "cpu.yaml").write_text("modle: {width: 3}\n")
    with pytest.raises(PaperzooError, match=r"unknown config key 'modle' \(cpu.yaml\)"):
        load_config(Schema, configs, ["scale=cpu"])


def test_wrong_type_names_the_key(configs):
    with pytest.raises(PaperzooError, match="train.max_steps") as err:
        load_config(Schema, configs, ["train.max_steps=many"])
    assert "\n" not in str(err.value)


def test_bad_choice_lists_the_choices(configs):
    with pytest.raises(PaperzooError, match="train.optimizer") as err:
        load_config(Schema, configs, ["train.optimizer=sgd"])
    assert "adamw" in str(err.value)


def test_unknown_preset(configs):
    with pytest.raises(
        PaperzooError, match=r"unknown preset 'tiny' \(scale=tiny\); choose one of smoke, cpu, gpu"
    ):
        load_config(Schema, configs, ["scale=tiny"])


def test_override_without_equals_sign(configs):
    with pytest.raises(PaperzooError, match="key=value"):
        load_config(Schema, configs, ["train.lr"])


def test_config_is_read_only_and_flattens_for_mlflow(configs):
    cfg = load_config(Schema, configs, ["scale=smoke"])
    with pytest.raises(ReadonlyConfigError):
        cfg.train.lr = 1.0
    flat = flatten(to_plain(cfg))
    assert flat["train.lr"] == 0.01 and flat["train.optimizer"] == "adamw" and flat["model.kind"] == "mlp"
    assert train_config(cfg.train).optimizer is Optimizer.adamw


def test_a_key_that_lives_under_a_section_gets_a_suggestion(configs):
    @dataclass
    class Nested(BaseConfig):
        copying: Schema = field(default_factory=Schema)

    (configs.parent / "nested").mkdir()
    for name in ("smoke", "cpu", "gpu"):
        (configs.parent / "nested" / f"{name}.yaml").write_text("{}\n")
    with pytest.raises(PaperzooError) as err:
        load_config(Nested, configs.parent / "nested", ["scale=cpu", "train.max_steps=3"])
    message = str(err.value)
    assert "unknown config key 'train'" in message and "did you mean copying.train.max_steps?" in message
