"""Tests of ppl_vae.config: parsing, checking, overrides and round trips of experiment configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ppl_vae.config import (
    ComponentConfig,
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    read_yaml,
)
from ppl_vae.data import DataConfig
from ppl_vae.errors import ConfigError
from ppl_vae.inference.fit import OptimConfig, TrainConfig
from ppl_vae.models import VAEConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(CONFIGS.glob("*.yaml"))


# -- errors name section.key -----------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"train": {"epoch": 3}}, "unknown key train.epoch (did you mean 'epochs'?)"),
        ({"model": {"latent_dims": 3}}, "unknown key model.latent_dims (did you mean 'latent_dim'?)"),
        ({"guide": {"hiden_dims": [3]}}, "unknown key guide.hiden_dims (did you mean 'hidden_dims'?)"),
        ({"data": {"nmae": "digits"}}, "unknown key data.nmae (did you mean 'name'?)"),
    ],
)
def test_unknown_key_names_it_and_suggests_the_closest(raw, expected):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert expected in str(info.value)
    assert "valid keys:" in str(info.value)


def test_unknown_key_without_a_close_match_lists_the_valid_keys():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"optim": {"zzz": 1}})
    message = str(info.value)
    assert "unknown key optim.zzz" in message and "did you mean" not in message
    assert "lr" in message and "betas" in message


def test_unknown_section_names_it():
    with pytest.raises(ConfigError, match=r"unknown section 'trian' \(did you mean 'train'\?\)"):
        config_from_dict({"trian": {"epochs": 3}})


@pytest.mark.parametrize(
    "raw, where, what",
    [
        ({"train": {"epochs": "ten"}}, "train.epochs", "must be an int, got 'ten' (str)"),
        ({"train": {"epochs": 2.5}}, "train.epochs", "must be an int, got 2.5 (float)"),
        ({"train": {"epochs": True}}, "train.epochs", "must be an int"),
        ({"data": {"num_train": 2.5}}, "data.num_train", "must be an int"),
        ({"model": {"hidden_dims": 128}}, "model.hidden_dims", "must be a list, got 128 (int)"),
        ({"model": {"hidden_dims": [64, "a"]}}, "model.hidden_dims[1]", "must be an int"),
        ({"optim": {"betas": [0.9]}}, "optim.betas", "must be a list of 2 values"),
        ({"optim": {"lr": "fast"}}, "optim.lr", "must be a number, got 'fast' (str)"),
        ({"train": {"progress": "yes"}}, "train.progress", "must be true or false"),
        ({"run": {"name": 3}}, "run.name", "must be a string"),
    ],
)
def test_wrong_type_names_the_key(raw, where, what):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert f"{where} {what}" in str(info.value)


@pytest.mark.parametrize(
    "raw, where, value",
    [
        ({"train": {"epochs": -1}}, "train.epochs", "-1"),
        ({"train": {"batch_size": 0}}, "train.batch_size", "0"),
        ({"train": {"device": "tpu"}}, "train.device", "'tpu'"),
        ({"optim": {"lr": -0.1}}, "optim.lr", "-0.1"),
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction", "1.5"),
        ({"data": {"name": "cifar"}}, "data.name", "'cifar'"),
        ({"data": {"binarize": "always"}}, "data.binarize", "'always'"),
        ({"model": {"activation": "relux"}}, "model.activation", "'relux'"),
        ({"model": {"likelihood": "gauss"}}, "model.likelihood", "'gauss'"),
        ({"model": {"hidden_dims": [64, -1]}}, "model.hidden_dims", "-1"),
        ({"guide": {"activation": "relux"}}, "guide.activation", "'relux'"),
        ({"estimator": {"name": "iwea"}}, "estimator.name", "'iwea'"),
        ({"eval": {"num_samples": 0}}, "eval.num_samples", "0"),
        ({"model": {"name": "pixelcnn"}}, "model.name", "'pixelcnn'"),
        ({"guide": {"name": "flow"}}, "guide.name", "'flow'"),
    ],
)
def test_invalid_value_names_the_key_and_the_value(raw, where, value):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    message = str(info.value)
    assert where in message
    assert value in message


def test_only_the_bad_key_is_named():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"model": {"latent_dim": 4, "activation": "tanh", "likelihood": "gauss"}})
    message = str(info.value)
    assert "model.likelihood" in message
    assert "model.activation" not in message and "model.latent_dim" not in message


@pytest.mark.parametrize(
    "raw, expected",
    [
        ([1, 2], "must be a mapping of sections, got list"),
        ({"train": 3}, "section 'train' must be a mapping"),
        ({"model": "vae"}, "section 'model' must be a mapping"),
    ],
)
def test_wrong_structure(raw, expected):
    with pytest.raises(ConfigError, match=expected):
        config_from_dict(raw)


def test_empty_config_is_the_default():
    assert config_from_dict({}) == ExperimentConfig()
    assert config_from_dict(None) == ExperimentConfig()
    assert config_from_dict({"model": None, "train": None}) == ExperimentConfig()


def test_values_are_converted_to_the_field_types():
    config = config_from_dict(
        {"optim": {"lr": 1, "betas": [0.5, 0.9]}, "model": {"latent_dim": 4, "hidden_dims": [16, 8]}}
    )
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.optim.betas == (0.5, 0.9)
    assert config.model == ComponentConfig("vae", VAEConfig(latent_dim=4, hidden_dims=(16, 8)))


# -- --set overrides -------------------------------------------------------------------------


def test_overrides_parse_yaml_values():
    config = load_config(
        CONFIGS / "vae_digits.yaml",
        [
            "optim.lr=1e-3",  # YAML 1.1 reads this as a string
            "train.epochs=7",
            "train.progress=false",
            "model.hidden_dims=[64, 32]",
            "data.num_train=null",
            "data.binarize=static",
            "eval.num_samples=7",
            "run.name=my run",
        ],
    )
    assert config.optim.lr == 1e-3 and isinstance(config.optim.lr, float)
    assert config.train.epochs == 7
    assert config.train.progress is False
    assert config.model.config.hidden_dims == (64, 32)
    assert config.data.num_train is None
    assert config.data.binarize == "static"
    assert config.eval.num_samples == 7
    assert config.run.name == "my run"
    # untouched values come from the file
    assert config.model.config.latent_dim == 8 and config.train.batch_size == 32


def test_later_overrides_win_and_the_input_is_not_changed():
    raw = {"train": {"epochs": 3, "seed": 1}}
    out = apply_overrides(raw, ["train.epochs=4", "train.epochs=5", "optim.lr=0.1"])
    assert out == {"train": {"epochs": 5, "seed": 1}, "optim": {"lr": 0.1}}
    assert raw == {"train": {"epochs": 3, "seed": 1}}


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epochs", "--set expects section.key=value (any depth: model.latents.z.dim=16), got 'train.epochs'"),
        ("epochs=3", "--set expects section.key=value (any depth"),
        ("m1.train.epochs=3", "this config has no m1 section"),
        ("train.=3", "--set expects section.key=value"),
        ("trian.epochs=3", "unknown section 'trian'"),
        ("model.hidden_dims=[64", "cannot parse the value '[64' as YAML: line 1, column 4: expected ',' or ']'"),
        ("train.epochs={a: b: c}", "line 1, column 6: expected ',' or '}', but got ':'"),
    ],
)
def test_malformed_override(override, expected):
    with pytest.raises(ConfigError) as info:
        apply_overrides({}, [override])
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_m1_stage_overrides():
    raw = {"m1": {"train": {"epochs": 20, "seed": 1}}, "train": {"epochs": 30}}
    out = apply_overrides(raw, ["m1.train.epochs=100", "m1.optim.lr=0.01", "train.epochs=5"])
    assert out == {"m1": {"train": {"epochs": 100, "seed": 1}, "optim": {"lr": 0.01}}, "train": {"epochs": 5}}
    assert raw["m1"]["train"]["epochs"] == 20
    with pytest.raises(ConfigError, match="unknown m1 section 'data'; valid: model, guide"):
        apply_overrides(raw, ["m1.data.name=digits"])
    config = load_config(CONFIGS / "m1m2_mnist_100.yaml", ["m1.train.epochs=7"])
    assert config.m1.train.epochs == 7 and config.train.epochs == 100


def test_overrides_reach_nested_fields_and_list_items_by_name_or_index():
    config = load_config(
        CONFIGS / "custom_model.yaml",
        ["model.latents.z.dim=16", "model.observed.allow_nonbinary=true", "guide.factors.0.head=iaf:2",
         "guide.factors.u.net.hidden_dims=[8, 8]"],
    )
    latents = {v.name: v for v in config.model.config.latents}
    assert latents["z"].dim == 16 and latents["u"].dim == 2
    assert config.model.config.observed.allow_nonbinary is True
    factors = {f.name: f for f in config.guide.config.factors}
    assert factors["z"].head == "iaf:2" and factors["u"].net.hidden_dims == (8, 8)
    # fields a config file leaves to their defaults are reached too
    vae = load_config(CONFIGS / "specs" / "vae.yaml", ["model.latents.z.dim=7", "model.latents.0.family=laplace"])
    assert vae.model.config.latents[0].dim == 7 and vae.model.config.latents[0].family == "laplace"


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.latents.w.dim=3", "model.latents has no item named 'w'; its items: ['u', 'z', 's']"),
        ("guide.factors.7.head=normal", "guide.factors has 3 items, so there is no item 7"),
        ("train.epochs.x=3", "train.epochs is 20, not a mapping or a list"),
        ("model.train.epochs=3", "unknown key model.train"),
        ("model.latents.z.dimm=3", "unknown key model.latents[1].dimm (did you mean 'dim'?)"),
    ],
)
def test_overrides_into_missing_items_name_what_exists(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "custom_model.yaml", [override])
    assert expected in str(info.value)


def test_override_with_a_bad_value_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.epochs must be an int, got 'many'"):
        load_config(CONFIGS / "vae_digits.yaml", ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"unknown key train\.epoch \(did you mean 'epochs'\?\)"):
        load_config(CONFIGS / "vae_digits.yaml", ["train.epoch=3"])


# -- files and round trips -------------------------------------------------------------------


def test_missing_config_file_names_it(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_invalid_yaml_file_names_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert str(path) in str(info.value)
    # one line: where, what, and the construct it was in
    assert str(info.value).endswith(
        "line 3, column 1: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence at line 2, column 11)"
    )


@pytest.mark.parametrize(
    "content, expected",
    [
        ("- data\n- model\n", "must hold a mapping of sections (data:, model:, train:, ...), but its top level is a list"),
        ("just words\n", "but its top level is a str"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff", "is not a text (YAML) file"),
        (b"train: \x00\n", "is not a text (YAML) file"),
        ("train: !!python/object:os.system x\n", "line 1, column 8: could not determine a constructor"),
    ],
    ids=["list", "scalar", "binary", "control-character", "python-tag"],
)
def test_a_file_that_is_not_a_config_mapping_is_one_line_naming_it(tmp_path, content, expected):
    path = tmp_path / "config.yaml"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    message = str(info.value)
    assert str(path) in message and expected in message and "\n" not in message


def test_a_folder_given_as_a_config_is_named(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a YAML file"):
        read_yaml(tmp_path)
    assert read_yaml(_write(tmp_path / "empty.yaml", "")) == {}


def _write(path, text: str):
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_configs_parse_and_round_trip(path):
    config = load_config(path)
    assert isinstance(config, ExperimentConfig)
    assert config_from_dict(config_to_dict(config)) == config
    # and through YAML text, as a run directory stores it
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(config_to_dict(config)))) == config


def test_both_shipped_configs_are_there():
    assert {p.name for p in SHIPPED} >= {"vae_digits.yaml", "vae_mnist.yaml"}
    digits = load_config(CONFIGS / "vae_digits.yaml")
    assert digits.data.name == "digits" and digits.model.config.latent_dim == 8
    mnist = load_config(CONFIGS / "vae_mnist.yaml")
    assert mnist.data.name == "mnist" and mnist.optim.betas == (0.9, 0.999)


def test_round_trip_of_a_non_default_config():
    config = ExperimentConfig(
        data=DataConfig(name="mnist", binarize="static", num_train=100, flatten=False, seed=3),
        model=ComponentConfig("vae", VAEConfig(latent_dim=3, hidden_dims=(16, 8), likelihood="normal", x_scale=0.5)),
        optim=OptimConfig(lr=1e-5, betas=(0.5, 0.99), schedule="exponential", gamma=0.9),
        train=TrainConfig(epochs=2, progress=False),
    )
    raw = config_to_dict(config)
    assert raw["model"]["name"] == "vae" and raw["model"]["hidden_dims"] == [16, 8]
    assert raw["optim"]["betas"] == [0.5, 0.99]
    assert config_from_dict(raw) == config
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(raw))) == config
