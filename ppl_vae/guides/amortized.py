"""An amortized mean-field guide for any model, built from a trace of the model.

:func:`latent_sites` runs the model once and reads, for each latent site inside the data plate, its
name, event shape and support. :class:`AmortizedGuide` then maps the flattened ``x`` through one
network to a head per site::

    h = trunk(x)
    v ~ q(v | x) = head_v(h)          # for each latent site v of the model, in the model's order

Real-valued sites get the configured head (a diagonal Normal by default, or ``fullcov``, ``iaf:4``, ...);
sites with a constrained continuous support (positive, an interval) get that head pushed through
``biject_to(support)``, as Pyro's autoguides do; discrete sites get a head of their own family
(Bernoulli, categorical, one-hot or relaxed categorical). Sites that the model enumerates are left
to the model.

With ``head: delta`` the encoder is deterministic (a MAP autoencoder); the options ``corruption`` (denoising,
:mod:`ppl_vae.guides.corruption`), ``sparsity`` and ``contractive`` (:mod:`ppl_vae.guides.penalties`) make it
the denoising, sparse and contractive autoencoders (with a stochastic head, ``corruption`` gives the denoising VAE).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.nn import PyroModule
from torch.distributions import biject_to
from torch.distributions.transforms import ReshapeTransform

from ..compat import site_is_subsample
from ..contract import DATA_PLATE, add_penalty
from ..errors import ConfigError
from ..families import FAMILIES, MIN_SCALE
from ..heads import HEADS, make_head, parse_head
from ..nets import ACTIVATIONS, Trunk
from ..schema import NON_NEGATIVE, SIZES, check_fields, documented, one_of
from .corruption import CorruptionConfig, corrupt
from .penalties import ContractiveConfig, SparsityConfig, contractive_penalty, sparsity_penalty

__all__ = ["AmortizedGuide", "AmortizedGuideConfig", "LatentSite", "latent_sites"]


@documented
@dataclass(frozen=True)
class AmortizedGuideConfig:
    """Configuration of :class:`AmortizedGuide` (the ``guide:`` section, with ``name: amortized``)."""

    #: encoder hidden layer sizes, x -> ... -> context
    hidden_dims: tuple[int, ...] = (400,)
    #: encoder activation, a key of ppl_vae.nets.ACTIVATIONS
    activation: str = "relu"
    #: the head of every real-valued latent (ppl_vae.heads.HEADS): normal, fullcov, iaf:4, ...
    head: str = "normal"
    #: floor added to the softplus of every scale
    min_scale: float = MIN_SCALE
    #: denoising: corrupt the encoder's input in training, e.g. {kind: masking, rate: 0.3}; None: clean input
    corruption: CorruptionConfig | None = None
    #: sparse autoencoder: a penalty on the real-valued codes, e.g. {kind: kl, weight: 0.1, target: 0.05}
    sparsity: SparsityConfig | None = None
    #: contractive autoencoder (head: delta): {weight: ...} times the squared Frobenius norm of dz/dx
    contractive: ContractiveConfig | None = None

    def __post_init__(self) -> None:
        check_fields(self, "guide", hidden_dims=SIZES, activation=one_of(ACTIVATIONS), min_scale=NON_NEGATIVE)
        try:
            name, _ = parse_head(self.head)
        except ValueError as err:
            raise ValueError(f"guide.head: {err}") from None
        if not HEADS[name].real:
            raise ValueError(f"guide.head must be a head for real-valued latents, got {self.head!r}")
        if self.contractive is not None and name != "delta":
            raise ValueError(f"guide.contractive needs head: delta (the Jacobian of a deterministic code), got head {self.head!r}")


@documented
@dataclass(frozen=True)
class LatentSite:
    """What a guide needs to know of one latent site of a model."""

    name: str  #: the site's name
    event_shape: tuple[int, ...]  #: the event shape of one value
    family: str  #: the family a guide head must stand in for (a key of ppl_vae.families.FAMILIES)
    dim: int  #: the family's size: the flattened event size, or the number of categories
    support: Any = None  #: a constrained continuous support, reached through ``biject_to``; None for the reals
    temperature: float = 0.5  #: relaxed categorical sites: the model's temperature


def _base(fn):
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    return fn


def _describe(site: dict) -> LatentSite:
    fn, name = site["fn"], site["name"]
    event_shape = tuple(fn.event_shape)
    size = math.prod(event_shape)
    base, support = _base(fn), fn.support
    if isinstance(base, dist.RelaxedOneHotCategorical) and len(event_shape) == 1:
        return LatentSite(name, event_shape, "relaxed_categorical", event_shape[0], None, float(base.temperature))
    if not support.is_discrete:
        return LatentSite(name, event_shape, "normal", size, None if _is_real(support) else support)
    if isinstance(base, dist.Bernoulli) and len(event_shape) == 1:
        return LatentSite(name, event_shape, "bernoulli", size)
    if isinstance(base, dist.OneHotCategorical) and len(event_shape) == 1:
        return LatentSite(name, event_shape, "onehot_categorical", event_shape[0])
    if isinstance(base, dist.Categorical) and event_shape == ():
        return LatentSite(name, event_shape, "categorical", int(base.logits.shape[-1]))
    raise ConfigError(
        f"latent site {name!r} ({type(base).__name__}, event shape {event_shape}) has a discrete support that the "
        "amortized guide cannot cover (it covers continuous sites, Bernoulli vectors and categorical sites); "
        "write a guide for it, or enumerate it in the model"
    )


def _is_real(support) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def latent_sites(model, x: torch.Tensor, y: torch.Tensor | None = None) -> list[LatentSite]:
    """The latent sites of ``model`` on the batch ``(x, y)``, in the order the model samples them.

    Sites the model enumerates (``infer={"enumerate": ...}``) are left out: the model sums them out.

    :raises ConfigError: for a latent site outside the data plate, or one no guide head can cover.
    """
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), pyro.get_param_store().scope():
            trace = poutine.trace(model).get_trace(x, y)
    except (ConfigError, KeyboardInterrupt):
        raise
    except Exception as err:  # an error in user code: the model does not follow the contract
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ConfigError(
            f"the model failed on a batch of {x.shape[0]} points of shape {tuple(x.shape[1:])} ({type(err).__name__}: "
            f"{first}); see docs/bring_your_own_model.md for what ppl_vae calls it with"
        ) from None
    sites = []
    for site in trace.nodes.values():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        if site["infer"].get("enumerate"):
            continue
        if not any(frame.name == DATA_PLATE for frame in site["cond_indep_stack"]):
            raise ConfigError(
                f"latent site {site['name']!r} is outside the {DATA_PLATE!r} plate; an amortized guide covers latents "
                "local to a data point only"
            )
        sites.append(_describe(site))
    if not sites:
        raise ConfigError("the model has no latent site for a guide to cover")
    return sites


class AmortizedGuide(PyroModule):
    r"""A mean-field amortized guide over every latent site of a model: one encoder, a head per site.

    For each data point in the plate ``data``, and each latent site ``v`` of the model::

        h = trunk(flatten(x))
        v ~ q(v | x) = head_v(h)

    :param tuple x_shape: shape of one observation.
    :param sites: the model's latent sites (:func:`latent_sites`).
    :param AmortizedGuideConfig config: encoder sizes, activation and the head of real-valued sites.

    References

    - Kingma, D. P. & Welling, M. (2014). Auto-Encoding Variational Bayes. ICLR.
    """

    def __init__(self, x_shape: tuple[int, ...], sites: list[LatentSite], config: AmortizedGuideConfig | None = None) -> None:
        super().__init__()
        config = config or AmortizedGuideConfig()
        self.config = config
        self.x_shape = tuple(int(s) for s in x_shape)
        self.sites = tuple(sites)
        self.trunk = Trunk(math.prod(self.x_shape), config.hidden_dims, config.activation)
        self.heads = torch.nn.ModuleDict()
        for site in self.sites:
            family = FAMILIES[site.family]
            head = config.head if family.real_support else site.family
            self.heads[site.name] = make_head(head, self.trunk.out_dim, site.dim, site.temperature, config.min_scale)

    @property
    def corruption(self) -> CorruptionConfig | None:
        """The corruption of the encoder's input in training (:class:`~ppl_vae.guides.corruption.Corrupts`)."""
        return self.config.corruption

    def site_dist(self, site: LatentSite, context: torch.Tensor) -> dist.TorchDistribution:
        """q(v | x) for one latent site, given the encoder's output."""
        q = self.heads[site.name](context)
        if site.family != "normal":
            return q
        transforms = []
        if site.event_shape != (site.dim,):
            transforms.append(ReshapeTransform((site.dim,), site.event_shape))
        if site.support is not None:
            transforms.append(biject_to(site.support))
        return dist.TransformedDistribution(q, transforms) if transforms else q

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output for ``x`` of shape ``(*batch, *x_shape)``."""
        # (*batch, *x_shape) -> (*batch, prod(x_shape))
        return self.trunk(x.reshape(*x.shape[: x.dim() - len(self.x_shape)], -1))

    def latent_dist(self, name: str, x: torch.Tensor) -> dist.TorchDistribution:
        """q(v | x) for the latent site ``name``."""
        site = next((s for s in self.sites if s.name == name), None)
        if site is None:
            raise KeyError(f"the guide has no latent site {name!r}; its sites: {[s.name for s in self.sites]}")
        return self.site_dist(site, self.context(x))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        # denoising: in training the encoder sees a corrupted x (the model still scores the clean one)
        x_in = corrupt(x, self.config.corruption) if self.training else x
        context = self.context(x_in)
        values = {}
        with pyro.plate(DATA_PLATE, x.shape[0]):
            for site in self.sites:
                values[site.name] = pyro.sample(site.name, self.site_dist(site, context))
            if self.training:
                self._add_penalties(x_in, values)
        return values

    def _add_penalties(self, x: torch.Tensor, values: dict) -> None:
        """The sparsity and contractive penalties of the config (see :mod:`ppl_vae.guides.penalties`)."""
        real = [s for s in self.sites if FAMILIES[s.family].real_support]
        if self.config.sparsity is not None and real:
            # (..., B, *event) -> (..., B, dim)
            codes = [values[s.name].reshape(*values[s.name].shape[: values[s.name].dim() - len(s.event_shape)], -1) for s in real]
            add_penalty("sparsity", sum(sparsity_penalty(c, self.config.sparsity) for c in codes))
        if self.config.contractive is not None and real:
            flat = x.reshape(*x.shape[: x.dim() - len(self.x_shape)], -1)
            terms = [contractive_penalty(self.trunk, self.heads[s.name].linear, flat, self.config.contractive) for s in real]
            add_penalty("contractive", sum(terms))
