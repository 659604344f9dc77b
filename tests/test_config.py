import dataclasses

import pytest

from songrec_jax.config import (
    Config,
    DataConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    load_config,
    preset,
    save_config,
)
from songrec_jax.errors import ConfigError


def test_configs_are_frozen_and_replaced():
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model.kind = "mlp"
    changed = config.replace(model=dataclasses.replace(config.model, kind="mlp"))
    assert changed.model.kind == "mlp" and config.model.kind == "vae"


@pytest.mark.parametrize(
    "build, fragment",
    [
        (lambda: ModelConfig(kind="gan"), "model.kind='gan'"),
        (lambda: ModelConfig(dims=()), "model.dims"),
        (lambda: ModelConfig(dims=(600, -1)), "model.dims"),
        (lambda: ModelConfig(n_songs=-5), "model.n_songs=-5"),
        (lambda: ModelConfig(pooling="max"), "'max'"),
        (lambda: LossConfig(name="mse"), "loss.name='mse'"),
        (lambda: LossConfig(beta=-1.0), "loss.beta=-1.0"),
        (lambda: TrainConfig(batch_size=0), "train.batch_size=0"),
        (lambda: TrainConfig(learning_rate=float("nan")), "learning_rate"),
        (lambda: TrainConfig(val_fraction=0.6, test_fraction=0.5), "< 1"),
        (lambda: DataConfig(source="lastfm-hetrec"), "data.path"),
        (lambda: DataConfig(source="spotify", path="x"), "'spotify'"),
    ],
)
def test_invalid_values_raise_config_error_naming_them(build, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        build()
    assert fragment in str(info.value)


def test_name_lists_kind_dims_loss_and_changed_fields():
    assert Config().name == "vae_600-200_ce"
    config = Config(
        model=ModelConfig(kind="mlp", dims=(300, 50)),
        train=TrainConfig(learning_rate=0.01),
    )
    assert config.name == "mlp_300-50_ce_learning_rate=0.01"
    assert Config(model=ModelConfig(n_songs=7)).name == Config().name


def test_toml_round_trip(tmp_path):
    config = Config(
        model=ModelConfig(kind="mlp", dims=(32, 8), pooling="attention"),
        loss=LossConfig(name="focal", beta=0.5),
        train=TrainConfig(seed=3),
    )
    save_config(config, tmp_path / "c.toml")
    assert load_config(tmp_path / "c.toml") == config


def test_unknown_fields_and_bad_files_raise(tmp_path):
    (tmp_path / "a.toml").write_text("[model]\nkinds = 'mlp'\n")
    with pytest.raises(ConfigError, match="kinds"):
        load_config(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "b.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="unknown config sections"):
        Config.from_dict({"optimizer": {}})


@pytest.mark.parametrize("name", ["mlp_h2", "vae_h2", "mult_vae", "demo"])
def test_presets_load(name):
    config = preset(name)
    assert config.model.dims[-1] < config.model.dims[0]


def test_mult_vae_preset_matches_the_paper():
    config = preset("mult_vae")
    assert config.model.dims == (600, 200) and config.loss.name == "ce"
    assert config.loss.beta == pytest.approx(0.2) and config.loss.anneal_steps > 0


def test_unknown_preset_lists_available():
    with pytest.raises(ConfigError, match="demo"):
        preset("nope")
