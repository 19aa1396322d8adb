"""Semi-supervised data: a labelled/unlabelled split of the training set, and mixed batches.

A semi-supervised :class:`~ppl_vae.data.Dataset` is an ordinary one whose
``y_train`` holds :data:`UNLABELLED` (-1) where a label is hidden. The
validation and test sets keep all their labels (validation is held-out
labelled data). :func:`hide_labels` makes such a dataset; :class:`MixedBatches`
serves it so that an epoch passes once over the unlabelled points while the
few labelled ones are cycled, a fixed number in every batch.

References

- Kingma, D. P., Rezende, D. J., Mohamed, S. & Welling, M. (2014). Semi-Supervised Learning
  with Deep Generative Models. NeurIPS.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from .batches import part
from .data import BatchSampler, Dataset
from .errors import DataError

__all__ = [
    "UNLABELLED",
    "MixedBatches",
    "balanced_label_indices",
    "hide_labels",
    "is_semi_supervised",
    "num_labelled",
    "training_example",
]

#: the label value that marks a training point whose label is hidden
UNLABELLED = -1


def _check_labels(y: torch.Tensor, num_classes: int, what: str) -> None:
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DataError(f"{what} must be integer class labels, got dtype {y.dtype}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = ((y < 0) | (y >= num_classes)).nonzero().flatten()[:5].tolist()
        raise DataError(
            f"{what} must lie in 0..{num_classes - 1}, but rows {bad} hold {[int(y[i]) for i in bad]}"
        )


def balanced_label_indices(y: torch.Tensor, num_labels: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``num_labels`` points, the same number from every class, chosen at random (seeded).

    :param torch.Tensor y: integer labels ``(N,)`` in ``0..num_classes-1``.
    :param int num_labels: how many to keep; a multiple of ``num_classes``.
    :raises DataError: for labels outside the range, more labels than exist, a count that cannot be
        balanced, or a class with too few points.
    """
    _check_labels(y, num_classes, "training labels")
    if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1:
        raise DataError(f"num_labels must be a positive int, got {num_labels!r}")
    if num_labels > len(y):
        raise DataError(f"{num_labels} labels were requested but the training set has only {len(y)} points")
    if num_labels % num_classes:
        raise DataError(
            f"num_labels must be a multiple of the {num_classes} classes to balance them, got {num_labels}"
        )
    per_class = num_labels // num_classes
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        members = (y.cpu() == c).nonzero().flatten()
        if len(members) < per_class:
            raise DataError(
                f"class {c} has {len(members)} training points, fewer than the {per_class} labels per class "
                f"that num_labels={num_labels} needs" + ("" if len(members) else " (it has no labelled point at all)")
            )
        chosen.append(members[torch.randperm(len(members), generator=g)[:per_class]])
    return torch.cat(chosen).sort().values


def hide_labels(data: Dataset, num_labels: int, seed: int = 0) -> Dataset:
    """A copy of ``data`` whose training labels are hidden (:data:`UNLABELLED`) except ``num_labels`` of them.

    The kept labels are balanced across classes and chosen with ``seed``.
    """
    if data.y_train is None or data.num_classes is None:
        raise DataError(f"dataset {data.name!r} has no class labels, so it cannot be split into labelled and unlabelled")
    for split in ("val", "test"):
        y = getattr(data, f"y_{split}")
        if y is not None:
            _check_labels(y, data.num_classes, f"{split} labels")
    keep = balanced_label_indices(data.y_train, num_labels, data.num_classes, seed)
    y = torch.full_like(data.y_train, UNLABELLED)
    y[keep] = data.y_train[keep]
    return replace(data, y_train=y)


def is_semi_supervised(y: torch.Tensor | None) -> bool:
    """Whether a label tensor marks some points as unlabelled."""
    return y is not None and bool((y == UNLABELLED).any())


def training_example(data: Dataset, num_points: int = 2) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A few training points as the model sees them (one binary draw under dynamic binarization), to check
    and trace a model on: labelled ones when some labels are hidden."""
    if data.y_train is None or not is_semi_supervised(data.y_train):
        index = torch.arange(min(num_points, len(data.x_train)), device=data.x_train.device)
    else:
        index = (data.y_train != UNLABELLED).nonzero().flatten()[:num_points]
    x = data.x_train[index]
    if data.binarize == "dynamic":
        x = torch.bernoulli(x, generator=torch.Generator(device=x.device).manual_seed(0))
    return x, None if data.y_train is None else data.y_train[index]


def num_labelled(y: torch.Tensor | None) -> int:
    """How many labels are not hidden."""
    return 0 if y is None else int((y != UNLABELLED).sum())


class MixedBatches(BatchSampler):
    """Batches of ``labelled_per_batch`` labelled points (cycled) plus unlabelled ones (each once per epoch).

    Each batch is ``x = cat(x_labelled, x_unlabelled)`` with ``y = cat(y_labelled, -1, ..., -1)``; seeding
    and resuming are those of every :class:`~ppl_vae.data.BatchSampler`.

    :param torch.Tensor x: training data ``(N, *x_shape)``.
    :param torch.Tensor y: labels ``(N,)`` with :data:`UNLABELLED` for hidden ones.
    :param int batch_size: points per batch, labelled and unlabelled together.
    :param int labelled_per_batch: labelled points in each batch, ``1 <= . < batch_size``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, labelled_per_batch: int, **kwargs) -> None:
        if not 1 <= labelled_per_batch < batch_size:
            raise ValueError(
                f"labelled_per_batch must be at least 1 and below the batch size {batch_size}, got {labelled_per_batch!r}"
            )
        super().__init__(x, y, batch_size=batch_size, **kwargs)
        mask = y != UNLABELLED
        self.labelled = mask.nonzero().flatten()
        self.unlabelled = (~mask).nonzero().flatten()
        if len(self.labelled) == 0:
            raise DataError("mixed batches need labelled points, but every training label is hidden")
        if len(self.unlabelled) == 0:
            raise DataError("mixed batches need unlabelled points, but no training label is hidden")
        self.labelled_per_batch = labelled_per_batch
        self.unlabelled_per_batch = batch_size - labelled_per_batch

    def __len__(self) -> int:
        return math.ceil(len(self.unlabelled) / self.unlabelled_per_batch)

    def order(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.x.device
        n_u, n_l = len(self.unlabelled), len(self.labelled)
        order_u = self.unlabelled[torch.randperm(n_u, generator=g, device=device)]
        # Enough shuffled passes over the labelled points to fill every batch of the epoch.
        passes = math.ceil(len(self) * self.labelled_per_batch / n_l)
        order_l = self.labelled[torch.cat([torch.randperm(n_l, generator=g, device=device) for _ in range(passes)])]
        return order_l, order_u

    def batch_points(self, step: int) -> int:
        n_u = len(self.unlabelled)
        return self.labelled_per_batch + min(n_u, (step + 1) * self.unlabelled_per_batch) - step * self.unlabelled_per_batch

    def shard_positions(self, step: int) -> torch.Tensor:
        """A rank's share of the labelled rows and its share of the unlabelled ones: every rank keeps the
        batch's labelled proportion (to within one point)."""
        n_l, n = self.labelled_per_batch, self.batch_points(step)
        labelled, unlabelled = part(0, n_l, self.rank, self.num_shards), part(n_l, n, self.rank, self.num_shards)
        return torch.cat([torch.arange(labelled.start, labelled.stop), torch.arange(unlabelled.start, unlabelled.stop)]).to(self.x.device)

    def batch_index(self, order: tuple[torch.Tensor, torch.Tensor], step: int) -> torch.Tensor:
        order_l, order_u = order
        return torch.cat(
            [
                order_l[step * self.labelled_per_batch : (step + 1) * self.labelled_per_batch],
                order_u[step * self.unlabelled_per_batch : (step + 1) * self.unlabelled_per_batch],
            ]
        )
