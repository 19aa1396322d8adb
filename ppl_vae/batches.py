"""Training batches of a device-resident tensor, taken by index, reproducible to the step.

The order of epoch ``e`` comes from a generator seeded with ``(seed, e)``, and the same generator draws the
dynamic binarization and any input noise, so a run that resumes at (epoch, step) with the saved generator
state sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from .schema import POSITIVE_INT, check_value

__all__ = ["BatchSampler", "Batches", "perturb", "part"]


def perturb(xb: torch.Tensor, g: torch.Generator, binarize: bool, noise: torch.Tensor | None) -> torch.Tensor:
    """A training batch as the model sees it: a fresh Bernoulli draw and/or fresh Gaussian noise, from ``g``."""
    if binarize:
        xb = torch.bernoulli(xb, generator=g)
    if noise is not None:
        xb = xb + noise * torch.randn(xb.shape, generator=g, device=xb.device, dtype=xb.dtype)
    return xb


class BatchSampler:
    """The shared machinery of training batches: a per-epoch generator, and the perturbation of each batch.

    The order of epoch ``e`` comes from a generator seeded with ``(seed, e)``, and the same generator
    draws the dynamic binarization and the noise, so a run that resumes at (epoch, step) with the saved
    generator state (:attr:`generator`) sees exactly the batches an uninterrupted run would have seen.
    Subclasses say how an epoch is cut into batches (:meth:`order` and :meth:`batch_index`).

    :param torch.Tensor x: data, ``(N, *x_shape)``, on the training device.
    :param y: labels ``(N,)`` or None.
    :param int batch_size: points per batch.
    :param int seed: base seed of the per-epoch generators.
    :param bool binarize: draw ``x ~ Bernoulli(x)`` afresh for every batch.
    :param noise: per-point standard deviations ``(N, *x_shape)``: draw ``x ~ Normal(x, noise)`` afresh for every batch.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None = None,
        *,
        batch_size: int,
        seed: int = 0,
        binarize: bool = False,
        noise: torch.Tensor | None = None,
    ) -> None:
        check_value("batch_size", batch_size, POSITIVE_INT)
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.seed = seed
        self.binarize = binarize
        self.noise = noise
        self.generator = torch.Generator(device=x.device)
        self.rank, self.num_shards = 0, 1

    def shard(self, rank: int, num_shards: int) -> "BatchSampler":
        """Yield only this rank's share of every batch (data-parallel training, :mod:`ppl_vae.inference.distributed`).

        Every rank draws the same global batch (same order, same binarization and noise draws) and keeps
        its own part of it, so the shards of the ``num_shards`` ranks together are the batch one process
        would see; :meth:`batch_points` still counts the whole batch.
        """
        if not 0 <= rank < num_shards:
            raise ValueError(f"rank must be in [0, {num_shards}), got {rank!r}")
        self.rank, self.num_shards = rank, num_shards
        return self

    def batch_points(self, step: int) -> int:
        """Points in batch ``step`` of an epoch, over all shards."""
        raise NotImplementedError  # pragma: no cover - abstract

    def shard_positions(self, step: int) -> torch.Tensor | slice:
        """Which rows of the global batch ``step`` this rank keeps (all of them for one shard)."""
        return part(0, self.batch_points(step), self.rank, self.num_shards)

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def order(self, g: torch.Generator) -> object:
        """What an epoch's batches are taken from, drawn from the epoch's generator."""
        raise NotImplementedError  # pragma: no cover - abstract

    def batch_index(self, order: object, step: int) -> torch.Tensor | slice:
        """The indices of batch ``step`` of an epoch."""
        raise NotImplementedError  # pragma: no cover - abstract

    def epoch(
        self, epoch: int, start_step: int = 0, generator_state: torch.Tensor | None = None
    ) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
        """Yield ``(step, x_batch, y_batch)`` for ``epoch``, starting at ``start_step``."""
        g = self.generator
        g.manual_seed(self.seed * 1_000_003 + epoch)
        order = self.order(g)
        if generator_state is not None:
            g.set_state(generator_state)
        for step in range(start_step, len(self)):
            idx = self.batch_index(order, step)
            xb = perturb(self.x[idx], g, self.binarize, None if self.noise is None else self.noise[idx])
            yb = self.y[idx] if self.y is not None else None
            if self.num_shards > 1:
                keep = self.shard_positions(step)
                xb, yb = xb[keep], (yb[keep] if yb is not None else None)
            yield step, xb, yb


def part(lo: int, hi: int, rank: int, num_shards: int) -> slice:
    """Rank ``rank``'s contiguous share of ``range(lo, hi)``, the first shards one longer when it does not divide."""
    size, extra = divmod(hi - lo, num_shards)
    start = lo + rank * size + min(rank, extra)
    return slice(start, start + size + (rank < extra))


class Batches(BatchSampler):
    """Shuffled mini-batches of a device-resident tensor, taken by index (the last batch may be smaller).

    :param bool shuffle: a fresh order every epoch (else the stored order).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None = None, *, shuffle: bool = True, **kwargs) -> None:
        super().__init__(x, y, **kwargs)
        self.shuffle = shuffle

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def order(self, g: torch.Generator) -> torch.Tensor | None:
        return torch.randperm(len(self.x), generator=g, device=self.x.device) if self.shuffle else None

    def batch_points(self, step: int) -> int:
        return min(len(self.x), (step + 1) * self.batch_size) - step * self.batch_size

    def batch_index(self, order: torch.Tensor | None, step: int) -> torch.Tensor | slice:
        lo, hi = step * self.batch_size, min(len(self.x), (step + 1) * self.batch_size)
        return order[lo:hi] if order is not None else slice(lo, hi)
