"""Codes of a trained model: the posterior means of data points, pictures decoded from any codes, the prior's
moments, and the latent units a traversal sweeps. The building blocks of :mod:`ppl_vae.explore`.

Everything here works on any model and guide that follow :mod:`ppl_vae.contract`, with any number and names of
latent sites:

- **a code** is a dict ``{site: tensor (N, *event)}`` over the guide's latent sites;
- **encoding** takes, site by site in the guide's order, the mean of q (the mode for a discrete site), with the
  sites sampled before it held at their own means (so a guide ``q(z1|x) q(z2|x, z1)`` gives ``E[z2|x, E[z1|x]]``);
  a distribution with no closed-form mean (a flow) gets the average of draws;
- **decoding** runs the model with every given site conditioned and its data site unconditioned (as
  :func:`ppl_vae.plots.generate` does), and takes the mean of the data site's distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from pyro import poutine
from torch.distributions import constraints, kl_divergence

from ..contract import data_site_name, needs_labels
from ..errors import ConfigError
from ..inference.evaluate import eval_mode
from ..inference.tracing import latent_nodes
from ..plots import _as_images, _pixel_scale, _site_mean, generate
from ..programs import as_modules
from ..schema import documented

__all__ = [
    "Unit",
    "check_images",
    "check_count",
    "points_of",
    "decoding_labels",
    "decode_images",
    "real_sites",
    "flatten_codes",
    "posterior_means",
    "prior_means",
    "prior_trace",
    "decode",
    "pictures",
    "data_pictures",
    "latent_units",
    "unit_scores",
    "slerp",
]

#: how many draws average a site whose distribution has no closed-form mean (a flow)
MEAN_DRAWS = 32
#: points per pass when encoding or decoding many points
CHUNK = 500


def check_images(exp) -> None:
    """Refuse a run whose model does not model images: an M1+M2 run's M2 models its first stage's codes."""
    if exp.stage is not None:
        raise ConfigError(
            "this M1+M2 run's M2 models the latent codes of its first stage, not images, so its latents cannot be "
            "drawn as pictures; explore the first stage instead: ppl-vae explore RUN/m1 VIEW"
        )


def _base_constraint(support):
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def _is_real(support) -> bool:
    return isinstance(_base_constraint(support), type(constraints.real))


# -- an experiment's test points ---------------------------------------------------------------------------


def check_count(name: str, value: int, minimum: int = 1) -> None:
    """Refuse a count option (steps, points, rows) below ``minimum`` with one line."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")


def points_of(exp, n: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``n`` (None: all) test points as the model sees them, with their labels (None without); the
    training points of data without a test set (:meth:`ppl_vae.data.Dataset.head`)."""
    data = exp.data
    total = data.x_test.shape[0] or data.x_train.shape[0]
    if total == 0:
        raise ConfigError("the data set has no points to encode")
    return data.head(total if n is None else min(n, total))


def decoding_labels(model, y: torch.Tensor | None, what: str) -> torch.Tensor | None:
    """The labels a model that needs them (a conditional VAE) decodes with; None for other models."""
    if not needs_labels(model):
        return None
    if y is None:
        raise ConfigError(f"{what}: this model decodes with a label y, and the data set has no labels")
    return y


def decode_images(exp, codes: dict, y: torch.Tensor | None) -> torch.Tensor:
    """The images ``(N, C, H, W)`` the experiment's model decodes from ``codes`` (with the labels ``y`` of a
    model that needs them)."""
    return pictures(exp.model, decode(exp.model, codes, exp.data.x_shape, y), exp.data.image_shape)


# -- encoding ---------------------------------------------------------------------------------------------


def _site_code(site: dict, draws: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A site's code: the mode of a discrete distribution, else its mean, else the average of draws."""
    fn = site["fn"]
    if fn.support.is_discrete:
        try:
            return fn.mode
        except NotImplementedError:
            return site["value"]
    try:
        mean = fn.mean
        if bool(torch.isfinite(mean).all()):
            return mean
    except NotImplementedError:
        pass
    return draws().float().mean(0)


def _mean_path(run: Callable[[dict], object], names: Sequence[str] | None, codes: dict | None = None) -> dict:
    """Codes of the latent sites ``names`` (None: all) of the program traced by ``run(conditioned)``, site by
    site in the order it samples them, each with the sites before it conditioned on their codes."""
    codes = dict(codes or {})
    while True:
        trace = run(codes)
        pending = [s for s in latent_nodes(trace) if s["name"] not in codes and (names is None or s["name"] in names)]
        if not pending:
            return codes
        site = pending[0]
        name = site["name"]
        codes[name] = _site_code(site, lambda: torch.stack([run(codes).nodes[name]["value"] for _ in range(MEAN_DRAWS)]))


def posterior_means(model, guide, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The code of each point of ``x``: per latent site of the guide, the mean of q (see the module's docstring).

    ``y`` (the points' labels) reaches the model and guide only when the model needs labels
    (:func:`ppl_vae.contract.needs_labels`).

    :returns: ``{site: tensor (N, *event)}``, in the order the guide samples its sites.
    """
    model, guide = as_modules(model, guide)
    y = y if needs_labels(model) else None
    chunks: list[dict] = []
    with eval_mode(model, guide):
        for start in range(0, x.shape[0], CHUNK):
            xb = x[start : start + CHUNK]
            yb = None if y is None else y[start : start + CHUNK]

            def run(codes, xb=xb, yb=yb):
                return poutine.trace(poutine.condition(guide, data=codes)).get_trace(xb, yb)

            chunks.append(_mean_path(run, None))
    if not chunks or not chunks[0]:
        raise ConfigError("the guide has no latent sites, so the data have no codes to explore")
    return {name: torch.cat([c[name] for c in chunks]) for name in chunks[0]}


# -- the prior and decoding -----------------------------------------------------------------------------


def prior_trace(model, codes: dict, x_shape: Sequence[int], y: torch.Tensor | None = None):
    """A trace of the model generating with ``codes`` conditioned: its latent sites' ``fn`` are the prior given
    the conditioned parents."""
    n = next(iter(codes.values())).shape[0] if codes else (1 if y is None else y.shape[0])
    return generate(model, n, x_shape, y, conditioned=codes)


def prior_means(model, names: Sequence[str], x_shape: Sequence[int], y: torch.Tensor | None = None) -> dict:
    """The prior's code of one point: per site in ``names``, in the model's order, the mean (the mode of a
    discrete site) of p(site | the sites before it at their prior codes)."""
    return _mean_path(lambda codes: prior_trace(model, codes, x_shape, y), names)


def decode(model, codes: dict[str, torch.Tensor], x_shape: Sequence[int], y: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of p(x | codes) for each row of ``codes``: ``(N, *x_shape)``; sites not in ``codes`` are drawn
    from the prior."""
    n = next(iter(codes.values())).shape[0]
    out = []
    for start in range(0, n, CHUNK):
        part = {k: v[start : start + CHUNK] for k, v in codes.items()}
        yb = None if y is None else y[start : start + CHUNK]
        trace = prior_trace(model, part, x_shape, yb)
        out.append(_site_mean(trace, _data_site(model, trace, part)))
    return torch.cat(out)


def _data_site(model, trace, conditioned: dict) -> str:
    """The data site of a trace in which the sites ``conditioned`` are observed too."""
    view = trace.copy()
    for name in conditioned:
        view.remove_node(name)
    return data_site_name(model, view)


def pictures(model, x: torch.Tensor, image_shape: Sequence[int]) -> torch.Tensor:
    """Decoded means ``(N, *x_shape)`` as images ``(N, C, H, W)`` in [0, 1] (categorical256 scaled to [0, 1])."""
    return _as_images(x, image_shape, _pixel_scale(model))


def data_pictures(x: torch.Tensor, image_shape: Sequence[int]) -> torch.Tensor:
    """Data points (values in [0, 1] whatever the likelihood) as images ``(N, C, H, W)``."""
    return _as_images(x, image_shape)


def real_sites(exp, codes: dict[str, torch.Tensor], y: torch.Tensor | None = None) -> list[str]:
    """The sites of ``codes`` whose prior has real-valued support (not discrete, not a simplex), in their order."""
    first = {name: value[:1] for name, value in codes.items()}
    trace = prior_trace(exp.model, first, exp.data.x_shape, None if y is None else y[:1])
    return [name for name in codes if _is_real(trace.nodes[name]["fn"].support)]


def flatten_codes(codes: dict[str, torch.Tensor], sites: Sequence[str]) -> torch.Tensor:
    """The codes of ``sites`` side by side: ``(N, total size)``."""
    return torch.cat([codes[s].reshape(codes[s].shape[0], -1) for s in sites], -1)


# -- units -----------------------------------------------------------------------------------------------


@documented
@dataclass(frozen=True)
class Unit:
    """One row of a traversal: a coordinate of a real-valued or Bernoulli site, or a whole categorical site."""

    #: the latent site
    site: str
    #: the coordinate in the site's flattened value; None for a whole categorical or simplex-valued site
    index: int | None
    #: the values a discrete unit takes (categories or one-hot vertices), None for a real-valued one
    values: torch.Tensor | None = None

    @property
    def label(self) -> str:
        return self.site if self.index is None else f"{self.site}[{self.index}]"


def _site_units(name: str, fn, value: torch.Tensor) -> list[Unit]:
    support, size = fn.support, math.prod(value.shape[1:])
    base = _base_constraint(support)
    if _is_real(support):
        return [Unit(name, i) for i in range(size)]
    if isinstance(base, type(constraints.boolean)):
        return [Unit(name, i, torch.tensor([0.0, 1.0], device=value.device)) for i in range(size)]
    if isinstance(base, (type(constraints.simplex), type(constraints.one_hot))):
        return [Unit(name, None, torch.eye(size, device=value.device, dtype=value.dtype))]
    if support.is_discrete and value.dim() == 1 and fn.has_enumerate_support:
        return [Unit(name, None, fn.enumerate_support(expand=False).reshape(-1))]
    raise ConfigError(
        f"latent site {name!r} takes values in {support}: a traversal sweeps real-valued, Bernoulli, categorical "
        "and simplex-valued latents only"
    )


def latent_units(trace, names: Sequence[str]) -> list[Unit]:
    """The units of the latent sites ``names`` in a trace of the model (read from their priors' supports)."""
    units = []
    for name in names:
        site = trace.nodes[name]
        units += _site_units(name, site["fn"], site["value"])
    return units


def _elementwise_kl(q, p) -> torch.Tensor | None:
    """KL(q||p) per element of the batch of the base distributions (Independent unwrapped), or None."""
    while isinstance(q, torch.distributions.Independent):
        q = q.base_dist
    while isinstance(p, torch.distributions.Independent):
        p = p.base_dist
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None


def unit_scores(model, guide, x, y, units: Sequence[Unit], means: dict[str, torch.Tensor]) -> tuple[torch.Tensor, str]:
    """How much each unit is used on the points ``x``, and by which measure (``"kl"`` or ``"variance"``).

    ``kl``: KL(q||p) of the unit, in closed form per dimension, averaged over the points (one draw of the
    sites the prior conditions on), when every site's guide and prior pair has a closed form elementwise
    (diagonal Normal, Laplace, Bernoulli, categorical); a whole categorical site's KL is that of the site.
    ``variance``: otherwise, the variance over the points of the posterior mean (active units, as
    :func:`ppl_vae.compare.latent_usage` counts them); discrete units then score ``inf`` (always shown).
    """
    model, guide = as_modules(model, guide)
    y = y if needs_labels(model) else None
    with eval_mode(model, guide):
        guide_trace = poutine.trace(guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y)
    sites = dict.fromkeys(u.site for u in units)
    kls = {s: _elementwise_kl(guide_trace.nodes[s]["fn"], model_trace.nodes[s]["fn"]) for s in sites}
    n = x.shape[0]
    if all(kl is not None for kl in kls.values()):
        flat = {s: kl.reshape(n, -1) for s, kl in kls.items()}
        scores = [flat[u.site].sum(-1).mean() if u.index is None else flat[u.site][:, u.index].mean() for u in units]
        return torch.stack(scores).float().cpu(), "kl"
    scores = [
        torch.tensor(math.inf) if u.values is not None else means[u.site].reshape(n, -1)[:, u.index].var()
        for u in units
    ]
    return torch.stack(scores).float().cpu(), "variance"


# -- interpolation -------------------------------------------------------------------------------------------


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of the rows of ``a`` and ``b`` ``(N, D)`` at the fractions ``t`` ``(T,)``:
    ``(N, T, D)``.

    The direction moves along the great circle from a/|a| to b/|b| at a constant angular rate, and the norm goes
    linearly from |a| to |b|; for endpoints of equal norm this is Shoemake's slerp,
    ``sin((1-t)w)/sin(w) a + sin(tw)/sin(w) b`` with ``cos w = <a, b>/(|a||b|)``. The endpoints are returned
    exactly; nearly parallel directions (w < 1e-4) fall back to a linear path of the directions.
    """
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na.clamp_min(1e-12), b / nb.clamp_min(1e-12)
    omega = torch.arccos((ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)).unsqueeze(1)  # (N, 1, 1)
    tt = t.to(a.dtype).reshape(1, -1, 1)
    sin = torch.sin(omega)
    small = omega < 1e-4
    wa = torch.where(small, 1 - tt, torch.sin((1 - tt) * omega) / torch.where(small, 1.0, sin))
    wb = torch.where(small, tt, torch.sin(tt * omega) / torch.where(small, 1.0, sin))
    direction = wa * ua.unsqueeze(1) + wb * ub.unsqueeze(1)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    out = direction * ((1 - tt) * na.unsqueeze(1) + tt * nb.unsqueeze(1))
    out[:, t == 0] = a.unsqueeze(1)  # exactly the endpoints
    out[:, t == 1] = b.unsqueeze(1)
    return out
