r"""Semi-supervised training (the M2 model of Kingma et al. 2014): one objective for mixed batches.

A mixed batch holds labelled points (``y >= 0``) and unlabelled ones (``y = -1``,
see :mod:`ppl_vae.labelled`). :class:`SemiSupervised_ELBO` wraps any estimator
of the registry and, on such a batch, adds up

.. math::

    -\sum_{(x, y) \in \text{labelled}} \mathcal{L}(x, y)
    \;-\; \sum_{x \in \text{unlabelled}} \mathcal{U}(x)
    \;-\; \alpha \sum_{(x, y) \in \text{labelled}} \log q_\phi(y \mid x),

where :math:`\mathcal{L}(x, y)` is the ELBO of :math:`\log p(x, y)` (the label
observed in the model, not sampled in the guide) and :math:`\mathcal{U}(x)` the
ELBO of :math:`\log p(x)` with the label a latent variable. How the estimator
treats that discrete latent is the user's choice:

- ``enum``: exact enumeration over the classes (:class:`~pyro.infer.TraceEnum_ELBO`),
  :math:`\mathcal{U}(x) = \sum_y q(y|x) \mathcal{L}(x, y) + \mathrm{H}[q(y|x)]`;
- ``tracegraph``: REINFORCE with a decaying-average or neural baseline;
- ``trace`` with a ``relaxed_categorical`` label: the Gumbel-softmax relaxation.

The last term is the auxiliary classification loss that makes the classifier
:math:`q(y|x)` learn from the labels directly; it is written as a Pyro model
that observes the labels under the classifier, scaled by :math:`\alpha` with
``poutine.scale``, so ``fit``'s ``1/B`` scaling applies to it as to the rest.

Kingma et al. weight the auxiliary term by :math:`\alpha = 0.1 N` against the
*sum* of the labelled ELBO terms over the :math:`N_l` labels, that is
:math:`0.1 N / N_l` per labelled point; :func:`kingma_aux_weight` gives that
number, the default ``aux_weight``.

References

- Kingma, D. P., Rezende, D. J., Mohamed, S. & Welling, M. (2014). Semi-Supervised Learning
  with Deep Generative Models. NeurIPS.
- Jang, E., Gu, S. & Poole, B. (2017). Categorical Reparameterization with Gumbel-Softmax. ICLR.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO, Trace_ELBO

from ..compat import elbo_trace
from ..contract import DATA_PLATE, Classifier, capability
from ..errors import ConfigError
from ..labelled import UNLABELLED
from ..schema import (
    POSITIVE,
    POSITIVE_INT,
    check_fields,
    check_value,
    documented,
    number_in,
    optional,
)
from .evaluate import eval_mode
from .tracing import dry_trace

__all__ = [
    "SemiSupervisedConfig",
    "SemiSupervised_ELBO",
    "classifier",
    "classification_accuracy",
    "kingma_aux_weight",
    "unbiased_labelled_weight",
    "latent_codes",
]


@documented
@dataclass(frozen=True)
class SemiSupervisedConfig:
    """Semi-supervised training (the ``semi_supervised:`` section); off while ``num_labels`` is null."""

    #: training labels kept, balanced across classes (100, 600, 1000, 3000); null: off
    num_labels: int | None = None
    #: labelled points in each batch of train.batch_size (cycled through the labels)
    labelled_per_batch: int = 10
    #: alpha per labelled point of the term -alpha log q(y|x); null: 0.1 N / N_labels
    aux_weight: float | None = None
    #: scale of the labelled terms; null: their data share over their batch share
    labelled_weight: float | None = None
    #: seeds which points keep their labels
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(
            self, "semi_supervised", num_labels=optional(POSITIVE_INT), labelled_per_batch=POSITIVE_INT,
            aux_weight=optional(number_in(0)), labelled_weight=optional(POSITIVE),
        )

    @property
    def enabled(self) -> bool:
        return self.num_labels is not None


def kingma_aux_weight(num_train: int, num_labels: int) -> float:
    """Kingma et al.'s :math:`\\alpha = 0.1 N`, expressed per labelled point: :math:`0.1 N / N_l`."""
    return 0.1 * num_train / num_labels


def unbiased_labelled_weight(num_train: int, num_labels: int, batch_size: int, labelled_per_batch: int) -> float:
    """The scale that makes a mixed batch an unbiased estimate of the whole objective per data point.

    Labelled points fill ``labelled_per_batch / batch_size`` of every batch but only
    ``num_labels / num_train`` of the data; scaling their terms by the ratio of the two keeps their
    weight (ELBO and auxiliary term) what it is in Kingma et al.'s objective, however often they are cycled.
    """
    return (num_labels / num_train) / (labelled_per_batch / batch_size)


def classifier(guide: Callable) -> Callable[[torch.Tensor], torch.distributions.Categorical]:
    """The guide's classifier q(y|x), ``x -> Categorical`` (the :class:`~ppl_vae.contract.Classifier` capability).

    :class:`~ppl_vae.guides.SpecGuide` offers it for a model with a semi-observed latent, such as the
    ``m2`` spec.

    :raises ConfigError: if the guide has none.
    """
    offered = capability(guide, Classifier)
    if offered is None:
        raise ConfigError(
            f"semi-supervised training needs a guide with a classifier q(y|x) (label_site and label_dist(x), as the "
            f"spec guide of a model with an observed_when_given latent has), got {type(guide).__name__}"
        )
    return offered.label_dist


class SemiSupervised_ELBO(ELBO):
    """Labelled, unlabelled and auxiliary terms of a mixed batch, each computed by Pyro.

    :param ELBO base: the estimator for the labelled and unlabelled terms (its treatment of the
        latent label is what differs between enum, tracegraph and relaxation).
    :param float aux_weight: :math:`\\alpha` per labelled point.
    :param float labelled_weight: scale of the labelled terms (ELBO and auxiliary); see
        :func:`unbiased_labelled_weight`.
    """

    def __init__(self, base: ELBO, aux_weight: float, labelled_weight: float = 1.0) -> None:
        super().__init__(max_plate_nesting=getattr(base, "max_plate_nesting", 1))
        check_value("aux_weight", aux_weight, number_in(0))
        check_value("labelled_weight", labelled_weight, POSITIVE)
        self.base = base
        self.aux_weight = float(aux_weight)
        self.labelled_weight = float(labelled_weight)
        self._aux_elbo = Trace_ELBO()

    def _get_trace(self, model, guide, args, kwargs):
        return elbo_trace(self.base, model, guide, args, kwargs)

    @property
    def trainable_module(self):
        """The wrapped estimator's learned state (neural baselines), trained and checkpointed by ``fit``."""
        return getattr(self.base, "trainable_module", None)

    def _aux_model(self, guide: Callable, x: torch.Tensor, y: torch.Tensor) -> None:
        with pyro.plate(DATA_PLATE, x.shape[0]), poutine.scale(scale=self.aux_weight):
            pyro.sample("y_aux", classifier(guide)(x), obs=y)

    @staticmethod
    def _no_guide(guide: Callable, x: torch.Tensor, y: torch.Tensor) -> None:
        pass

    def _parts(self, x: torch.Tensor, y: torch.Tensor | None):
        if y is None:
            return None, (x, None)
        if y.shape != x.shape[:1]:
            raise ValueError(f"labels must have shape ({x.shape[0]},) to match the batch, got {tuple(y.shape)}")
        known = y != UNLABELLED
        labelled = (x[known], y[known]) if bool(known.any()) else None
        unlabelled = (x[~known], None) if not bool(known.all()) else None
        return labelled, unlabelled

    def _run(self, method: str, model, guide, x, y=None) -> float:
        labelled, unlabelled = self._parts(x, y)
        total = 0.0
        if labelled is not None:
            with poutine.scale(scale=self.labelled_weight):
                total += float(getattr(self.base, method)(model, guide, *labelled))
                if self.aux_weight > 0:
                    # Backward by hand: Trace_ELBO skips it when no param site was traced (a plain nn.Module guide).
                    with torch.set_grad_enabled(method == "loss_and_grads"):
                        aux = self._aux_elbo.differentiable_loss(self._aux_model, self._no_guide, guide, *labelled)
                    if method == "loss_and_grads" and aux.requires_grad:
                        aux.backward()
                    total += float(aux.detach())
        if unlabelled is not None:
            total += float(getattr(self.base, method)(model, guide, *unlabelled))
        return total

    def loss(self, model, guide, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
        """The loss of a mixed batch (labels :data:`~ppl_vae.labelled.UNLABELLED` where hidden)."""
        return self._run("loss", model, guide, x, y)

    def loss_and_grads(self, model, guide, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
        """The loss of a mixed batch; gradients of its three parts accumulate in the parameters."""
        return self._run("loss_and_grads", model, guide, x, y)


@torch.no_grad()
def classification_accuracy(guide: Callable, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Share of points whose most probable class under q(y|x) is the true label."""
    if len(x) == 0:
        return float("nan")
    classify = classifier(guide)
    was_training = getattr(guide, "training", False)
    if hasattr(guide, "eval"):
        guide.eval()
    try:
        correct = 0
        for lo in range(0, len(x), batch_size):
            logits = classify(x[lo : lo + batch_size]).logits
            correct += int((logits.argmax(-1) == y[lo : lo + batch_size]).sum())
    finally:
        if was_training:
            guide.train()
    return correct / len(x)


@torch.no_grad()
def latent_codes(
    guide: Callable, x: torch.Tensor, site: str = "z", batch_size: int = 1000, with_stddev: bool = False
):
    """The posterior mean of latent ``site`` under the guide, ``(N, latent_dim)``: M1's features for M2.

    With ``with_stddev``, returns ``(mean, stddev)``, the posterior's standard deviations alongside.

    :raises ConfigError: if the guide has no such site or its distribution has no closed-form mean (a flow).
    """
    out, spread = [], []
    with eval_mode(guide):
        for lo in range(0, len(x), batch_size):
            trace = dry_trace(guide, x[lo : lo + batch_size], None)
            if site not in trace.nodes:
                raise ConfigError(f"the M1 guide has no latent site {site!r} to encode the data with")
            try:
                mean = trace.nodes[site]["fn"].mean
                if with_stddev:
                    spread.append(trace.nodes[site]["fn"].stddev.reshape(mean.shape[0], -1))
            except NotImplementedError:
                raise ConfigError(
                    f"the M1 guide's q({site}|x) ({type(trace.nodes[site]['fn']).__name__}) has no closed-form mean; "
                    "use a normal guide for the M1 stage"
                ) from None
            out.append(mean.reshape(mean.shape[0], -1))
    return (torch.cat(out), torch.cat(spread)) if with_stddev else torch.cat(out)
