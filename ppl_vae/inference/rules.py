"""Why an estimator refuses a guide site: one small rule each, named in the estimator registry's table.

A rule takes a latent guide site (from a Pyro trace), the estimator's options and its name, and returns the
refusal message, or None when the estimator can train the site. The messages name the site and say what
to use instead. :mod:`ppl_vae.inference.checks` applies them before training.
"""

from __future__ import annotations

from typing import Any, Callable

from pyro.distributions import TransformedDistribution

from ..contract import DATA_PLATE

__all__ = ["SiteRule", "pathwise", "meanfield", "renyi", "enumerable", "local", "dreg", "not_enumerated"]

# ---------------------------------------------------------------------------------------------

#: ``rule(site, options, label) -> refusal message or None``, for one latent guide site
SiteRule = Callable[[dict, Any, str], "str | None"]


def _reparam(site: dict) -> bool:
    return bool(getattr(site["fn"], "has_rsample", False))


def _dist_name(site: dict) -> str:
    fn = site["fn"]
    while hasattr(fn, "base_dist") and not isinstance(fn, TransformedDistribution):
        fn = fn.base_dist
    return type(fn).__name__


def pathwise(site: dict, options: Any, label: str) -> str | None:
    if _reparam(site) or getattr(options, "allow_score_function", False):
        return None
    return (
        f"estimator {label} cannot train the discrete guide site {site['name']!r}: its samples carry no pathwise "
        "gradient (and this estimator does not enumerate it). Use estimator.name: tracegraph (score function with "
        "baselines), enum (exact enumeration) or a relaxed_categorical latent, or set "
        "estimator.allow_score_function: true for plain, high-variance REINFORCE"
    )


def meanfield(site: dict, options: Any, label: str) -> str | None:
    if _reparam(site):
        return None
    return (
        f"estimator {label} needs every guide site reparameterized (Pyro's TraceMeanField_ELBO), but guide site "
        f"{site['name']!r} is not ({_dist_name(site)}); use tracegraph or enum"
    )


def renyi(site: dict, options: Any, label: str) -> str | None:
    if _reparam(site):
        return None
    return (
        f"estimator {label} cannot train the non-reparameterized guide site {site['name']!r}: Pyro's RenyiELBO adds "
        "no correct score-function term for it (with alpha = 0 its guide gets no gradient at all); use iwae with "
        "allow_score_function, tracegraph or enum"
    )


def enumerable(site: dict, options: Any, label: str) -> str | None:
    if _reparam(site) or getattr(site["fn"], "has_enumerate_support", False):
        return None
    return (
        f"estimator {label} cannot handle guide site {site['name']!r}: it is neither reparameterizable nor enumerable "
        f"({_dist_name(site)}; a continuous non-reparameterized, or an Independent discrete, distribution). Use "
        "tracegraph, or a Categorical / a plate per dimension"
    )


def local(site: dict, options: Any, label: str) -> str | None:
    if any(f.name == DATA_PLATE for f in site["cond_indep_stack"]):
        return None
    return f"{label} needs every latent local to a data point, but guide site {site['name']!r} is outside the {DATA_PLATE!r} plate"


def dreg(site: dict, options: Any, label: str) -> str | None:
    if options.gradient != "dreg":
        return None
    if not _reparam(site):
        return (
            f"iwae with gradient dreg needs reparameterized guide sites, but guide site {site['name']!r} is not "
            f"({_dist_name(site)}); use gradient: reparam with allow_score_function, or tracegraph"
        )
    fn = site["fn"]
    while hasattr(fn, "base_dist") and not isinstance(fn, TransformedDistribution):
        fn = fn.base_dist
    if isinstance(fn, TransformedDistribution):
        return (
            f"iwae with gradient dreg cannot use guide site {site['name']!r}: it is a transformed distribution "
            "(a flow), whose log-density is not a function of the sample alone; use gradient: reparam"
        )
    return None


def not_enumerated(site: dict, options: Any, label: str) -> str | None:
    if not site["infer"].get("enumerate"):
        return None
    return (
        f"guide site {site['name']!r} is marked for enumeration, which only enum (TraceEnum_ELBO) performs; "
        f"estimator {label} would sample it instead: use enum, or drop enumerate from the guide"
    )
