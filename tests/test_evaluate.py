"""Evaluation: per-data-point log weights, the importance-sampled log p(x), and exactness on PPCA."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from ppl_vae import EvalConfig, evaluate, importance_log_likelihood, log_weights

from .helpers import ppca_vae, tiny_vae


def _ppca_problem(orthogonal: bool, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    D, d = 6, 2
    W = torch.randn(D, d, generator=g)
    if orthogonal:  # orthogonal columns make the exact posterior diagonal
        W = torch.linalg.qr(W).Q * torch.tensor([2.0, 1.0])
    b = torch.randn(D, generator=g) * 0.3
    x = torch.randn(40, D, generator=g) * 1.5 + b
    return W, b, x


def test_log_weights_are_exact_with_the_exact_posterior():
    # With q(z|x) = p(z|x), every log weight equals log p(x) exactly, whatever z was drawn.
    W, b, x = _ppca_problem(orthogonal=True)
    model, guide, exact = ppca_vae(W, b, sigma=0.5)
    lw = log_weights(model, guide, x, num_samples=7)
    assert lw.shape == (7, 40)
    assert torch.allclose(lw, exact(x).expand(7, 40), atol=1e-4)
    # chunked log-sum-exp gives the exact value too, for any chunk size
    ll, elbo = importance_log_likelihood(model, guide, x, num_samples=20, chunk_size=7)
    assert torch.allclose(ll, exact(x), atol=1e-4)
    assert torch.allclose(elbo, exact(x), atol=1e-4)


def test_importance_sampling_matches_ppca_log_likelihood():
    # A diagonal guide for a correlated posterior, inflated 1.3x: ELBO < log p(x), and the
    # K=4000 importance-sampled estimate converges to the closed-form log p(x).
    W, b, x = _ppca_problem(orthogonal=False)
    model, guide, exact = ppca_vae(W, b, sigma=0.5, posterior_scale_factor=1.3)
    K = 4000
    with torch.no_grad():
        lw = torch.cat([log_weights(model, guide, x, num_samples=1000) for _ in range(K // 1000)])  # (K, N)
    ll = lw.logsumexp(0) - math.log(K)
    # delta-method Monte-Carlo standard error of log(mean w) per point
    w = (lw - lw.max(0).values).exp()
    se = (w.std(0) / (w.mean(0) * math.sqrt(K)))
    err = ll - exact(x)
    # Tolerance: the mean error over 40 points within 4 standard errors (plus 0.01 nats for the O(1/K) bias).
    assert abs(err.mean().item()) < 4 * (se.pow(2).sum().sqrt() / len(x)).item() + 0.01
    assert (err.abs() < 6 * se + 0.02).all()
    gap = (exact(x) - lw.mean(0)).mean().item()
    assert gap > 0.05  # the diagonal, inflated guide has a measurable ELBO gap


def test_evaluate_reports_is_at_least_elbo_and_leaves_parameters_alone():
    W, b, x = _ppca_problem(orthogonal=False)
    model, guide, exact = ppca_vae(W, b, sigma=0.5, posterior_scale_factor=1.5, loc_shift=0.2)
    before = [p.clone() for p in list(model.parameters()) + list(guide.parameters())]
    result = evaluate(model, guide, x, config=EvalConfig(num_samples=500, batch_size=16, max_rows=1000))
    after = list(model.parameters()) + list(guide.parameters())
    assert all(torch.equal(p, q) for p, q in zip(before, after))
    assert result.num_points == 40 and result.num_samples == 500
    assert result.log_likelihood >= result.elbo
    assert result.log_likelihood == pytest.approx(exact(x).mean().item(), abs=5 * result.log_likelihood_stderr)
    assert result.elbo_stderr > 0 and result.log_likelihood_stderr > 0
    assert not pyro.get_param_store().keys()  # evaluation leaves nothing in the global param store


def test_log_weights_are_per_data_point_not_per_batch():
    # Changing one data point must not change another point's log weights (same noise, same column).
    model, guide = tiny_vae((10,), latent_dim=3, hidden=8)
    x = torch.rand(3, 10).round()
    x2 = x.clone()
    x2[2] = 1 - x2[2]
    pyro.set_rng_seed(3)
    lw1 = log_weights(model, guide, x, num_samples=5)
    pyro.set_rng_seed(3)
    lw2 = log_weights(model, guide, x2, num_samples=5)
    assert torch.allclose(lw1[:, :2], lw2[:, :2])
    assert not torch.allclose(lw1[:, 2], lw2[:, 2])


def test_importance_estimate_is_at_least_the_elbo_per_point():
    model, guide = tiny_vae((10,), latent_dim=3, hidden=8)
    x = torch.rand(20, 10).round()
    ll, elbo = importance_log_likelihood(model, guide, x, num_samples=64, chunk_size=10)
    assert ll.shape == elbo.shape == (20,)
    assert (ll >= elbo - 1e-5).all()  # Jensen's inequality on the same samples
