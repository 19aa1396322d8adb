"""Declarative specs: shipped specs train and evaluate, YAML-only models, equivalence, and invalid specs."""

from __future__ import annotations

import math
from pathlib import Path

import pyro
import pytest
import torch
import yaml
from pyro import poutine

from ppl_vae import ConfigError, DataConfig, estimator_config, EvalConfig, evaluate, fit, load_dataset
from ppl_vae.cli import main
from ppl_vae.config import config_from_dict, load_config
from ppl_vae.models import VAE, VAEConfig
from ppl_vae.models.presets import SPECS
from ppl_vae.guides import AmortizedGuideConfig, make_guide
from ppl_vae.spec import (
    GuideFactorSpec,
    GuideSpec,
    LatentSpec,
    ModelSpec,
    NetSpec,
    ObservedSpec,
    SpecError,
)
from ppl_vae.compile import compile_spec

from .helpers import quick_train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def digits():
    return {flat: load_dataset(DataConfig(name="digits", num_train=64, flatten=flat)) for flat in (True, False)}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_shipped_spec_compiles_trains_and_evaluates(name, digits):
    shipped = SPECS[name]
    data = digits[shipped.flatten]
    model, guide = compile_spec(shipped.model, shipped.guide, data.x_shape)
    before = [p.detach().clone() for p in list(model.parameters()) + list(guide.parameters())]
    result = fit(
        model, guide, data, estimator=estimator_config(shipped.estimator),
        train=quick_train(epochs=1, batch_size=32, val_every=0),
    )
    assert math.isfinite(result.final_loss)
    after = list(model.parameters()) + list(guide.parameters())
    assert sum(not torch.equal(a, b) for a, b in zip(before, after)) > len(before) // 2
    # Evaluate without labels where the model can do without them; a conditional model needs y.
    needs_y = bool(shipped.model.inputs)
    out = evaluate(model, guide, data.x_test[:20], data.y_test[:20] if needs_y else None, EvalConfig(num_samples=8))
    assert math.isfinite(out.elbo) and out.log_likelihood >= out.elbo - 1e-4


@pytest.mark.parametrize("name", sorted(SPECS))
def test_shipped_config_mirrors_the_registry(name):
    config = load_config(ROOT / "configs" / "specs" / f"{name}.yaml")
    assert config.model.config == SPECS[name].model
    assert config.guide.config == SPECS[name].guide
    assert config.estimator.name == SPECS[name].estimator
    assert config.data.flatten == SPECS[name].flatten


def test_every_shipped_config_is_in_the_registry():
    assert sorted(p.stem for p in (ROOT / "configs" / "specs").glob("*.yaml")) == sorted(SPECS)


def test_compiled_vae_equals_hand_written_vae():
    x_shape, hidden, latent = (64,), (32,), 5
    hand_model = VAE(x_shape, VAEConfig(latent_dim=latent, hidden_dims=hidden))
    hand_guide = make_guide("amortized", hand_model, AmortizedGuideConfig(hidden_dims=hidden))
    net = NetSpec(hidden_dims=hidden)
    spec_model, spec_guide = compile_spec(
        ModelSpec(latents=(LatentSpec("z", dim=latent),), observed=ObservedSpec(parents=("z",), net=net)),
        GuideSpec((GuideFactorSpec("z", "normal", ("x",), net),)),
        x_shape,
    )
    # Same parameters: decoders are identical MLPs; the hand guide's last layer is the spec head's linear map.
    spec_model.decoder.load_state_dict(hand_model.decoder.state_dict())
    with torch.no_grad():
        spec_guide.trunks["z"].load_state_dict(hand_guide.trunk.state_dict())
        spec_guide.heads["z"].load_state_dict(hand_guide.heads["z"].state_dict())
    x = torch.rand(16, 64).round()
    losses = []
    for model, guide in [(hand_model, hand_guide), (spec_model, spec_guide)]:
        pyro.set_rng_seed(7)
        losses.append(pyro.infer.Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1).loss(model, guide, x))
    # The prior scale is softplus(raw) + 1e-4 = 1 up to float rounding, hence a tolerance of 1e-4 relative.
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_compiled_modules_are_ordinary_pyro_modules():
    shipped = SPECS["hierarchical"]
    model, guide = compile_spec(shipped.model, shipped.guide, (64,))
    x = torch.rand(3, 64).round()
    trace = poutine.trace(model).get_trace(x)
    assert [n for n, s in trace.nodes.items() if s["type"] == "sample"] == ["data", "z2", "z1", "x"]
    assert trace.nodes["z1"]["value"].shape == (3, 100)
    graphviz = pytest.importorskip("graphviz")
    graph = pyro.render_model(model, model_args=(x, None))
    assert isinstance(graph, graphviz.Digraph)
    assert "z2" in graph.source and "z1" in graph.source


YAML_MODELS = {
    "three_level": """
        model:
          name: spec
          latents:
            - {name: z3, dim: 2}
            - {name: z2, dim: 3, parents: [z3], net: {hidden_dims: [16]}}
            - {name: z1, dim: 4, parents: [z2], net: {hidden_dims: [16]}}
          observed: {parents: [z1], net: {hidden_dims: [32]}}
        guide:
          name: spec
          factors:
            - {name: z1, conditions_on: [x], net: {hidden_dims: [32]}}
            - {name: z2, conditions_on: [z1], net: {hidden_dims: [16]}}
            - {name: z3, conditions_on: [z2], net: {hidden_dims: [16]}}
    """,
    "laplace_prior_normal_likelihood": """
        data: {binarize: none}
        model:
          name: spec
          latents:
            - {name: z, family: laplace, dim: 4}
          observed: {likelihood: normal_learned, parents: [z], net: {hidden_dims: [32]}}
        guide:
          name: spec
          factors:
            - {name: z, head: laplace, net: {hidden_dims: [32]}}
    """,
    "two_independent_groups": """
        model:
          name: spec
          latents:
            - {name: style, dim: 3}
            - {name: content, dim: 3, prior: learned}
          observed: {parents: [style, content], net: {hidden_dims: [32]}}
        guide:
          name: spec
          factors:
            - {name: style, net: {hidden_dims: [32]}}
            - {name: content, net: {hidden_dims: [32]}}
    """,
}


@pytest.mark.parametrize("name", sorted(YAML_MODELS))
def test_new_model_in_yaml_alone_fits_and_evaluates_from_the_cli(name, tmp_path, capsys):
    raw = yaml.safe_load(YAML_MODELS[name])
    raw.setdefault("data", {}).update(name="digits", num_train=100)
    raw["train"] = {"epochs": 2, "batch_size": 50, "progress": False, "device": "cpu"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["fit", str(path), "--out-dir", str(tmp_path), "--name", "run", "--no-figures"]) == 0
    assert main(["evaluate", str(tmp_path / "run"), "--num-samples", "10"]) == 0
    out = capsys.readouterr().out
    assert "log p(x) (importance)" in out
    assert (tmp_path / "run" / "evaluation.json").is_file()
    assert main(["show", str(path), "--graph", str(tmp_path / "g.png")]) == 0
    assert "Model p:" in capsys.readouterr().out


def _spec_config(latents, observed=None, factors=None, estimator="trace", data=None):
    raw = {
        "data": data or {"name": "digits"},
        "model": {"name": "spec", "latents": latents, "observed": observed or {"parents": ["z"]}},
        "estimator": {"name": estimator},
    }
    if factors is not None:
        raw["guide"] = {"name": "spec", "factors": factors}
    return raw


INVALID = {
    "unknown parent": (
        _spec_config([{"name": "z", "parents": ["w"]}]),
        ["'z'", "unknown parent 'w'"],
    ),
    "unknown parent of x": (
        _spec_config([{"name": "z"}], observed={"parents": ["q"]}),
        ["'x'", "unknown parent 'q'"],
    ),
    "cycle": (
        _spec_config([{"name": "a", "parents": ["b"]}, {"name": "b", "parents": ["a"]}], observed={"parents": ["a"]},
                     factors=[{"name": "a"}, {"name": "b"}]),
        ["cycle", "'a'"],
    ),
    "latent not covered by the guide": (
        _spec_config([{"name": "z"}, {"name": "w"}], observed={"parents": ["z", "w"]}, factors=[{"name": "z"}]),
        ["'w'", "not covered"],
    ),
    "guide site the model lacks": (
        _spec_config([{"name": "z"}], factors=[{"name": "z"}, {"name": "u"}]),
        ["'u'", "no latent"],
    ),
    "unknown model family": (
        _spec_config([{"name": "z", "family": "gamma"}]),
        ["'z'", "unknown family 'gamma'"],
    ),
    "unknown guide family": (
        _spec_config([{"name": "z"}], factors=[{"name": "z", "head": "cauchy"}]),
        ["'z'", "cauchy"],
    ),
    "event-shape mismatch between model and guide": (
        _spec_config([{"name": "z", "family": "categorical", "dim": 10}], factors=[{"name": "z", "head": "normal"}]),
        ["'z'", "cannot stand in"],
    ),
    "unknown guide condition": (
        _spec_config([{"name": "z"}], factors=[{"name": "z", "conditions_on": ["x", "v"]}]),
        ["'z'", "'v'"],
    ),
    "conv decoder does not fit the image": (
        _spec_config([{"name": "z"}], observed={"parents": ["z"], "net": {"kind": "conv", "channels": [8, 8, 8, 8]}},
                     data={"name": "digits", "flatten": False}),
        ["'x'", "divisible by 16"],
    ),
    "conv network on vectors": (
        _spec_config([{"name": "z"}], factors=[{"name": "z", "net": {"kind": "conv"}}]),
        ["'z'", "flatten: false"],
    ),
    "conv network for a latent": (
        _spec_config([{"name": "w"}, {"name": "z", "parents": ["w"], "net": {"kind": "conv"}}]),
        ["'z'", "conv"],
    ),
    "enumerating a continuous latent": (
        _spec_config([{"name": "z", "enumerate": True}]),
        ["'z'", "discrete"],
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_spec_names_the_variable(case, tmp_path, capsys):
    raw, fragments = INVALID[case]
    with pytest.raises(ConfigError) as info:
        config = config_from_dict(raw)
        # network-size rules need the data's shape: they surface when the experiment is built
        from ppl_vae.experiment import build_experiment

        build_experiment(config)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    # and through the CLI: one line, exit code 2, no traceback
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["fit", str(path), "--out-dir", str(tmp_path), "--set", "train.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ppl-vae: error:") and "Traceback" not in err


def test_discrete_latent_with_a_pathwise_estimator_is_refused_naming_the_site():
    data = load_dataset(DataConfig(name="digits", num_train=20))
    shipped = SPECS["bernoulli_vae"]
    model, guide = compile_spec(shipped.model, shipped.guide, data.x_shape)
    with pytest.raises(ConfigError, match="'z'"):
        fit(model, guide, data, estimator="trace", train=quick_train(epochs=1))


def test_spec_error_is_a_config_error():
    with pytest.raises(SpecError):
        compile_spec(ModelSpec(latents=(LatentSpec("z", parents=("nope",)),)), GuideSpec(), (4,))


def test_conditional_model_samples_cycle_through_classes(tmp_path):
    from ppl_vae.plots import plot_samples, sample_images

    shipped = SPECS["cvae"]
    model, _ = compile_spec(shipped.model, shipped.guide, (64,))
    images = sample_images(model, 20, (64,), seed=0)
    assert images.shape == (20, 64)
    # the same z with different classes gives different images: the class reaches the decoder
    z = torch.randn(1, 20).expand(10, 20)
    means = model.x_dist({"z": z, "y": torch.arange(10)}).mean
    assert not torch.allclose(means[0], means[1])
    assert plot_samples(model, 20, (1, 8, 8), tmp_path / "s.png").is_file()
