r"""The adversarial autoencoder (Makhzani et al. 2016) as a Pyro objective, and the MMD between q(z) and p(z).

The encoder is the guide: deterministic with the ``delta`` head, ``q(z|x) = δ(z - f(x))``, or Gaussian with the
``normal`` head. The model's latent site keeps its prior p(z) (any family or shaped prior the model offers). The
KL of the ELBO is replaced by a game: a discriminator :math:`D(z) \in (0, 1)`, a small MLP, learns to tell
prior samples from codes, and the encoder is trained to fool it. One training step on a batch of B points is

.. math::

    \mathcal{L}_D &= -\frac{1}{B} \sum_i \big[\log D(z^p_i) + \log (1 - D(z^q_i))\big],
        \qquad z^p_i \sim p(z), \; z^q_i \sim q(z|x_i)
        \quad\text{(``disc_steps`` Adam steps on D alone)}

    \mathcal{L} &= \frac{1}{B} \sum_i \big[-\log p(x_i \mid z^q_i) - w \log D(z^q_i)\big]
        \quad\text{(the encoder and decoder, by fit's optimizer)}

with the non-saturating generator loss :math:`-\log D(z^q)` weighted by ``w`` (``adversarial.weight``).

Pyro computes the terms; nothing is written by hand but the discriminator's cross-entropy::

    guide_trace = poutine.trace(guide).get_trace(x, y)                     # z^q from the encoder
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    reconstruction = -sum(site["log_prob_sum"] for the observed sites of model_trace)   # -log p(x|z^q)
    with torch.no_grad():
        prior_trace = poutine.trace(model).get_trace(x, y)                 # z^p: the model's latents, unconditioned

The latent sites are the guide's (real, reparameterized) sample sites that the model also has; several are
concatenated into one code per data point. Penalty sites of the guide (:func:`~ppl_vae.add_penalty`) are
added to the loss as in every estimator.

**The second player.** The discriminator is an :class:`nn.Module` with its own Adam (``adversarial.disc_lr``),
built by :meth:`Adversarial_ELBO.prepare` (``fit`` calls it before making its optimizer) and exposed as the
objective's ``trainable_module``. It is marked :class:`~ppl_vae.contract.TrainedByObjective`, so ``fit``'s
optimizer leaves its parameters out; it moves to the device with the estimator's state, and its
``state_dict`` carries its optimizer's state (``get_extra_state``), so a checkpoint holds both and an
interrupted run resumes bit for bit (prior draws use the global RNG, which the checkpoint also holds). The
discriminator is stepped inside ``loss_and_grads``, first, on the codes detached; the generator loss then
uses the updated discriminator with its parameters frozen, so ``fit``'s backward pass gives it no gradient.

**Units.** ``fit`` calls ``loss_and_grads`` inside ``poutine.scale(1/B)``; the reconstruction comes scaled
from the traces and the generator loss is scaled by the latent site's scale, so the loss is in nats per
data point. The terms of the last step are reported (:class:`~ppl_vae.contract.ReportsTerms`) as
``term_reconstruction``, ``term_generator`` (unweighted) and ``term_discriminator`` in ``metrics.jsonl``.

**Not yet:** several ``torchrun`` processes (the discriminator's gradients are not all-reduced), and
several particles.

:func:`mmd` measures how close q(z) is to p(z): the unbiased estimate of the squared maximum mean
discrepancy with a Gaussian kernel of a stated bandwidth; :func:`latent_match` computes it between
held-out codes and prior draws, beside the reconstruction term.

References

- Makhzani, A., Shlens, J., Jaitly, N., Goodfellow, I. & Frey, B. (2016). Adversarial Autoencoders. ICLR workshop.
- Goodfellow, I. et al. (2014). Generative Adversarial Nets. NeurIPS (the non-saturating generator loss).
- Gretton, A. et al. (2012). A Kernel Two-Sample Test. JMLR (the unbiased MMD estimate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from pyro import poutine
from pyro.infer import ELBO
from torch import nn
from torch.nn import functional as F

from ..compat import site_is_subsample
from ..errors import ConfigError
from ..nets import MLP
from ..programs import seeded
from ..schema import (
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    SIZES,
    check_fields,
    documented,
)
from .distributed import current_world
from .reconstruction import reconstruction_terms
from .terms import TERM_FLAG
from .training import OptimConfig, make_optimizer

__all__ = [
    "AdversarialConfig",
    "Adversarial_ELBO",
    "Discriminator",
    "LatentMatch",
    "encode_latents",
    "latent_names",
    "prior_latents",
    "latent_match",
    "mmd",
    "DISC_BETAS",
    "MMD_BANDWIDTH",
]

#: Adam's moment decay rates for the discriminator (the usual GAN choice of a short first-moment memory)
DISC_BETAS = (0.5, 0.999)
#: the Gaussian kernel's bandwidth of :func:`mmd`, in latent units
MMD_BANDWIDTH = 1.0


@documented
@dataclass(frozen=True)
class AdversarialConfig:
    """The adversarial autoencoder's regulariser (the ``adversarial:`` section; present = enabled)."""

    #: w: the weight of the encoder's generator loss -log D(z_q)
    weight: float = 1.0
    #: the discriminator's hidden layer sizes (leaky ReLU units)
    disc_hidden_dims: tuple[int, ...] = (64, 64)
    #: the discriminator's Adam learning rate
    disc_lr: float = 1e-3
    #: discriminator steps per training step
    disc_steps: int = 1

    def __post_init__(self) -> None:
        check_fields(
            self, "adversarial", weight=NON_NEGATIVE, disc_hidden_dims=SIZES, disc_lr=POSITIVE, disc_steps=POSITIVE_INT,
        )

    @property
    def disc_optim(self) -> OptimConfig:
        """The discriminator's optimizer config (Adam, constant rate)."""
        return OptimConfig(name="adam", lr=self.disc_lr, betas=DISC_BETAS)


class Discriminator(nn.Module):
    """D(z) as a logit: an MLP over a code, trained by the objective with its own optimizer.

    Its ``state_dict`` carries the optimizer's state, so that a checkpoint of the estimator's state resumes
    both (see :class:`~ppl_vae.contract.TrainedByObjective`).
    """

    trained_by_objective = True

    def __init__(self, latent_dim: int, hidden_dims: tuple[int, ...], optim: OptimConfig) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.net = MLP(latent_dim, hidden_dims, 1, "leaky_relu")
        self.optimizer = make_optimizer(list(self.parameters()), optim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """The logit of D for codes ``(batch, latent_dim)``: ``(batch,)``."""
        return self.net(z).squeeze(-1)

    def get_extra_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


# -- codes from traces ----------------------------------------------------------------------------


def _latent_sites(guide_trace, model_trace) -> list[dict]:
    """The guide's latent sample sites that the model has too (penalty sites and plates left out)."""
    return [
        site
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
        and not site["infer"].get(TERM_FLAG) and name in model_trace.nodes
    ]


def _codes(trace, names: list[str]) -> torch.Tensor:
    """The values of sites ``names`` in ``trace``, one flat code per data point: ``(batch, code_dim)``."""
    parts = []
    for name in names:
        site = trace.nodes[name]
        batch = site["fn"].batch_shape
        if len(batch) != 1:
            raise ConfigError(
                f"the adversarial objective needs latent site {name!r} local to the data plate (batch shape (B,)), "
                f"got batch shape {tuple(batch)}"
            )
        value = site["value"]
        parts.append(value.reshape(value.shape[0], -1).to(torch.get_default_dtype()))  # (batch, site's numel)
    return torch.cat(parts, -1)


def _traces(model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None):
    guide_trace = poutine.trace(guide).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    return model_trace, guide_trace


def latent_names(model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None) -> list[str]:
    """The guide's latent sites that the model pairs, in the guide's order: what a code is made of."""
    with torch.no_grad():
        model_trace, guide_trace = _traces(model, guide, x, y)
    return [s["name"] for s in _latent_sites(guide_trace, model_trace)]


def encode_latents(model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Codes z ~ q(z|x) of a batch, ``(batch, code_dim)``: the guide's latent sites that the model pairs."""
    with torch.no_grad():
        model_trace, guide_trace = _traces(model, guide, x, y)
        return _codes(guide_trace, [s["name"] for s in _latent_sites(guide_trace, model_trace)])


def prior_latents(model: Callable, x: torch.Tensor, names: list[str], y: torch.Tensor | None = None) -> torch.Tensor:
    """Codes z ~ p(z), one per point of ``x``: the latents of the model run unconditioned on its latents."""
    with torch.no_grad():
        return _codes(poutine.trace(model).get_trace(x, y), names)


# -- the objective ----------------------------------------------------------------------------------


class Adversarial_ELBO(ELBO):
    r"""The adversarial autoencoder's objective: reconstruction plus a generator loss against a discriminator.

    See the module docstring for the objective and the second player. Wraps no estimator: the KL is replaced,
    so no ELBO's terms remain to compute but log p(x|z), which Pyro's traces give.

    :param AdversarialConfig config: weight, the discriminator's size, learning rate and steps.
    """

    def __init__(self, config: AdversarialConfig | None = None) -> None:
        super().__init__(num_particles=1)
        self.config = config or AdversarialConfig()
        #: the discriminator (built by :meth:`prepare`); ``fit`` checkpoints it
        self.trainable_module: Discriminator | None = None
        #: the last ``loss_and_grads`` call's terms, nats per data point
        self.last_terms: dict[str, float] = {}
        self._names: list[str] = []

    def prepare(self, model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """Build the discriminator for the codes of this model and guide (``fit`` calls it before its optimizer).

        :raises ConfigError: under ``torchrun``, or for a latent site without pathwise gradients.
        """
        if current_world().distributed:
            raise ConfigError(
                "the adversarial objective runs in one process only for now (its discriminator's gradients are not "
                "all-reduced across torchrun ranks); run ppl-vae fit without torchrun"
            )
        with torch.no_grad():
            model_trace, guide_trace = _traces(model, guide, x, y)
        sites = _latent_sites(guide_trace, model_trace)
        if not sites:
            raise ConfigError("the adversarial objective needs a guide latent site that the model also has; found none")
        for site in sites:
            if not getattr(site["fn"], "has_rsample", False):
                raise ConfigError(
                    f"the adversarial objective trains the encoder through its codes, but guide site {site['name']!r} has "
                    "no reparameterized sampler; use a real latent with head delta or normal"
                )
        self._names = [s["name"] for s in sites]
        code_dim = _codes(guide_trace, self._names).shape[-1]
        if self.trainable_module is None or self.trainable_module.latent_dim != code_dim:
            self.trainable_module = Discriminator(code_dim, self.config.disc_hidden_dims, self.config.disc_optim).to(x.device)

    def _discriminator(self, model: Callable, guide: Callable, x: torch.Tensor, y) -> Discriminator:
        """The discriminator, built on a first call when ``fit`` did not prepare it (Pyro's ``SVI``, say)."""
        if self.trainable_module is None:
            self.prepare(model, guide, x, y)
        return self.trainable_module

    def _train_discriminator(self, model: Callable, x: torch.Tensor, y, codes: torch.Tensor) -> float:
        """``disc_steps`` Adam steps of D on fresh prior draws against the (detached) codes; the last loss."""
        disc, value = self.trainable_module, float("nan")
        for _ in range(self.config.disc_steps):
            prior = prior_latents(model, x, self._names, y)
            loss = F.softplus(-disc(prior)).mean() + F.softplus(disc(codes)).mean()  # -log D(z_p) - log(1 - D(z_q))
            disc.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            disc.optimizer.step()
            value = float(loss.detach())
        return value

    def _losses(self, model: Callable, guide: Callable, x: torch.Tensor, y, train_disc: bool) -> torch.Tensor:
        """The encoder and decoder's loss (nats per point under fit's scale), after training D when asked."""
        disc = self._discriminator(model, guide, x, y)
        model_trace, guide_trace = _traces(model, guide, x, y)
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob(site_filter=lambda name, site: site["is_observed"])
        reconstruction = -sum(
            s["log_prob_sum"] for s in model_trace.nodes.values()
            if s["type"] == "sample" and s["is_observed"] and not site_is_subsample(s)
        )
        penalties = sum(
            s["log_prob_sum"] for s in guide_trace.nodes.values()
            if s["type"] == "sample" and s["is_observed"] and not site_is_subsample(s)
        )
        codes = _codes(guide_trace, self._names)
        disc_loss = self._train_discriminator(model, x, y, codes.detach()) if train_disc else float("nan")
        for p in disc.parameters():
            p.requires_grad_(False)
        try:
            per_point = F.softplus(-disc(codes))  # -log D(z_q), (batch,)
        finally:
            for p in disc.parameters():
                p.requires_grad_(True)
        scale = guide_trace.nodes[self._names[0]]["scale"]  # fit's 1/B: the generator loss in the bound's units
        generator = (scale * per_point).sum()
        points = float(scale) * codes.shape[0]  # 1 under fit's scale; B for an unscaled call
        self.last_terms = {
            "reconstruction": float(reconstruction.detach()) / points,
            "generator": float(generator.detach()) / points,
            **({"discriminator": disc_loss} if train_disc else {}),
        }
        return reconstruction + penalties + self.config.weight * generator

    # -- the ELBO interface ---------------------------------------------------------------------

    def _get_trace(self, model: Callable, guide: Callable, args, kwargs):
        """One (model trace, guide trace) pair: the guide, and the model replayed against it."""
        return _traces(model, guide, *_batch(args, kwargs))

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        """The encoder and decoder's loss against the current discriminator (which it does not train)."""
        x, y = _batch(args, kwargs)
        return self._losses(model, guide, x, y, train_disc=False)

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """The loss against the current discriminator, without gradients."""
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        """Train the discriminator ``disc_steps`` steps, then back-propagate the encoder and decoder's loss."""
        x, y = _batch(args, kwargs)
        loss = self._losses(model, guide, x, y, train_disc=True)
        if loss.requires_grad:
            loss.backward()
        return float(loss.detach())


def _batch(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, y)`` from the call ``fit`` makes, ``loss_and_grads(model, guide, x, y)``."""
    x = args[0] if args else kwargs["x"]
    y = args[1] if len(args) > 1 else kwargs.get("y")
    return x, y


# -- how close q(z) is to p(z) --------------------------------------------------------------------


def mmd(a: torch.Tensor, b: torch.Tensor, bandwidth: float = MMD_BANDWIDTH) -> float:
    r"""The unbiased estimate of the squared MMD between samples ``a`` ``(n, d)`` and ``b`` ``(m, d)``.

    .. math::

        \widehat{\mathrm{MMD}}^2 = \frac{1}{n(n-1)} \sum_{i \ne j} k(a_i, a_j)
            + \frac{1}{m(m-1)} \sum_{i \ne j} k(b_i, b_j) - \frac{2}{nm} \sum_{i, j} k(a_i, b_j),
        \qquad k(u, v) = \exp\!\big(-\lVert u - v \rVert^2 / (2 h^2)\big)

    with bandwidth ``h``. It is 0 in expectation for two samples of one distribution (and may then be
    slightly negative), and at most 2.

    :raises ValueError: for fewer than two points in either sample, or samples of different sizes d.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"mmd needs two samples (n, d) and (m, d) with n, m >= 2, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.double(), b.double()

    def kernel(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(u, v).pow(2) / (2 * bandwidth**2))  # (len(u), len(v))

    n, m = a.shape[0], b.shape[0]
    k_aa = (kernel(a, a).sum() - n) / (n * (n - 1))  # the diagonal, k = 1, left out
    k_bb = (kernel(b, b).sum() - m) / (m * (m - 1))
    return float(k_aa + k_bb - 2 * kernel(a, b).mean())


@documented
@dataclass
class LatentMatch:
    """How well a trained adversarial autoencoder reconstructs, and how close its q(z) is to p(z)."""

    #: mean over points of -log p(x|z), z ~ q(z|x), nats per data point
    reconstruction: float
    #: the unbiased squared MMD between codes of the first ``mmd_points`` points and as many prior draws
    mmd: float
    #: the Gaussian kernel's bandwidth of the MMD
    bandwidth: float
    #: points in the reconstruction average
    num_points: int
    #: points (and prior draws) in the MMD
    mmd_points: int

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _reconstruction(model: Callable, guide: Callable, x: torch.Tensor, y, batch_size: int) -> float:
    total = 0.0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start : start + batch_size], None if y is None else y[start : start + batch_size]
            total += float(reconstruction_terms(model, guide, xb, yb)[0].sum())
    return total / x.shape[0]


def latent_match(
    model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None, *,
    bandwidth: float = MMD_BANDWIDTH, max_mmd_points: int = 2000, batch_size: int = 500, seed: int = 0,
) -> LatentMatch:
    """The reconstruction term over ``x`` and the MMD between codes of ``x`` and prior draws (seeded, repeatable).

    :param int max_mmd_points: the MMD uses the first this many points (its cost grows as their square).
    """
    if x.shape[0] < 2:
        raise ValueError(f"latent_match needs at least 2 points, got {x.shape[0]}")
    with seeded(seed):
        reconstruction = _reconstruction(model, guide, x, y, batch_size)
        xm, ym = x[:max_mmd_points], None if y is None else y[:max_mmd_points]
        with torch.no_grad():
            model_trace, guide_trace = _traces(model, guide, xm, ym)
        names = [s["name"] for s in _latent_sites(guide_trace, model_trace)]
        codes, prior = _codes(guide_trace, names), prior_latents(model, xm, names, ym)
    return LatentMatch(reconstruction, mmd(codes, prior, bandwidth), bandwidth, x.shape[0], xm.shape[0])
