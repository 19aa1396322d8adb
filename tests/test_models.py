"""Structural tests for every model, guide and likelihood in the registries."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from ppl_vae.guides import GUIDES, make_guide
from ppl_vae.likelihoods import LIKELIHOODS, make_likelihood
from ppl_vae.models import MODELS, make_model
from ppl_vae.plots import generate
from ppl_vae.programs import PythonTarget
from ppl_vae.spec import GuideFactorSpec, GuideSpec, LatentSpec, ModelSpec, NetSpec, ObservedSpec

X_SHAPES = [(12,), (1, 4, 3)]

# A small config for every registry entry; a new entry without one fails test_every_entry_has_an_example.
MODEL_EXAMPLES = {
    "vae": lambda likelihood: MODELS["vae"].config_cls(latent_dim=3, hidden_dims=(7,), likelihood=likelihood),
    "spec": lambda likelihood: ModelSpec(
        latents=(LatentSpec("z", dim=3),), observed=ObservedSpec(likelihood=likelihood, net=NetSpec(hidden_dims=(7,)))
    ),
    "python": lambda likelihood: PythonTarget("tests.user_models:LikelihoodVAE", {"likelihood": likelihood}),
    "vqvae": lambda likelihood: MODELS["vqvae"].config_cls(
        num_codes=4, code_dim=3, encoder="mlp", num_latents=1, hidden_dims=(7,), likelihood=likelihood
    ),
}
#: the shape of z for a batch of 5 where it is not (5, 3): a VQ-VAE's z is a set of code vectors
Z_SHAPES = {"vqvae": (5, 1, 3)}
GUIDE_EXAMPLES = {
    "amortized": ("vae", lambda: GUIDES["amortized"].config_cls(hidden_dims=(6,))),
    "spec": ("spec", lambda: GuideSpec((GuideFactorSpec("z", net=NetSpec(hidden_dims=(6,))),))),
    "python": ("python", lambda: PythonTarget("tests.user_models:LinearGuide")),
    "vqvae": ("vqvae", lambda: GUIDES["vqvae"].config_cls()),
}


def _data(x_shape, n=5):
    return torch.rand(n, *x_shape).round()  # binary, so every likelihood accepts it


def _model_config(name, likelihood):
    return MODEL_EXAMPLES[name](likelihood)


def test_every_entry_has_an_example():
    assert set(MODEL_EXAMPLES) == set(MODELS)
    assert set(GUIDE_EXAMPLES) == set(GUIDES)


@pytest.mark.parametrize("x_shape", X_SHAPES)
@pytest.mark.parametrize("likelihood", sorted(LIKELIHOODS))
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_model_trace_shapes(model_name, likelihood, x_shape):
    model = make_model(model_name, x_shape, _model_config(model_name, likelihood))
    x = _data(x_shape)
    trace = poutine.trace(model).get_trace(x)
    trace.compute_log_prob()
    assert trace.nodes["z"]["value"].shape == Z_SHAPES.get(model_name, (5, 3))
    assert trace.nodes["x"]["is_observed"]
    assert trace.nodes["x"]["fn"].event_shape == x_shape
    assert trace.nodes["x"]["log_prob"].shape == (5,)
    assert torch.isfinite(trace.nodes["x"]["log_prob"]).all()
    assert [f.name for f in trace.nodes["z"]["cond_indep_stack"]] == ["data"]
    # generation: the data site unconditioned, num_samples points
    gen = generate(model, 4, x_shape)
    assert not gen.nodes["x"]["is_observed"]
    assert gen.nodes["x"]["value"].shape[:1] == (4,)


@pytest.mark.parametrize("x_shape", X_SHAPES)
@pytest.mark.parametrize("guide_name", sorted(GUIDES))
def test_guide_pairs_with_model(guide_name, x_shape):
    model_name, guide_config = GUIDE_EXAMPLES[guide_name]
    model = make_model(model_name, x_shape, _model_config(model_name, "bernoulli"))
    guide = make_guide(guide_name, model, guide_config())
    x = _data(x_shape)
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    latent_sites = {n for n, s in model_trace.nodes.items() if s["type"] == "sample" and not s["is_observed"] and n != "data"}
    # penalty sites (add_penalty: auxiliary factors, e.g. a VQ-VAE's codebook term) are not latents
    guide_sites = {
        n for n, s in guide_trace.nodes.items() if s["type"] == "sample" and n != "data" and not s["infer"].get("is_auxiliary")
    }
    assert latent_sites == guide_sites == {"z"}
    assert torch.equal(model_trace.nodes["z"]["value"], guide_trace.nodes["z"]["value"])
    assert guide_trace.nodes["z"]["fn"].event_shape == model_trace.nodes["z"]["fn"].event_shape
    assert math.isfinite(pyro.infer.Trace_ELBO().loss(model, guide, x))


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_likelihood_shapes_and_support(name):
    x_shape = (2, 3)
    lik = make_likelihood(name, x_shape)
    out = torch.randn(4, lik.num_outputs)
    d = lik(out)
    assert d.event_shape == x_shape and d.batch_shape == (4,)
    x = torch.rand(4, *x_shape).round()
    lp = d.log_prob(lik.observe(x))
    assert lp.shape == (4,) and torch.isfinite(lp).all()
    with pytest.raises(ValueError, match="decoder outputs of size"):
        lik(torch.randn(4, lik.num_outputs + 1))


def test_bernoulli_is_the_elementwise_sum():
    lik = make_likelihood("bernoulli", (5,))
    logits = torch.randn(3, 5)
    x = torch.rand(3, 5).round()
    expected = -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    assert torch.allclose(lik(logits).log_prob(x), expected, atol=1e-5)


def test_normal_likelihood_value():
    lik = make_likelihood("normal", (2,), scale=0.5)
    loc = torch.tensor([[0.0, 1.0]])
    x = torch.tensor([[0.5, 0.0]])
    expected = sum(-0.5 * ((xi - mi) / 0.5) ** 2 - math.log(0.5) - 0.5 * math.log(2 * math.pi) for xi, mi in [(0.5, 0.0), (0.0, 1.0)])
    assert lik(loc).log_prob(x).item() == pytest.approx(expected, abs=1e-5)


def test_bernoulli_refuses_grey_levels_unless_allowed():
    x = torch.full((2, 3), 0.5)
    with pytest.raises(ValueError, match="binary"):
        make_likelihood("bernoulli", (3,)).check_data(x)
    make_likelihood("bernoulli", (3,), allow_nonbinary=True).check_data(x)
    # the opt-in also scores soft targets without Pyro's validation error
    lp = make_likelihood("bernoulli", (3,), allow_nonbinary=True)(torch.zeros(2, 3)).log_prob(x)
    assert torch.allclose(lp, torch.full((2,), 3 * math.log(0.5)))


def test_categorical256_maps_grey_levels_to_integers():
    lik = make_likelihood("categorical256", (2,))
    assert lik.observe(torch.tensor([[0.0, 1.0]])).tolist() == [[0, 255]]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_model_config_rejects_bad_latent_dim(bad):
    with pytest.raises(ValueError, match="latent_dim"):
        MODELS["vae"].config_cls(latent_dim=bad)


@pytest.mark.parametrize("x_shape,n", [((784,), 1), ((1, 28, 28), 3)])
def test_the_bernoulli_likelihood_has_the_log_density_and_gradient_of_independent_bernoullis(x_shape, n):
    from ppl_vae.likelihoods import BernoulliLikelihood, IndependentBernoulli

    torch.manual_seed(0)
    out = torch.randn(3, 5, math.prod(x_shape), requires_grad=True)
    x = torch.bernoulli(torch.full((5, *x_shape), 0.3))
    ours = BernoulliLikelihood(x_shape)(out)
    assert isinstance(ours, IndependentBernoulli) and ours.event_shape == x_shape and ours.batch_shape == (3, 5)
    reference = dist.Bernoulli(logits=out.reshape(3, 5, *x_shape)).to_event(n)
    (g_ours,) = torch.autograd.grad(ours.log_prob(x).sum(), out)
    (g_ref,) = torch.autograd.grad(reference.log_prob(x).sum(), out)
    torch.testing.assert_close(ours.log_prob(x), reference.log_prob(x), rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=0)
    assert ours.expand((2, 3, 5)).log_prob(x).shape == (2, 3, 5)
    with pytest.raises(ValueError, match="support"):
        ours.log_prob(x * 0.5 + 0.25)


def test_adam_is_the_fused_kernel_and_takes_the_default_implementations_step():
    from ppl_vae.inference.training import OptimConfig, make_optimizer

    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    fused, plain = make_optimizer(a, OptimConfig(lr=0.01)), torch.optim.Adam(b, lr=0.01)
    assert fused.param_groups[0]["fused"]
    for _ in range(5):
        for p, q in zip(a, b):
            p.grad = q.grad = torch.randn_like(p)
        fused.step(), plain.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
