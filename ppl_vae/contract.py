"""The contract between a model, a guide and ppl_vae's tools, written once.

What every model and guide must do
----------------------------------

- **Call signature.** ``model(x, y=None)`` and ``guide(x, y=None)``: ``x`` is a batch ``(N, *x_shape)``
  and ``y`` the batch's labels ``(N,)`` or None. A function may leave ``y`` out of its signature
  (``def model(x)``); it is then never passed. Both may be plain functions that register their
  networks with ``pyro.module`` and their parameters with ``pyro.param``, or ``PyroModule`` s.
- **The data plate.** Every site local to a data point sits in ``pyro.plate(DATA_PLATE, N)``
  (:data:`DATA_PLATE` is ``"data"``). Per-data-point bounds (``iwae``, the importance-sampled
  log p(x)) need every latent site inside it.
- **Pairing.** A guide's latent sites pair with the model's by name.
- **The data site.** The model observes the batch at the site :data:`DATA_SITE` (``"x"``). A model whose
  data site has another name (``"obs"`` in Pyro's tutorials) is found when it has exactly one observed
  site, or declares ``data_site = "obs"`` (:class:`HasDataSite`).
- **Particles.** Evaluation and the multi-particle estimators draw K particles at once in a plate
  :data:`PARTICLE_PLATE` left of the model's plates, so every tensor gains a leading dimension. A
  model and guide that broadcast (use ``x.shape[0]``, not ``z.shape[0]``; concatenate along ``-1``;
  build distributions from broadcastable parameters) run K particles in one pass. Those that do not
  still work: ppl_vae finds out on a two-point batch and draws the particles one at a time, saying
  so once in a :class:`ParticleLoopWarning`.
- **Generation.** Samples come from the model run with its data site unconditioned
  (``poutine.uncondition``) on a batch of zeros, so no extra signature is needed.

Optional capabilities
---------------------

A model or guide offers more by having the attributes of a protocol below (a function gets them by
assignment: ``model.x_shape = (784,)``). Tools ask through :func:`capability`; a figure that needs a
missing capability is skipped with one line saying why.

==========================  ===================================================================
protocol                    what it enables
==========================  ===================================================================
:class:`HasXShape`          building registry guides without an example batch
:class:`HasLikelihood`      checking the data against the likelihood's support; pixel scales
:class:`HasDataSite`        a data site not named ``x``
:class:`NeedsLabels`        a model that needs the labels to score x (a conditional VAE)
:class:`HasLabelClasses`    the number of classes of that label (samples cycle through them)
:class:`Classifier`         a guide with a classifier q(y|x) (M2): accuracy, semi-supervised training
:class:`ClassConditional`   a model that decodes a style z with any class y: class grids, analogies
:class:`Rebuildable`        a module model or guide the CLI can rebuild from a run's config
==========================  ===================================================================

Estimators (Pyro ELBO objects) may offer :class:`HasTrainableState` (learned state such as neural
baselines, trained and checkpointed by ``fit``), :class:`Prepares` (build that state before the
optimizer exists), :class:`WrapsEstimator` (a wrapper checked through the estimator it wraps) and
:class:`ReportsTerms` (the last step's named loss terms, reported by ``fit``). A module inside an
estimator's trainable state may be :class:`TrainedByObjective` (a second player, such as an adversarial
autoencoder's discriminator, that the objective steps with its own optimizer).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, TypeVar, runtime_checkable

import pyro
import pyro.distributions as dist
import torch

from .compat import site_is_subsample

__all__ = [
    "DATA_PLATE",
    "PARTICLE_PLATE",
    "DATA_SITE",
    "ParticleLoopWarning",
    "HasXShape",
    "HasLikelihood",
    "HasDataSite",
    "NeedsLabels",
    "HasLabelClasses",
    "Classifier",
    "ClassConditional",
    "Rebuildable",
    "HasTrainableState",
    "Prepares",
    "WrapsEstimator",
    "ReportsTerms",
    "TrainedByObjective",
    "capability",
    "data_site_name",
    "needs_labels",
    "estimator_chain",
    "TERM_FLAG",
    "add_penalty",
]

#: The name of the plate over data points, in every model and guide.
DATA_PLATE = "data"
#: The name of the plate over importance samples (particles), left of the model's plates.
PARTICLE_PLATE = "particles"
#: The default name of the observed data site.
DATA_SITE = "x"


class ParticleLoopWarning(UserWarning):
    """A model or guide does not broadcast over a leading particle dimension; particles are drawn one at a time."""


@runtime_checkable
class HasXShape(Protocol):
    """Knows the shape of one observation."""

    x_shape: tuple[int, ...]


@runtime_checkable
class HasLikelihood(Protocol):
    """Holds its observation distribution (a :class:`~ppl_vae.likelihoods.Likelihood`)."""

    likelihood: Any


@runtime_checkable
class HasDataSite(Protocol):
    """Observes the data at a site with another name than ``x``."""

    data_site: str


@runtime_checkable
class NeedsLabels(Protocol):
    """A model conditioned on the labels: it cannot score x without y (``needs_labels`` is True)."""

    needs_labels: bool


@runtime_checkable
class HasLabelClasses(Protocol):
    """A model conditioned on a class label: ``label_classes`` classes (samples cycle through them)."""

    label_classes: int


@runtime_checkable
class Classifier(Protocol):
    """A guide with a classifier q(y|x) for its label site (M2's guide)."""

    label_site: str | None

    def label_dist(self, x: torch.Tensor) -> torch.distributions.Categorical: ...


@runtime_checkable
class ClassConditional(Protocol):
    """A model with a class latent and a style latent ``z``: it can decode any style with any class."""

    label_site: str | None
    num_classes: int

    def label_value(self, y: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class Rebuildable(Protocol):
    """A module that records the keyword arguments it was built with (plain YAML values)."""

    init_args: Mapping[str, Any]


@runtime_checkable
class HasTrainableState(Protocol):
    """An estimator with learned state (``nn.Module`` or None) that ``fit`` trains and checkpoints."""

    trainable_module: Any


@runtime_checkable
class Prepares(Protocol):
    """An estimator that builds its state from a trace, before the optimizer is made."""

    def prepare(self, model: Callable, guide: Callable, x: torch.Tensor, y: torch.Tensor | None = None) -> None: ...


@runtime_checkable
class WrapsEstimator(Protocol):
    """An estimator that wraps another (``base``), which tools check and prepare through it."""

    base: Any


@runtime_checkable
class ReportsTerms(Protocol):
    """An estimator that reports the named terms of its last ``loss_and_grads`` call (nats per data point);
    ``fit`` writes each as ``term_<name>`` in the epoch's metrics, as it does penalty sites."""

    last_terms: Mapping[str, float]


@runtime_checkable
class TrainedByObjective(Protocol):
    """A module of an estimator's trainable state whose parameters the objective steps itself, with its own
    optimizer (``trained_by_objective`` is True): ``fit``'s optimizer leaves them out. Its optimizer state
    travels in the module's ``state_dict`` (``get_extra_state``), so a checkpoint holds it."""

    trained_by_objective: bool


P = TypeVar("P")


def capability(obj: Any, protocol: type[P]) -> P | None:
    """``obj`` if it offers ``protocol`` (and, for a label site, a non-empty one), else None."""
    if not isinstance(obj, protocol):
        return None
    if protocol in (Classifier, ClassConditional) and obj.label_site is None:
        return None
    return obj


def data_site_name(model: Any, trace: Any = None) -> str:
    """The name of the model's data site: its declared ``data_site``; else ``x`` when a trace of the model has it
    or none is given; else the trace's only observed site (also when unconditioned for generation).

    :raises ValueError: for a trace with several observed sites and none named ``x`` or declared.
    """
    declared = capability(model, HasDataSite)
    if declared is not None:
        return declared.data_site
    if trace is None or DATA_SITE in trace.nodes:
        return DATA_SITE
    observed = [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and (site["is_observed"] or site["infer"].get("was_observed")) and not site_is_subsample(site)
    ]
    if len(observed) != 1:
        raise ValueError(
            f"cannot tell the model's data site among its observed sites {observed}; name it 'x', or declare "
            "model.data_site = 'name'"
        )
    return observed[0]


def needs_labels(model: Any) -> bool:
    """Whether the model needs the labels y to score x."""
    declared = capability(model, NeedsLabels)
    return bool(declared is not None and declared.needs_labels)


def estimator_chain(estimator: Any) -> list:
    """The estimator and those it wraps, outermost first."""
    chain = [estimator]
    while capability(chain[-1], WrapsEstimator) is not None and chain[-1].base is not None:
        chain.append(chain[-1].base)
    return chain


#: the ``infer`` key that marks a penalty site (see :func:`add_penalty`)
TERM_FLAG = "loss_term"


def add_penalty(name: str, value: torch.Tensor) -> torch.Tensor:
    """Add ``value`` (nats; one per data point inside the data plate) to the training loss. Call it in the guide.

    A penalty is a factor site of the guide (``Unit`` with the value as its log-density, marked with
    :data:`TERM_FLAG`); see :mod:`ppl_vae.inference.terms` for how estimators and ``fit`` treat it. It is part of
    the contract so that models and guides (layer 2) can call it without importing the inference layer.

    :raises ValueError: for a value that is not a floating-point tensor.
    """
    if not torch.is_tensor(value) or not value.is_floating_point():
        raise ValueError(f"penalty {name!r} must be a floating-point tensor, got {type(value).__name__}")
    unit = dist.Unit(value, has_rsample=True)
    pyro.sample(name, unit, obs=unit.sample(), infer={"is_auxiliary": True, TERM_FLAG: True})
    return value
