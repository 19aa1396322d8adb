"""PSIS diagnostics (k-hat, ESS) of guides, and ArviZ InferenceData of q(z|x) and importance-resampled draws."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ppl_vae.inference.diagnostics import (
    MIN_PSIS_SAMPLES,
    importance_diagnostics,
    posterior_inference_data,
    psis_diagnostics,
)

from .helpers import ppca_vae
from .test_objectives import _TwoHeadGuide, _TwoLatentGaussian


def _ppca_problem(orthogonal: bool, num_points: int = 40):
    g = torch.Generator().manual_seed(1)
    D, d = 6, 2
    W = torch.randn(D, d, generator=g)
    if orthogonal:  # orthogonal columns make the exact posterior diagonal, so the diagonal guide can be exact
        W = torch.linalg.qr(W).Q * torch.tensor([2.0, 1.0])
    b = torch.randn(D, generator=g) * 0.3
    x = torch.randn(num_points, D, generator=g) * 1.5 + b
    return W, b, x


# ---------------------------------------------------------------------------------------------
# psis_diagnostics on weights with known properties.


def test_ess_is_kish_formula_and_constant_weights_have_no_tail():
    K = 100
    w = torch.ones(K, 2, dtype=torch.float64)
    w[:10, 1] = 5.0  # ten heavier weights in the second column
    diag = psis_diagnostics(w.log())
    expected = (w.sum(0) ** 2 / (w**2).sum(0)).numpy()  # (sum w)^2 / sum w^2
    assert diag.ess == pytest.approx(expected, rel=1e-9)
    assert diag.ess[0] == pytest.approx(K)
    assert diag.pareto_k[0] == -np.inf  # all weights equal: nothing to fit, the best case
    assert diag.num_points == 2 and diag.num_samples == K
    assert diag.mean_ess == pytest.approx(expected.mean()) and diag.median_ess == pytest.approx(np.median(expected))


@pytest.mark.parametrize("k_true", [0.3, 0.9])
def test_pareto_k_recovers_the_tail_of_pareto_weights(k_true):
    # Weights ~ Pareto with tail index 1/k have generalized-Pareto shape k. The (K, N) layout must be read as
    # samples x points: each of the 3 points gets its own estimate. K = 4000; tolerance 0.15 (about 3 s.e.).
    g = torch.Generator().manual_seed(2)
    u = torch.rand(4000, 3, generator=g)
    log_w = -k_true * torch.log(u)  # w = u^(-k): Pareto with tail index 1/k
    diag = psis_diagnostics(log_w)
    assert diag.pareto_k.shape == (3,)
    assert np.all(np.abs(diag.pareto_k - k_true) < 0.15)
    assert diag.share_k_above == (1.0 if k_true > 0.7 else 0.0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="shape"):
        psis_diagnostics(torch.zeros(100))
    with pytest.raises(ValueError, match=str(MIN_PSIS_SAMPLES)):
        psis_diagnostics(torch.randn(MIN_PSIS_SAMPLES - 1, 3))
    with pytest.raises(ValueError, match="finite"):
        psis_diagnostics(torch.full((50, 2), float("nan")))


# ---------------------------------------------------------------------------------------------
# Guides on probabilistic PCA, where the exact posterior is known.


def test_exact_guide_has_low_k_and_full_ess():
    W, b, x = _ppca_problem(orthogonal=True)
    model, guide, _ = ppca_vae(W, b, sigma=0.5)  # q(z|x) = p(z|x) exactly
    diag = importance_diagnostics(model, guide, x, num_samples=1000)
    assert diag.pareto_k.shape == (40,) and diag.share_k_above == 0.0
    assert diag.max_k < 0.5  # only float32 round-off varies the weights (measured max -0.13)
    assert diag.mean_ess > 0.99 * 1000


def test_slightly_wide_guide_is_still_fine():
    W, b, x = _ppca_problem(orthogonal=True)
    model, guide, _ = ppca_vae(W, b, sigma=0.5, posterior_scale_factor=1.2)
    diag = importance_diagnostics(model, guide, x, num_samples=1000)
    # A proposal wider than the target has bounded weights: k-hat well below 0.5 (measured max -0.6).
    assert diag.max_k < 0.5
    assert 0.8 * 1000 < diag.mean_ess < 0.97 * 1000  # measured 906


def test_too_narrow_guide_is_flagged():
    # Scales 0.25x the posterior's: the weights p/q have heavy tails (shape about 1 - 0.25^2 = 0.94).
    W, b, x = _ppca_problem(orthogonal=True)
    model, guide, _ = ppca_vae(W, b, sigma=0.5, posterior_scale_factor=0.25)
    diag = importance_diagnostics(model, guide, x, num_samples=1000)
    assert diag.share_k_above >= 0.75  # k-hat estimates are noisy; most points must be flagged
    assert diag.median_ess < 0.1 * 1000
    assert diag.summary()["share_k_above"] == diag.share_k_above


# ---------------------------------------------------------------------------------------------
# ArviZ InferenceData.


@pytest.mark.filterwarnings(
    # ArviZ 0.23's plot_posterior passes a dict alias map that matplotlib >= 3.11 deprecates; not ours to fix.
    "ignore:Passing a dict or None as alias_mapping:matplotlib.MatplotlibDeprecationWarning"
)
def test_inference_data_holds_guide_and_resampled_draws_that_arviz_can_summarize_and_plot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ppl_vae.inference.diagnostics import _arviz

    az = _arviz()
    W, b, x = _ppca_problem(orthogonal=False)
    # A diagonal guide for a correlated posterior, its means shifted by 0.5: importance resampling must
    # move the draws' mean back towards the exact posterior mean A (x - b).
    model, guide, _ = ppca_vae(W, b, sigma=0.5, posterior_scale_factor=1.5, loc_shift=0.5)
    precision = torch.eye(2) + W.T @ W / 0.25
    exact_mean = (torch.linalg.solve(precision, W.T) / 0.25 @ (x[0] - b)).numpy()

    idata = posterior_inference_data(model, guide, x[0], num_samples=4000)
    assert set(idata.groups()) == {"posterior", "sample_stats", "importance_resampled"}
    for group in ("posterior", "importance_resampled"):
        z = idata[group]["z"]
        assert z.dims == ("chain", "draw", "z_dim_0") and z.shape == (4, 1000, 2)
        summary = az.summary(idata, group=group)
        assert list(summary.index) == ["z[0]", "z[1]"] and np.isfinite(summary["mean"]).all()
    assert idata.sample_stats["log_weight"].shape == (4, 1000)
    assert idata.posterior.attrs["ess"] <= 4000 and math.isfinite(idata.posterior.attrs["pareto_k"])

    q_mean = idata.posterior["z"].mean(("chain", "draw")).values
    resampled_mean = idata.importance_resampled["z"].mean(("chain", "draw")).values
    q_err, is_err = np.abs(q_mean - exact_mean).max(), np.abs(resampled_mean - exact_mean).max()
    assert q_err > 0.3  # the shifted guide is visibly off
    assert is_err < 0.5 * q_err  # resampling corrects most of it (Monte-Carlo error with ESS in the hundreds)

    for group in ("posterior", "importance_resampled"):
        axes = az.plot_posterior(idata, group=group)
        assert np.asarray(axes).size == 2
    plt.close("all")


def test_inference_data_takes_sites_from_the_guide_and_checks_its_input():
    model, guide = _TwoLatentGaussian(), _TwoHeadGuide()
    x = torch.randn(3, 5)
    idata = posterior_inference_data(model, guide, x[:1], num_samples=100, resample=False, num_chains=2)
    assert set(idata.groups()) == {"posterior", "sample_stats"}
    assert set(idata.posterior.data_vars) == {"z1", "z2"}
    assert idata.posterior["z1"].shape == (2, 50, 2)
    assert posterior_inference_data(model, guide, x[0], num_samples=100).posterior["z2"].shape == (4, 25, 2)
    with pytest.raises(ValueError, match="one data point"):
        posterior_inference_data(model, guide, x, num_samples=100)
    with pytest.raises(ValueError, match="multiple of num_chains"):
        posterior_inference_data(model, guide, x[:1], num_samples=99)
