"""The adversarial autoencoder's figure and numbers: q(z) against p(z), as in Makhzani et al. (2016), fig. 2 and 4.

:func:`plot_latent_vs_prior` draws, for a 2-D latent, prior draws in grey under the codes of held-out points
coloured by their digit class; :func:`latent_vs_prior` computes the reconstruction term and the MMD between
held-out codes and prior draws (:func:`~ppl_vae.inference.adversarial.latent_match`). ``ppl-vae fit`` writes the
figure as ``latent_vs_prior.png`` in the run directory of an adversarial run; ``ppl-vae evaluate`` prints the
numbers.

References

- Makhzani, A., Shlens, J., Jaitly, N., Goodfellow, I. & Frey, B. (2016). Adversarial Autoencoders. ICLR workshop.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..inference.adversarial import MMD_BANDWIDTH, LatentMatch, encode_latents, latent_match, latent_names, prior_latents
from ..inference.evaluate import conditioning_labels, eval_mode
from ..plots import _save_figure  # noqa: I001 (first: it selects matplotlib's Agg backend)

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["latent_vs_prior", "plot_latent_vs_prior", "LATENT_FIGURE"]

#: the figure's file name in a run directory
LATENT_FIGURE = "latent_vs_prior.png"


def _held_out(exp, num_points: int | None, split: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``num_points`` points of ``split``; None: the test split (validation when there is no test split)."""
    data = exp.data
    split = split or ("test" if data.x_test.shape[0] >= 2 else "val")
    x = data.fixed_train_x(num_points) if split == "train" else getattr(data, f"x_{split}")[:num_points]
    y = getattr(data, f"y_{split}")
    return x, None if y is None else y[:num_points]


def latent_vs_prior(
    exp, num_points: int | None = None, bandwidth: float = MMD_BANDWIDTH, seed: int = 0, split: str | None = None
) -> LatentMatch:
    """Reconstruction (nats per point) and the MMD between codes of a split (held-out by default) and prior draws."""
    x, y = _held_out(exp, num_points, split)
    with eval_mode(exp.model, exp.guide):
        return latent_match(exp.model, exp.guide, x, conditioning_labels(exp.model, y), bandwidth=bandwidth, seed=seed)


def plot_latent_vs_prior(exp, out: str | Path, num_points: int = 2000, seed: int = 0) -> Path | None:
    """Held-out codes coloured by class over as many prior draws; None (nothing drawn) unless the code is 2-D."""
    x, y = _held_out(exp, num_points)
    labels = conditioning_labels(exp.model, y)
    with eval_mode(exp.model, exp.guide), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        codes = encode_latents(exp.model, exp.guide, x, labels)
        if codes.shape[-1] != 2:
            return None
        names = latent_names(exp.model, exp.guide, x, labels)
        prior = prior_latents(exp.model, x, names, labels)
    codes, prior = codes.cpu().numpy(), prior.cpu().numpy()
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    ax.scatter(prior[:, 0], prior[:, 1], s=3, c="0.75", label="p(z): prior draws")
    if y is None:
        ax.scatter(codes[:, 0], codes[:, 1], s=3, c="tab:blue", label="q(z): held-out codes")
    else:
        points = ax.scatter(codes[:, 0], codes[:, 1], s=3, c=y.cpu().numpy(), cmap="tab10", vmin=-0.5, vmax=9.5)
        fig.colorbar(points, ax=ax, ticks=range(10), label="class")
    ax.set_title(f"q(z) (held-out codes, {len(codes)} points) over p(z)")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(loc="upper right", markerscale=4, fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return _save_figure(fig, out)

