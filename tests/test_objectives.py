"""Weighted-KL objectives: beta, schedules, free bits, site selection, units, and checkpointed schedule state."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.nn import PyroModule

from ppl_vae import OptimConfig, RunDir, TrainConfig, fit
from ppl_vae.heads import make_head
from ppl_vae.inference.objectives import KLWeighting, kl_weighted
from ppl_vae.nets import MLP

X_DIM, Z_DIM, SIGMA, B = 5, 2, 0.7, 20


class _TwoLatentGaussian(PyroModule):
    """z1, z2 ~ N(0, I) (sites "z1", "z2"); x ~ N(W1 z1 + W2 z2 + b, sigma^2 I)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.register_buffer("W", torch.randn(X_DIM, 2 * Z_DIM, generator=g))
        self.register_buffer("b", torch.randn(X_DIM, generator=g) * 0.3)
        self.x_shape = (X_DIM,)

    def forward(self, x, y=None):
        prior = dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", prior)
            z2 = pyro.sample("z2", prior)
            loc = torch.cat([z1, z2], -1) @ self.W.T + self.b
            pyro.sample("x", dist.Normal(loc, SIGMA).to_event(1), obs=x)


class _TwoHeadGuide(PyroModule):
    """q(z1 | x) q(z2 | x), each a diagonal Normal head on x."""

    def __init__(self) -> None:
        super().__init__()
        self.h1 = make_head("normal", X_DIM, Z_DIM)
        self.h2 = make_head("normal", X_DIM, Z_DIM)

    def forward(self, x, y=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z1", self.h1(x))
            pyro.sample("z2", self.h2(x))


def _problem():
    model, guide = _TwoLatentGaussian(), _TwoHeadGuide()
    x = torch.randn(B, X_DIM, generator=torch.Generator().manual_seed(6))
    return model, guide, x


def _hand(model, guide, x) -> tuple[float, float, float]:
    """Closed forms, means over points: E_q log p(x|z), KL(q(z1)||p), KL(q(z2)||p)."""
    with torch.no_grad():
        q1, q2 = guide.h1(x).base_dist, guide.h2(x).base_dist
        loc = torch.cat([q1.loc, q2.loc], -1)
        var = torch.cat([q1.scale, q2.scale], -1) ** 2
        resid = x - loc @ model.W.T - model.b
        trace = (var[:, None, :] * model.W.pow(2)).sum(-1)  # (B, X_DIM): diagonal of W diag(var) W^T
        rec = -0.5 * X_DIM * math.log(2 * math.pi * SIGMA**2) - (resid.pow(2) + trace).sum(-1) / (2 * SIGMA**2)

        def kl(q):
            return 0.5 * (q.scale.pow(2) + q.loc.pow(2) - 1 - q.scale.pow(2).log()).sum(-1)

        return rec.mean().item(), kl(q1).mean().item(), kl(q2).mean().item()


def _loss(objective, model, guide, x, seed: int = 1, scale: float | None = 1.0 / B, grads: bool = False) -> float:
    """The objective's loss as ``fit`` computes it (inside ``poutine.scale(1/B)``), with a fixed seed."""
    pyro.set_rng_seed(seed)
    with poutine.scale(scale=scale if scale is not None else 1.0):
        if grads:
            return objective.loss_and_grads(model, guide, x)
        return objective.loss(model, guide, x)


# ---------------------------------------------------------------------------------------------
# Configuration and schedules.


@pytest.mark.parametrize(
    "field, value",
    [
        ("beta", -0.1),
        ("beta", float("nan")),
        ("free_bits", -1.0),
        ("sites", "z"),
        ("sites", ("z", "z")),
        ("schedule", "cosine"),
        ("warmup_steps", -1),
        ("cycle_steps", 2.5),
        ("cycle_ramp", 0.0),
    ],
)
def test_bad_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"kl_weighting.{field}"):
        KLWeighting(**{field: value})


def test_schedules_need_their_lengths():
    with pytest.raises(ValueError, match="warmup_steps"):
        KLWeighting(schedule="linear")
    with pytest.raises(ValueError, match="cycle_steps"):
        KLWeighting(schedule="cyclical")


def test_schedule_values():
    constant = KLWeighting(beta=0.25)
    assert [constant.weight(t) for t in (0, 7, 10**6)] == [0.25, 0.25, 0.25]
    linear = KLWeighting(beta=2.0, schedule="linear", warmup_steps=10)
    assert [linear.weight(t) for t in (0, 1, 5, 10, 11, 1000)] == pytest.approx([0, 0.2, 1.0, 2.0, 2.0, 2.0])
    cyclical = KLWeighting(schedule="cyclical", cycle_steps=10, cycle_ramp=0.5)
    expected = [0, 0.2, 0.4, 0.6, 0.8, 1, 1, 1, 1, 1, 0, 0.2, 0.4]  # rises over half of each cycle, then holds
    assert [cyclical.weight(t) for t in range(13)] == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------
# Losses against hand computations.


def test_beta_scales_the_analytic_kl_exactly():
    # With TraceMeanField_ELBO the KL is analytic and the reconstruction uses the same samples for the same
    # seed, so loss(beta) - loss(1) = (beta - 1) KL exactly (float32 round-off only).
    model, guide, x = _problem()
    base = TraceMeanField_ELBO()
    _, kl1, kl2 = _hand(model, guide, x)
    ref = _loss(base, model, guide, x)
    for beta in (0.0, 0.3, 4.0):
        loss = _loss(kl_weighted(base, KLWeighting(beta=beta)), model, guide, x)
        assert loss - ref == pytest.approx((beta - 1) * (kl1 + kl2), abs=1e-4)


def test_beta_loss_matches_the_closed_form_in_expectation():
    # Trace_ELBO: L(beta) = -E log p(x|z) + beta KL with Monte-Carlo estimates. Same seed: L is exactly linear
    # in beta; its value and slope match the closed forms within 5 Monte-Carlo standard errors.
    model, guide, x = _problem()
    particles = 2000
    base = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    rec, kl1, kl2 = _hand(model, guide, x)
    losses = {beta: _loss(kl_weighted(base, KLWeighting(beta=beta)), model, guide, x) for beta in (0.0, 0.5, 1.0)}
    assert losses[0.5] == pytest.approx(0.5 * (losses[0.0] + losses[1.0]), abs=1e-4)
    # Monte-Carlo errors, from draws of the same estimators
    with torch.no_grad():
        q1, q2 = guide.h1(x), guide.h2(x)
        z1, z2 = q1.sample((particles,)), q2.sample((particles,))
        p = dist.Normal(torch.zeros(Z_DIM), 1.0).to_event(1)
        kl_draws = q1.log_prob(z1) - p.log_prob(z1) + q2.log_prob(z2) - p.log_prob(z2)  # (particles, B)
        loc = torch.cat([z1, z2], -1) @ model.W.T + model.b
        rec_draws = dist.Normal(loc, SIGMA).to_event(1).log_prob(x)
    n = particles * B
    se_kl, se_rec = kl_draws.std().item() / math.sqrt(n), rec_draws.std().item() / math.sqrt(n)
    assert losses[0.0] == pytest.approx(-rec, abs=5 * se_rec)
    assert losses[1.0] - losses[0.0] == pytest.approx(kl1 + kl2, abs=5 * se_kl)


def test_free_bits_floor_replaces_a_small_kl_by_lambda():
    # Each site's batch-mean KL (about 1 nat here) is below lambda = 10, so the KL part of the loss is
    # beta * lambda per site, whatever the guide; the reconstruction part is unchanged for the same seed.
    model, guide, x = _problem()
    _, kl1, kl2 = _hand(model, guide, x)
    assert max(kl1, kl2) < 10
    base = TraceMeanField_ELBO()
    rec_only = _loss(kl_weighted(base, KLWeighting(beta=0.0)), model, guide, x)
    floored = _loss(kl_weighted(base, KLWeighting(beta=0.5, free_bits=10.0)), model, guide, x)
    assert floored - rec_only == pytest.approx(0.5 * 10.0 * 2, abs=1e-4)  # two sites
    # A floor below both KLs changes nothing: the trace-assembled loss equals Pyro's own.
    low = _loss(kl_weighted(base, KLWeighting(beta=0.5, free_bits=min(kl1, kl2) / 2)), model, guide, x)
    assert low == pytest.approx(_loss(kl_weighted(base, KLWeighting(beta=0.5)), model, guide, x), abs=1e-4)


@pytest.mark.parametrize(
    "base",
    [Trace_ELBO(), TraceMeanField_ELBO(), Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)],
    ids=["trace", "meanfield", "trace-vectorized-3"],
)
def test_free_bits_loss_assembled_from_traces_equals_the_base_elbo_when_inactive(base):
    # lambda tiny: the floor is never active, and the loss must equal the base estimator's (same seed).
    model, guide, x = _problem()
    inactive = _loss(kl_weighted(base, KLWeighting(free_bits=1e-9)), model, guide, x)
    assert inactive == pytest.approx(_loss(base, model, guide, x), abs=1e-4)


def test_free_bits_stays_in_nats_per_point_without_the_outer_scale():
    # Without fit's poutine.scale(1/B) Pyro sums over the batch; the floor still applies to the per-point
    # mean KL, so the whole loss is exactly B times the per-point loss.
    model, guide, x = _problem()
    objective = kl_weighted(TraceMeanField_ELBO(), KLWeighting(free_bits=10.0))
    per_point = _loss(objective, model, guide, x)
    summed = _loss(objective, model, guide, x, scale=None)
    assert summed == pytest.approx(B * per_point, rel=1e-5)


def test_active_free_bits_leave_only_the_reconstruction_gradient():
    model, guide, x = _problem()
    base = TraceMeanField_ELBO()

    def grads(weighting):
        guide.zero_grad()
        _loss(kl_weighted(base, weighting), model, guide, x, grads=True)
        return [p.grad.clone() for p in guide.parameters()]

    floored = grads(KLWeighting(free_bits=10.0))
    rec_only = grads(KLWeighting(beta=0.0))
    full = grads(KLWeighting())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(floored, rec_only))
    assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(floored, full))


def test_sites_choose_which_kl_is_weighted():
    model, guide, x = _problem()
    base = TraceMeanField_ELBO()
    _, kl1, _ = _hand(model, guide, x)
    only_z1 = _loss(kl_weighted(base, KLWeighting(beta=0.0, sites=("z1",))), model, guide, x)
    assert _loss(base, model, guide, x) - only_z1 == pytest.approx(kl1, abs=1e-4)
    with pytest.raises(ValueError, match="'w'"):
        _loss(kl_weighted(base, KLWeighting(beta=0.5, sites=("w",))), model, guide, x)


def test_score_function_sites_and_free_bits_on_other_estimators_are_refused():
    class Discrete(PyroModule):
        def forward(self, x, y=None):
            with pyro.plate("data", x.shape[0]):
                c = pyro.sample("c", dist.Bernoulli(0.5 * torch.ones(X_DIM)).to_event(1))
                pyro.sample("x", dist.Normal(c, 1.0).to_event(1), obs=x)

    head = make_head("bernoulli", X_DIM, X_DIM)

    def discrete_guide(x, y=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("c", head(x))

    x = torch.randn(4, X_DIM)
    with pytest.raises(ValueError, match="reparameterized"):
        kl_weighted(Trace_ELBO(), KLWeighting(beta=0.5)).loss(Discrete(), discrete_guide, x)
    with pytest.raises(ValueError, match="free bits need pathwise"):
        kl_weighted(Trace_ELBO(), KLWeighting(free_bits=1.0)).loss(Discrete(), discrete_guide, x)
    with pytest.raises(ValueError, match="free_bits"):
        kl_weighted(TraceGraph_ELBO(), KLWeighting(free_bits=1.0))


# ---------------------------------------------------------------------------------------------
# The schedule's state: advances per training step, drives the loss, survives checkpoints.


def test_annealing_weight_advances_per_step_and_is_the_one_used():
    model, guide, x = _problem()
    weighting = KLWeighting(beta=1.0, schedule="linear", warmup_steps=4)
    objective = kl_weighted(TraceMeanField_ELBO(), weighting)
    for t in range(6):
        assert objective.step == t and objective.kl_weight == weighting.weight(t)
        reference = _loss(kl_weighted(TraceMeanField_ELBO(), KLWeighting(beta=weighting.weight(t))), model, guide, x)
        assert _loss(objective, model, guide, x, grads=True) == pytest.approx(reference, abs=1e-4)
    assert objective.step == 6
    # loss() and differentiable_loss() do not advance the schedule
    _loss(objective, model, guide, x)
    objective.differentiable_loss(model, guide, x)
    assert objective.step == 6


def test_schedule_state_round_trips_through_state_dict():
    weighting = KLWeighting(schedule="cyclical", cycle_steps=7)
    objective = kl_weighted("meanfield", weighting)
    model, guide, x = _problem()
    for _ in range(3):
        _loss(objective, model, guide, x, grads=True)
    state = objective.trainable_module.state_dict()
    assert set(state) == {"step"} and int(state["step"]) == 3
    fresh = kl_weighted("meanfield", weighting)
    fresh.trainable_module.load_state_dict(state)
    assert fresh.step == 3 and fresh.kl_weight == objective.kl_weight == weighting.weight(3)


def test_fit_checkpoints_and_resumes_the_schedule(tmp_path):
    model, guide, _ = _problem()
    x = torch.randn(60, X_DIM, generator=torch.Generator().manual_seed(7))
    weighting = KLWeighting(schedule="linear", warmup_steps=100)
    train = dict(batch_size=20, progress=False, device="cpu", val_every=0)
    run = RunDir.create(tmp_path, "run")
    first = kl_weighted("trace", weighting)
    fit(model, guide, x, estimator=first, train=TrainConfig(epochs=1, **train), run_dir=run)
    assert first.step == 3  # 60 points in batches of 20
    resumed = kl_weighted("trace", weighting)
    fit(model, guide, x, estimator=resumed, train=TrainConfig(epochs=2, **train), run_dir=run, resume=True)
    assert resumed.step == 6


# ---------------------------------------------------------------------------------------------
# Free bits against posterior collapse.


class _NoiseVAE(PyroModule):
    """Two latent groups and an MLP decoder, trained on data that do not depend on z."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = MLP(2 * Z_DIM, (16,), X_DIM, "tanh")
        self.x_shape = (X_DIM,)

    def forward(self, x, y=None):
        prior = dist.Normal(x.new_zeros(Z_DIM), 1.0).to_event(1)
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", prior)
            z2 = pyro.sample("z2", prior)
            pyro.sample("x", dist.Normal(self.decoder(torch.cat([z1, z2], -1)), 1.0).to_event(1), obs=x)


def _site_kls(guide, x) -> list[float]:
    with torch.no_grad():
        p = dist.Normal(torch.zeros(Z_DIM), 1.0).to_event(1)
        return [torch.distributions.kl_divergence(h(x), p).mean().item() for h in (guide.h1, guide.h2)]


@pytest.mark.slow  # two 160-step trainings per base; the free-bits loss itself is checked exactly above
@pytest.mark.parametrize("base", ["meanfield", "trace"])
def test_free_bits_keep_each_group_from_collapsing(base):
    # x ~ N(0, 0.81 I) with unit observation noise: encoding x in z costs more KL than it gains in
    # reconstruction, so the ELBO optimum is posterior collapse (KL = 0). The guide starts informative
    # (KL > 4 nats per group). Measured after 160 steps: 0.006-0.021 per group without free bits;
    # 0.495-0.507 with lambda = 0.5 (the floor acts on batch means of 64 points, and nothing pushes a
    # group back up once below it but the weak reconstruction gain, so the tolerance is 20% below lambda).
    x = torch.randn(256, X_DIM, generator=torch.Generator().manual_seed(0)) * 0.9
    lam = 0.5
    kls = {}
    for free_bits in (0.0, lam):
        pyro.set_rng_seed(0)
        model, guide = _NoiseVAE(), _TwoHeadGuide()
        with torch.no_grad():  # an informative start: spread-out means, smaller scales
            for head in (guide.h1, guide.h2):
                head.linear.weight[:Z_DIM] *= 3
                head.linear.bias[Z_DIM:] -= 1
        assert min(_site_kls(guide, x)) > 4
        fit(
            model,
            guide,
            x,
            estimator=kl_weighted(base, KLWeighting(free_bits=free_bits)),
            optim=OptimConfig(lr=0.05, schedule="cosine"),
            train=TrainConfig(epochs=40, batch_size=64, progress=False, device="cpu", val_every=0),
        )
        kls[free_bits] = _site_kls(guide, x)
    assert max(kls[0.0]) < 0.1 * lam  # collapsed
    assert min(kls[lam]) > 0.8 * lam  # held near the floor, per group


def test_kl_weighting_section_of_a_config_wraps_the_estimator():
    from ppl_vae.config import config_from_dict
    from ppl_vae.experiment import training_estimator
    from ppl_vae.inference.objectives import KLWeighted_ELBO

    plain = config_from_dict({"data": {"name": "digits"}})
    assert not isinstance(training_estimator(plain), KLWeighted_ELBO)
    weighted = config_from_dict({"data": {"name": "digits"}, "kl_weighting": {"beta": 4.0}})
    objective = training_estimator(weighted)
    assert isinstance(objective, KLWeighted_ELBO) and objective.kl_weight == 4.0
