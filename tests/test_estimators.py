"""Estimators: every registry entry trains; mean gradients match exact ones; IWAE, DReG, baselines, enum, refusals.

Statistical tests compare a Monte-Carlo mean with an exact value. For a gradient
vector with per-draw variances v_j over R draws, the expected squared error of the
mean is sum_j v_j / R; each test allows 3 times its square root (the ratio is
about 1 for an unbiased estimator; the seeds are fixed) and checks first that the
exact value is large against that error, so a wrong or missing term would fail.
"""

from __future__ import annotations

import dataclasses
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO
from pyro.nn import PyroModule
from torch import nn
from torch.nn import functional as F

from ppl_vae import ConfigError, OptimConfig, RunDir, fit
from ppl_vae.inference.estimators import (
    ESTIMATORS,
    EstimatorConfig,
    estimator_config,
    make_estimator,
    parse_estimator,
)
from ppl_vae.inference.checks import check_estimator
from ppl_vae.inference.evaluate import log_weights
from ppl_vae.inference.gradients import gradient_stats
from ppl_vae.inference.iwae import IWAE_ELBO

from .helpers import ppca_vae, quick_train, tiny_vae

# Estimators that refuse a non-reparameterized guide site even with allow_score_function:
# TraceMeanField_ELBO needs reparameterized sites, and Pyro's RenyiELBO has no correct score term.
REFUSES_DISCRETE = {"meanfield", "jit_meanfield", "renyi"}
JIT_NAMES = sorted(n for n in ESTIMATORS if n.startswith("jit_"))


def _accepts(name: str, arg: str) -> bool:
    try:
        parse_estimator(f"{name}:{arg}")
    except ValueError:
        return False
    return True


def _with_score_function(config: EstimatorConfig) -> EstimatorConfig:
    """The config with allow_score_function set, where its estimator has that option."""
    if not hasattr(config.options, "allow_score_function"):
        return config
    return EstimatorConfig(config.name, dataclasses.replace(config.options, allow_score_function=True))


BASELINED = sorted(f"{n}:{b}" for n in ESTIMATORS for b in ("avg", "nn") if _accepts(n, b))
ENUM_NAMES = sorted(n for n in ESTIMATORS if ESTIMATORS[n].enumerates)


def _slow_if(names, slow) -> list:
    """``names`` as parameters, those for which ``slow(name)`` holds marked slow (they run under ``-m slow``)."""
    return [pytest.param(n, marks=pytest.mark.slow) if slow(n) else n for n in names]


def _compiles(name: str) -> bool:
    """A JIT entry that compiles (about 0.15 s a test); such cases run under ``-m slow`` where marked.

    The default run still checks every JIT entry: each one's loss and gradient equal its twin's on a small VAE
    (test_jit_entry_gives_its_twin_loss_and_gradient_on_the_same_seed), jit_enum's are the exact sum over the
    discrete latent (test_enum_loss_and_gradient_are_the_exact_sum_over_the_discrete_latent), jit_trace's and
    jit_tracegraph's score-function gradients are unbiased (the discrete mean-gradient test keeps them), and every
    one trains with a ragged last batch."""
    return name.startswith("jit_") and name not in REFUSES_DISCRETE


# ---------------------------------------------------------------------------------------------
# Small models with exact answers
# ---------------------------------------------------------------------------------------------

C, D = 3, 6  # classes of the discrete latent, size of x


class CategoricalModel(PyroModule):
    """z ~ Categorical(softmax(prior_logits)); x | z ~ Bernoulli(logits = decoder(one_hot(z)))."""

    def __init__(self) -> None:
        super().__init__()
        self.prior_logits = nn.Parameter(torch.tensor([0.3, -0.2, 0.1]))
        self.decoder = nn.Linear(C, D)

    def forward(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Categorical(logits=self.prior_logits))
            # one_hot keeps any enumeration dims on the left: (..., N, C) -> (..., N, D)
            logits = self.decoder(F.one_hot(z, C).to(x.dtype))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


class CategoricalGuide(PyroModule):
    """q(z | x) = Categorical(logits = encoder(x)), an unedited guide (no infer options)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(D, C)

    def forward(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Categorical(logits=self.encoder(x)))


def exact_categorical_elbo(model: CategoricalModel, guide: CategoricalGuide, x: torch.Tensor) -> torch.Tensor:
    """(N,) ELBO by summing over the C values of z by hand."""
    log_q = F.log_softmax(guide.encoder(x), -1)  # (N, C)
    log_pz = F.log_softmax(model.prior_logits, -1)  # (C,)
    logits = model.decoder(torch.eye(C))  # (C, D): decoder output for each value of z
    log_px = dist.Bernoulli(logits=logits).to_event(1).log_prob(x.unsqueeze(1))  # (N, C)
    return (log_q.exp() * (log_pz + log_px - log_q)).sum(-1)


class GaussianModel(PyroModule):
    """z ~ Normal(0, 1); x | z ~ Normal(weight * z, sigma)."""

    sigma = 0.7

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(1.3))

    def forward(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
            pyro.sample("x", dist.Normal(self.weight * z, self.sigma), obs=x)


class GaussianGuide(PyroModule):
    """q(z | x) = Normal(a x + c, softplus(r))."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(0.2))
        self.c = nn.Parameter(torch.tensor(-0.3))
        self.r = nn.Parameter(torch.tensor(0.1))

    def forward(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.a * x + self.c, F.softplus(self.r)))


def exact_gaussian_elbo(model: GaussianModel, guide: GaussianGuide, x: torch.Tensor) -> torch.Tensor:
    """(N,) ELBO in closed form: E_q log p(x|z) + E_q log p(z) + H[q]."""
    m, s, w, sigma = guide.a * x + guide.c, F.softplus(guide.r), model.weight, model.sigma
    log_lik = -0.5 * math.log(2 * math.pi * sigma**2) - ((x - w * m) ** 2 + w**2 * s**2) / (2 * sigma**2)
    log_prior = -0.5 * math.log(2 * math.pi) - (m**2 + s**2) / 2
    entropy = torch.log(s) + 0.5 * (1 + math.log(2 * math.pi))
    return log_lik + log_prior + entropy


def _params(*modules) -> list[torch.Tensor]:
    return [p for m in modules for p in m.parameters()]


def _exact_gradient(loss: torch.Tensor, params) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def _draw_gradients(elbo, model, guide, x, num_draws: int) -> torch.Tensor:
    """(num_draws, P) independent draws of the gradient of the loss (per data point), as fit scales it."""
    params = _params(model, guide)
    draws = []
    for _ in range(num_draws):
        for p in params:
            p.grad = None
        with poutine.scale(scale=1.0 / x.shape[0]):
            elbo.loss_and_grads(model, guide, x)
        draws.append(torch.cat([p.grad.reshape(-1) for p in params]))
    return torch.stack(draws)


def _discrete_problem(num_points: int = 4, repeats: int = 250):
    """The categorical model, and a batch of 4 points, each repeated: one call averages 250 draws per point."""
    torch.manual_seed(0)
    model, guide = CategoricalModel(), CategoricalGuide()
    x = (torch.rand(num_points, D) < 0.5).float()
    return model, guide, x, x.repeat(repeats, 1)


# ---------------------------------------------------------------------------------------------
# (a) every registry entry trains
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_every_estimator_trains_a_tiny_vae_with_a_ragged_last_batch(name):
    model, guide = tiny_vae((10,), latent_dim=2, hidden=8)
    x = torch.rand(50, 10).round()
    before = [p.detach().clone() for p in _params(model, guide)]
    config = estimator_config(name, num_particles=2)
    # batches of 20, 20 and 10: JIT entries must recompile for the last one (its scale is 1/10)
    result = fit(model, guide, x, estimator=config, train=quick_train(epochs=2, batch_size=20))
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    # Uniform random pixels: no model beats their entropy, 10 log 2 = 6.93 nats, by much (2 epochs cannot overfit).
    assert 6.5 < losses[-1] < 9
    assert all(not torch.equal(a, b) for a, b in zip(before, _params(model, guide)))


@pytest.mark.parametrize("name", _slow_if(sorted(ESTIMATORS), _compiles))
def test_every_estimator_trains_a_discrete_latent_model_or_refuses_it_by_site(name):
    # Training through fit must raise the exact ELBO (summed over the 3 values of z by hand, so independent of the
    # estimator) of the training points. 15 Adam steps at lr 0.02 raise it by 0.16-0.25 nats per point for every
    # entry (measured, train seeds 0-3; score-function entries are the noisiest), so the tolerance is a rise of at
    # least 0.05: an estimator whose steps go the wrong way, do nothing, or blow up fails. (That each gradient is
    # unbiased is checked by test_mean_gradient_matches_enumerated_elbo_gradient_discrete.)
    model, guide, x, _ = _discrete_problem(num_points=60, repeats=1)
    config = _with_score_function(estimator_config(name))
    if name in REFUSES_DISCRETE:
        with pytest.raises(ConfigError, match="'z'"):
            fit(model, guide, x, estimator=config, train=quick_train(epochs=1, batch_size=20))
        return
    with torch.no_grad():
        before = exact_categorical_elbo(model, guide, x).mean().item()
    train = quick_train(epochs=5, batch_size=20)
    result = fit(model, guide, x, estimator=config, optim=OptimConfig(lr=0.02), train=train)
    assert all(math.isfinite(row["train_loss"]) for row in result.history)
    with torch.no_grad():
        after = exact_categorical_elbo(model, guide, x).mean().item()
    assert after > before + 0.05, (before, after)


# ---------------------------------------------------------------------------------------------
# (b) mean gradients equal exact gradients
# ---------------------------------------------------------------------------------------------


def _assert_unbiased(draws: torch.Tensor, exact: torch.Tensor, exact_estimator: bool = False) -> None:
    mean, mc_error = draws.mean(0), (draws.var(0).sum() / draws.shape[0]).sqrt()
    if exact_estimator:
        assert torch.allclose(mean, exact, atol=1e-5, rtol=1e-4)
        return
    assert exact.norm() > 5 * mc_error, "the test could not tell a wrong gradient from the right one"
    assert (mean - exact).norm() < 3 * mc_error


@pytest.mark.parametrize("name", _slow_if(sorted(ESTIMATORS), _compiles))
def test_mean_gradient_matches_closed_form_elbo_gradient_gaussian(name):
    # With one particle every entry (iwae and renyi included) estimates the ELBO's gradient.
    torch.manual_seed(1)
    model, guide = GaussianModel(), GaussianGuide()
    x = torch.randn(5) * 1.5
    exact = _exact_gradient(-exact_gaussian_elbo(model, guide, x).mean(), _params(model, guide))
    elbo = make_estimator(estimator_config(name))
    draws = _draw_gradients(elbo, model, guide, x.repeat(400), num_draws=10)  # each draw averages 400 per point
    _assert_unbiased(draws, exact)


# jit_trace and jit_tracegraph stay in the default run: their score-function gradients are not compared with the
# twin's elsewhere.
@pytest.mark.parametrize(
    "spec",
    _slow_if(
        sorted(n for n in ESTIMATORS if n not in REFUSES_DISCRETE) + BASELINED,
        lambda spec: _compiles(spec) and spec not in ("jit_trace", "jit_tracegraph"),
    ),
)
def test_mean_gradient_matches_enumerated_elbo_gradient_discrete(spec):
    # Score-function sites (trace and iwae by opt-in; tracegraph with and without baselines) and enumeration.
    model, guide, x, xr = _discrete_problem(repeats=500)
    exact = _exact_gradient(-exact_categorical_elbo(model, guide, x).mean(), _params(model, guide))
    elbo = make_estimator(_with_score_function(parse_estimator(spec)))
    check_estimator(elbo, model, guide, xr[:2])
    draws = _draw_gradients(elbo, model, guide, xr, num_draws=10)  # each draw averages 500 per point
    _assert_unbiased(draws, exact, exact_estimator=spec in ENUM_NAMES)


# ---------------------------------------------------------------------------------------------
# (c) the importance-weighted bound
# ---------------------------------------------------------------------------------------------


def _ppca(posterior_scale_factor=1.3, loc_shift=0.0):
    g = torch.Generator().manual_seed(1)
    W = torch.randn(6, 2, generator=g)
    b = torch.randn(6, generator=g) * 0.3
    x = torch.randn(40, 6, generator=g) * 1.5 + b
    model, guide, exact = ppca_vae(W, b, 0.5, posterior_scale_factor, loc_shift)
    return model, guide, x, exact, W, b


def _closed_form_ppca_elbo(guide, x, W, b, sigma=0.5) -> torch.Tensor:
    q = guide.latent_dist("z", x)
    m, s = q.mean, q.stddev  # (N, d)
    D, d = W.shape
    log_lik = -0.5 * D * math.log(2 * math.pi * sigma**2) - (
        (x - m @ W.T - b).pow(2).sum(-1) + (s.pow(2) * W.pow(2).sum(0)).sum(-1)
    ) / (2 * sigma**2)
    log_prior = -0.5 * d * math.log(2 * math.pi) - (m.pow(2) + s.pow(2)).sum(-1) / 2
    entropy = s.log().sum(-1) + 0.5 * d * (1 + math.log(2 * math.pi))
    return log_lik + log_prior + entropy


def test_iwae_bound_rises_with_k_towards_the_ppca_log_likelihood():
    model, guide, x, exact, W, b = _ppca()
    log_lik = exact(x).mean().item()
    bounds = {}
    with torch.no_grad():
        for k in (1, 5, 50):
            elbo = IWAE_ELBO(num_particles=k)
            values = []
            for _ in range(50):
                with poutine.scale(scale=1.0 / x.shape[0]):
                    values.append(-elbo.loss(model, guide, x))
            v = torch.tensor(values, dtype=torch.float64)
            bounds[k] = (v.mean().item(), v.std().item() / math.sqrt(len(v)))
        elbo_exact = _closed_form_ppca_elbo(guide, x, W, b).mean().item()
    (l1, s1), (l5, s5), (l50, s50) = bounds[1], bounds[5], bounds[50]
    assert l1 == pytest.approx(elbo_exact, abs=4 * s1)  # K = 1 is the ELBO in expectation
    assert l5 - l1 > 4 * math.hypot(s1, s5)
    assert l50 - l5 > 4 * math.hypot(s5, s50)
    assert l50 < log_lik + 4 * s50  # a lower bound ...
    assert log_lik - l50 < 0.1 * (log_lik - l1)  # ... that has closed 90% of the ELBO's gap at K = 50


def test_iwae_with_one_sample_is_trace_elbo_on_the_same_draw():
    model, guide, x, *_ = _ppca(loc_shift=0.3)
    params = _params(model, guide)
    results = []
    for elbo in (IWAE_ELBO(num_particles=1), Trace_ELBO()):
        pyro.set_rng_seed(7)
        for p in params:
            p.grad = None
        with poutine.scale(scale=1.0 / x.shape[0]):
            loss = elbo.loss_and_grads(model, guide, x)
        results.append((loss, torch.cat([p.grad.reshape(-1) for p in params])))
    (loss_iwae, grad_iwae), (loss_trace, grad_trace) = results
    assert loss_iwae == pytest.approx(loss_trace, rel=1e-5)
    assert torch.allclose(grad_iwae, grad_trace, rtol=1e-4, atol=1e-5)


def test_iwae_log_sum_exp_is_per_data_point():
    # The loss equals the per-point log-mean-exp of the evaluation's log weights on the same draws.
    model, guide, x, *_ = _ppca(posterior_scale_factor=1.5)
    k, n = 5, x.shape[0]
    pyro.set_rng_seed(11)
    with torch.no_grad():
        lw = log_weights(model, guide, x, num_samples=k, max_plate_nesting=1)  # (K, N)
    expected = -(lw.logsumexp(0) - math.log(k)).mean().item()
    pyro.set_rng_seed(11)
    with poutine.scale(scale=1.0 / n):
        ours = IWAE_ELBO(num_particles=k).loss(model, guide, x)
    assert ours == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_renyi_computes_the_documented_formula_inside_fit(alpha):
    # What Pyro's RenyiELBO computes under fit's scale s = 1/B (ppl_vae.inference.estimators' docstring):
    # -1/(1-alpha) sum_i (logsumexp_k((1-alpha) s log w_ik) - log K), on the same draws as log_weights.
    # For alpha = 0 that is not the per-point IWAE bound, which it misses by more than 0.05 nats here.
    model, guide, x, *_ = _ppca(posterior_scale_factor=1.5)
    k, n = 5, x.shape[0]
    pyro.set_rng_seed(11)
    with torch.no_grad():
        lw = log_weights(model, guide, x, num_samples=k, max_plate_nesting=1)  # (K, N)
    documented = -(((1 - alpha) * lw / n).logsumexp(0) - math.log(k)).sum().item() / (1 - alpha)
    pyro.set_rng_seed(11)
    with poutine.scale(scale=1.0 / n):
        renyi = make_estimator(f"renyi:{alpha}:{k}").loss(model, guide, x)
    assert renyi == pytest.approx(documented, rel=1e-5)
    if alpha == 0:
        iwae = -(lw.logsumexp(0) - math.log(k)).mean().item()
        assert abs(renyi - iwae) > 0.05


@pytest.mark.parametrize("gradient", ["reparam", "dreg"])
def test_iwae_particles_in_a_loop_equal_vectorized_particles(gradient):
    model, guide, x, *_ = _ppca(loc_shift=0.3)
    params = _params(model, guide)
    out = []
    for vectorize in (True, False):
        config = estimator_config("iwae", num_particles=4, gradient=gradient, vectorize_particles=vectorize)
        elbo = make_estimator(config)
        pyro.set_rng_seed(5)
        for p in params:
            p.grad = None
        with poutine.scale(scale=1.0 / x.shape[0]):
            loss = elbo.loss_and_grads(model, guide, x)
        out.append((loss, torch.cat([p.grad.reshape(-1) for p in params])))
    assert out[0][0] == pytest.approx(out[1][0], rel=1e-6)
    assert torch.allclose(out[0][1], out[1][1], rtol=1e-4, atol=1e-6)


def test_gradient_stats_measures_the_exact_mean_and_leaves_parameters_and_grads_alone():
    torch.manual_seed(1)
    model, guide = GaussianModel(), GaussianGuide()
    x = torch.randn(5).repeat(100)
    exact = _exact_gradient(-exact_gaussian_elbo(model, guide, x).mean(), _params(model, guide))
    before = [p.detach().clone() for p in _params(model, guide)]
    stats = gradient_stats(model, guide, "trace", x, num_draws=30, seed=0)
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(before, _params(model, guide)))
    mean = torch.cat([stats.groups["decoder"].mean, stats.groups["encoder"].mean]).float()  # model params first
    mc_error = math.sqrt((stats.groups["decoder"].variance.sum() + stats.groups["encoder"].variance.sum()) / 30)
    assert (mean - exact).norm() < 3 * mc_error < exact.norm() / 5
    assert stats.groups["encoder"].num_params == 3 and stats.groups["decoder"].num_params == 1
    exact_loss = -exact_gaussian_elbo(model, guide, x).mean().item()
    assert stats.loss_mean == pytest.approx(exact_loss, abs=4 * stats.loss_stderr)
    with pytest.raises(ConfigError, match="'z'"):  # the compatibility check runs first
        gradient_stats(CategoricalModel(), CategoricalGuide(), "trace", torch.rand(8, D).round(), num_draws=2)


# ---------------------------------------------------------------------------------------------
# (d) baselines lower the score-function variance
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_baselines_lower_the_variance_of_the_score_function_gradient():
    model, guide, x, _ = _discrete_problem(num_points=16, repeats=4)
    variances = {}
    for baseline in ("none", "avg", "nn"):
        pyro.set_rng_seed(0)
        elbo = make_estimator(estimator_config("tracegraph", baseline=baseline, baseline_hidden_dims=(16,)))
        check_estimator(elbo, model, guide, x[:2])  # builds the baselines
        optimizer = torch.optim.Adam(elbo.trainable_module.parameters(), lr=0.02) if baseline == "nn" else None
        for _ in range(60 if optimizer else 10):  # warm up the running average; train the network
            with poutine.scale(scale=1.0 / x.shape[0]):
                elbo.loss_and_grads(model, guide, x)
            if optimizer:
                optimizer.step()
                optimizer.zero_grad()
        for p in _params(model, guide):
            p.grad = None
        stats = gradient_stats(model, guide, elbo, x, num_draws=20, seed=1)
        variances[baseline] = stats.groups["encoder"].mean_variance
        assert stats.groups["encoder"].num_params == C * D + C
    # Measured (pyro seeds 0-4 with draw seeds 1-5): avg/none 0.015-0.023 and nn/avg 0.28-0.39, from 20 draws each.
    assert variances["avg"] < 0.2 * variances["none"]
    assert variances["nn"] < 0.7 * variances["avg"]


# ---------------------------------------------------------------------------------------------
# (e) enumeration is exact
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENUM_NAMES)
def test_enum_loss_and_gradient_are_the_exact_sum_over_the_discrete_latent(name):
    model, guide, x, _ = _discrete_problem(num_points=7)
    params = _params(model, guide)
    exact_loss = -exact_categorical_elbo(model, guide, x).mean()
    exact_grad = _exact_gradient(exact_loss, params)
    elbo = make_estimator(name)
    for _ in range(2):  # the second call of a JIT entry runs the compiled graph
        for p in params:
            p.grad = None
        with poutine.scale(scale=1.0 / x.shape[0]):
            loss = elbo.loss_and_grads(model, guide, x)
        assert loss == pytest.approx(exact_loss.item(), rel=1e-6)
        assert torch.allclose(torch.cat([p.grad.reshape(-1) for p in params]), exact_grad, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# (f) DReG
# ---------------------------------------------------------------------------------------------


def test_dreg_has_the_iwae_mean_gradient_and_a_lower_guide_variance():
    model, guide, x, *_ = _ppca(posterior_scale_factor=1.3, loc_shift=0.4)
    xr = x[:10].repeat(20, 1)  # 20 draws of each of 10 points per call
    plain = gradient_stats(model, guide, "iwae:8", xr, num_draws=60, seed=0)
    dreg = gradient_stats(model, guide, "iwae:8:dreg", xr, num_draws=60, seed=1)
    for group in ("encoder", "decoder"):
        p, d = plain.groups[group], dreg.groups[group]
        mc_error = ((p.variance + d.variance).sum() / 60).sqrt().item()
        assert p.mean_norm > 5 * mc_error, group
        assert (p.mean - d.mean).norm().item() < 3 * mc_error, group
    # Measured (seeds 0 and 2): variance ratio 0.058, SNR 3.0 -> 12.3.
    assert dreg.groups["encoder"].mean_variance < 0.15 * plain.groups["encoder"].mean_variance
    assert dreg.groups["encoder"].snr_norm > 2 * plain.groups["encoder"].snr_norm
    assert dreg.loss_mean == pytest.approx(plain.loss_mean, abs=4 * math.hypot(dreg.loss_stderr, plain.loss_stderr))


# ---------------------------------------------------------------------------------------------
# (g) refusals
# ---------------------------------------------------------------------------------------------


class NonReparamNormalGuide(PyroModule):
    """A continuous guide site without a pathwise sampler, for :class:`GaussianModel`."""

    def __init__(self) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(()))

    def forward(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(self.loc, 1.0).has_rsample_(False))


def test_enum_refuses_a_continuous_non_reparameterizable_site():
    model, guide = GaussianModel(), NonReparamNormalGuide()
    x = torch.randn(20)
    for name in ENUM_NAMES:
        with pytest.raises(ConfigError, match=r"enum cannot handle guide site 'z'"):
            check_estimator(make_estimator(name), model, guide, x[:2])
    check_estimator(make_estimator("tracegraph"), model, guide, x[:2])  # the score function can train it


def test_pathwise_estimators_refuse_a_discrete_site_without_opt_in():
    model, guide, x, _ = _discrete_problem(num_points=10, repeats=1)
    for name in ("trace", "iwae", "jit_trace"):
        with pytest.raises(ConfigError, match=r"discrete guide site 'z'.*allow_score_function"):
            fit(model, guide, x, estimator=name, train=quick_train(epochs=1))
        check_estimator(make_estimator(estimator_config(name, allow_score_function=True)), model, guide, x[:2])
    for spec in ("iwae:3:dreg", "iwae:3:dreg:allow_score_function=true"):
        with pytest.raises(ConfigError, match=r"dreg needs reparameterized guide sites, but guide site 'z'"):
            check_estimator(make_estimator(spec), model, guide, x[:2])


class HierarchicalGuide(PyroModule):
    """q(z1 | x) q(z2 | z1): z2's distribution depends on z1."""

    def __init__(self) -> None:
        super().__init__()
        self.loc = nn.Linear(10, 2)
        self.link = nn.Linear(2, 2)

    def forward(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(self.loc(x), 1.0).to_event(1))
            pyro.sample("z2", dist.Normal(self.link(z1), 1.0).to_event(1))


class Wrapper(ELBO):
    """An estimator that wraps another one, as KL weighting does (``.base``)."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError


def test_check_estimator_looks_through_wrappers_and_prepares_their_base():
    model, guide, x, _ = _discrete_problem(num_points=4, repeats=1)
    with pytest.raises(ConfigError, match="'z'"):
        check_estimator(Wrapper(make_estimator("iwae")), lambda x, y=None: None, guide, x[:2])
    base = make_estimator("tracegraph:nn")
    check_estimator(Wrapper(base), model, guide, x[:2])
    assert list(base.trainable_module.keys()) == ["z"]


def test_dreg_refuses_a_guide_whose_sites_feed_each_other():
    x = torch.rand(4, 10).round()
    with pytest.raises(ConfigError, match=r"guide site 'z2' depends on 'z1'"):
        check_estimator(make_estimator("iwae:4:dreg"), lambda x, y=None: None, HierarchicalGuide(), x[:2])
    check_estimator(make_estimator("iwae:4"), lambda x, y=None: None, HierarchicalGuide(), x[:2])


# ---------------------------------------------------------------------------------------------
# (h) the neural baseline trains and survives checkpoint and resume
# ---------------------------------------------------------------------------------------------


def test_neural_baseline_trains_and_resumes_exactly(tmp_path):
    x = (torch.rand(40, D, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    train = dict(batch_size=10, val_every=0)

    def run(epochs, name, resume=False):
        model, guide, _, _ = _discrete_problem()
        elbo = make_estimator("tracegraph:nn")
        run_dir = RunDir(tmp_path / name) if resume else RunDir.create(tmp_path, name)
        fit(model, guide, x, estimator=elbo, train=quick_train(epochs=epochs, **train), run_dir=run_dir, resume=resume)
        return model, guide, elbo

    # fit builds the baselines from the training seed (0): the same initial state as here
    elbo = make_estimator("tracegraph:nn")
    model, guide, _, _ = _discrete_problem()
    pyro.set_rng_seed(0)
    check_estimator(elbo, model, guide, x[:2])
    initial = {k: v.clone() for k, v in elbo.trainable_module.state_dict().items()}
    assert any("net" in k for k in initial)
    full = run(2, "full")
    trained = full[2].trainable_module.state_dict()
    assert all(not torch.equal(initial[k], trained[k]) for k in initial), "every baseline tensor should move"

    run(1, "cut")
    resumed = run(2, "cut", resume=True)
    for a, b in zip(_params(full[0], full[1]), _params(resumed[0], resumed[1])):
        assert torch.equal(a, b)
    for key, value in trained.items():
        assert torch.equal(value, resumed[2].trainable_module.state_dict()[key]), key


# ---------------------------------------------------------------------------------------------
# JIT twins, names and configs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", JIT_NAMES)
def test_jit_entry_gives_its_twin_loss_and_gradient_on_the_same_seed(name):
    twin = name.removeprefix("jit_")
    assert twin in ESTIMATORS
    model, guide = tiny_vae((10,), latent_dim=2, hidden=8)
    x = torch.rand(12, 10).round()
    params = _params(model, guide)
    jit = make_estimator(estimator_config(name, num_particles=3))
    plain = make_estimator(estimator_config(twin, num_particles=3))
    for batch in (x, x[:5]):  # a second shape and scale: compiled again, not replayed with the old scale
        with poutine.scale(scale=1.0 / batch.shape[0]):
            jit.loss_and_grads(model, guide, batch)  # compile (consumes random numbers differently)
        out = []
        for elbo in (jit, plain):
            pyro.set_rng_seed(3)
            for p in params:
                p.grad = None
            with poutine.scale(scale=1.0 / batch.shape[0]):
                loss = elbo.loss_and_grads(model, guide, batch)
            out.append((loss, torch.cat([p.grad.reshape(-1) for p in params])))
        assert out[0][0] == pytest.approx(out[1][0], rel=1e-5)
        assert torch.allclose(out[0][1], out[1][1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("trace", dict(name="trace")),
        ("trace:10", dict(name="trace", num_particles=10)),
        ("tracegraph:avg", dict(name="tracegraph", baseline="avg")),
        ("tracegraph:nn:4", dict(name="tracegraph", baseline="nn", num_particles=4)),
        ("jit_tracegraph:nn:baseline_beta=0.95", dict(name="jit_tracegraph", baseline="nn", baseline_beta=0.95)),
        ("iwae:5", dict(name="iwae", num_particles=5)),
        ("iwae:50:dreg", dict(name="iwae", num_particles=50, gradient="dreg")),
        ("renyi:0.5", dict(name="renyi", alpha=0.5)),
        ("renyi:-1:8", dict(name="renyi", alpha=-1.0, num_particles=8)),
        ("trace:allow_score_function=true", dict(name="trace", allow_score_function=True)),
        ("iwae:3:vectorize_particles=false", dict(name="iwae", num_particles=3, vectorize_particles=False)),
    ],
)
def test_parse_estimator(text, expected):
    assert parse_estimator(text) == estimator_config(**expected)
    assert make_estimator(text) is not None


@pytest.mark.parametrize(
    "text, message",
    [
        ("tracegrpah", "unknown estimator 'tracegrpah'"),
        ("iwae:abc", "iwae"),
        ("trace:0", "positive int"),
        ("trace:2:3", "takes 'trace\\[:K\\]'"),
        ("renyi:x", "takes 'renyi\\[:ALPHA\\]\\[:K\\]'"),
        ("renyi:1", "alpha must be a finite number other than 1"),
        ("tracegraph:avg:avg", "tracegraph"),
        ("iwae:5:colour=red", "unknown estimator option 'colour'"),
        ("enum:allow_score_function=true", "unknown estimator option 'allow_score_function'"),
        ("", "estimator name is required"),
    ],
)
def test_parse_estimator_refuses_bad_text(text, message):
    with pytest.raises(ValueError, match=message):
        parse_estimator(text)


def test_parse_estimator_keeps_base_fields_and_drops_options_of_other_estimators():
    base = estimator_config("iwae", num_particles=5, gradient="dreg", max_plate_nesting=2)
    assert parse_estimator("tracegraph:avg", base) == estimator_config(
        "tracegraph", num_particles=5, baseline="avg", max_plate_nesting=2
    )


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(name="trace", gradient="dreg"), "estimator 'trace' takes no option 'gradient'"),
        (dict(name="trace", baseline="avg"), "estimator 'trace' takes no option 'baseline'"),
        (dict(name="tracegraph", baseline="mean"), "estimator.baseline must be one of"),
        (dict(name="tracegraph", site_baselines={"z": "big"}), "estimator.site_baselines['z']"),
        (dict(name="tracegraph", baseline_beta=1.0), "estimator.baseline_beta must be in"),
        (dict(name="tracegraph", baseline_input="y"), "estimator.baseline_input must be one of"),
        (dict(name="renyi", alpha=1.0), "estimator.alpha"),
        (dict(name="iwae", num_particles=0), "estimator.num_particles"),
        (dict(name="iwae", allow_score_function="yes"), "estimator.allow_score_function"),
    ],
)
def test_estimator_config_names_the_bad_field(kwargs, field):
    with pytest.raises(ValueError) as info:
        estimator_config(**kwargs)
    assert field in str(info.value)


def test_site_baselines_must_name_a_non_reparameterized_site():
    model, guide, x, _ = _discrete_problem(num_points=4, repeats=1)
    elbo = make_estimator(estimator_config("tracegraph", site_baselines={"w": "avg"}))
    with pytest.raises(ConfigError, match=r"site_baselines names \['w'\].*\['z'\]"):
        check_estimator(elbo, model, guide, x[:2])
    config = estimator_config("tracegraph", site_baselines={"z": "nn"}, baseline_input="x_and_upstream")
    elbo = make_estimator(config)
    check_estimator(elbo, model, guide, x[:2])
    assert list(elbo.trainable_module.keys()) == ["z"]
