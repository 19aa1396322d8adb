"""Small builders shared by the tests."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from ppl_vae import DataConfig, AmortizedGuideConfig, TrainConfig, VAEConfig, load_dataset, make_guide, make_model


def tiny_digits(num_train: int = 200, **kw):
    """The 8x8 digits with a small training set."""
    return load_dataset(DataConfig(name="digits", num_train=num_train, **kw))


def tiny_vae(x_shape=(64,), latent_dim: int = 4, hidden: int = 32, **model_kw):
    model = make_model("vae", x_shape, VAEConfig(latent_dim=latent_dim, hidden_dims=(hidden,), **model_kw))
    guide = make_guide("amortized", model, AmortizedGuideConfig(hidden_dims=(hidden,)))
    return model, guide


def quick_train(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=50, progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


def ppca_vae(W: torch.Tensor, b: torch.Tensor, sigma: float, posterior_scale_factor: float = 1.0, loc_shift: float = 0.0):
    """A linear-Gaussian VAE (probabilistic PCA) with the encoder set to the exact posterior mean and
    to the exact posterior marginal standard deviations times ``posterior_scale_factor``.

    Returns (model, guide, exact_log_prob) where exact_log_prob(x) is log N(x; b, W W^T + sigma^2 I).
    """
    D, d = W.shape
    model = make_model("vae", (D,), VAEConfig(latent_dim=d, hidden_dims=(), likelihood="normal", x_scale=sigma))
    guide = make_guide("amortized", model, AmortizedGuideConfig(hidden_dims=(), min_scale=0.0))
    head = guide.heads["z"].linear  # the guide's encoder is this one linear map (no hidden layers)
    M = torch.eye(d) + W.T @ W / sigma**2
    Minv = torch.linalg.inv(M)
    A = Minv @ W.T / sigma**2  # posterior mean = A (x - b)
    post_sd = Minv.diagonal().sqrt() * posterior_scale_factor
    with torch.no_grad():
        dec = model.decoder[0]
        dec.weight.copy_(W)
        dec.bias.copy_(b)
        head.weight.zero_()
        head.weight[:d].copy_(A)
        head.bias[:d].copy_(-A @ b + loc_shift)
        head.bias[d:].copy_(inverse_softplus(post_sd))
    cov = W @ W.T + sigma**2 * torch.eye(D)
    marginal = torch.distributions.MultivariateNormal(b, covariance_matrix=cov)
    return model, guide, marginal.log_prob


__all__ = ["tiny_digits", "tiny_vae", "quick_train", "ppca_vae", "inverse_softplus", "math", "F"]
