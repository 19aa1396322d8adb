"""Datasets, splits and binarization (the files are read by :mod:`ppl_vae.datafiles`, the batches drawn by
:mod:`ppl_vae.batches`).

A dataset is loaded once into float tensors in [0, 1] and moved whole to the
training device; training batches are taken by index, and dynamic
binarization is a Bernoulli draw on that device. Nothing is decoded per item.

Where the files live: ``data_dir`` (``--data-dir``), else ``$PPL_VAE_DATA``,
else ``~/.cache/ppl_vae`` (``$XDG_CACHE_HOME/ppl_vae``). MNIST and
Fashion-MNIST use torchvision's layout below it (``MNIST/raw/*.gz``); binarized
MNIST reads ``binarized_mnist/binarized_mnist_{train,valid,test}.amat[.gz]``.
Every file is looked for before any is read; only the missing ones are
downloaded (``data.download``), each under a temporary name renamed once
complete, and nothing is unpacked: the data folder is written to only by a
download that succeeded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import torch

from .batches import Batches, BatchSampler, perturb
from .datafiles import default_data_dir, resolve_data_dir
from .datafiles import load_binarized_mnist as _load_binarized_mnist
from .datafiles import load_digits as _load_digits
from .datafiles import load_torchvision as _load_torchvision
from .errors import DataError
from .schema import (
    BOOL,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    check_fields,
    documented,
    number_in,
    one_of,
    optional,
)

__all__ = [
    "DATASETS",
    "BINARIZE_MODES",
    "DataConfig",
    "Dataset",
    "BatchSampler",
    "Batches",
    "check_finite",
    "default_data_dir",
    "load_dataset",
    "perturb",
    "resolve_data_dir",
]

#: dataset names accepted by :func:`load_dataset`
DATASETS = ("digits", "mnist", "fashion_mnist", "binarized_mnist")
#: binarization modes: a fresh draw per epoch on the device, one seeded draw, or grey levels
BINARIZE_MODES = ("dynamic", "static", "none")



@documented
@dataclass(frozen=True)
class DataConfig:
    """Which data to train on and how to split and binarize it (the ``data:`` section)."""

    #: one of DATASETS
    name: str = "digits"
    #: where the files are; None: $PPL_VAE_DATA, else ~/.cache/ppl_vae
    data_dir: str | None = None
    #: one of BINARIZE_MODES
    binarize: str = "dynamic"
    #: share of the training set held out for validation (binarized_mnist: its own split)
    val_fraction: float = 0.1
    #: share held out for testing where a dataset has no test split (digits)
    test_fraction: float = 0.2
    #: keep only this many training points (quick experiments); None keeps all
    num_train: int | None = None
    #: items as vectors (MLPs) rather than (channels, height, width) images
    flatten: bool = True
    #: seeds the splits and static binarization
    seed: int = 0
    #: fetch missing MNIST files (never needed for digits)
    download: bool = True

    def __post_init__(self) -> None:
        fraction = number_in(0, 1, high_open=True)
        check_fields(
            self, "data", name=one_of(DATASETS), binarize=one_of(BINARIZE_MODES), val_fraction=fraction,
            test_fraction=fraction, num_train=optional(POSITIVE_INT), flatten=BOOL, seed=NON_NEGATIVE_INT, download=BOOL,
        )
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"data.val_fraction + data.test_fraction must be below 1 (the rest is the training set), got "
                f"{self.val_fraction} + {self.test_fraction}"
            )


@documented
@dataclass
class Dataset:
    """Train, validation and test tensors of one dataset, floats in [0, 1].

    ``x_*`` have shape ``(N, *x_shape)``; ``y_*`` hold integer labels or are None.
    ``binarize == "dynamic"`` means the training images are grey levels to be
    binarized afresh in every epoch (the validation and test sets are binarized
    once, with a fixed seed, so that evaluations are comparable).
    """

    name: str
    x_train: torch.Tensor
    x_val: torch.Tensor
    x_test: torch.Tensor
    y_train: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    #: (channels, height, width), for figures
    image_shape: tuple[int, int, int] = (1, 1, 1)
    binarize: str = "none"
    num_classes: int | None = None
    # Per-point standard deviations (N, *x_shape): training inputs get Gaussian noise of this scale afresh in
    # every batch (M1's posterior spread, so that M2 trains on draws z1 ~ q(z1|x) as in Kingma et al. 2014).
    train_noise: torch.Tensor | None = None
    # How load_dataset made it; None for data passed as a tensor, which only Python can pass again.
    config: DataConfig | None = None

    def __post_init__(self) -> None:
        if self.train_noise is not None and self.train_noise.shape != self.x_train.shape:
            raise DataError(
                f"train_noise must have the training data's shape {tuple(self.x_train.shape)}, "
                f"got {tuple(self.train_noise.shape)}"
            )

    @property
    def x_shape(self) -> tuple[int, ...]:
        """Shape of one observation."""
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> "Dataset":
        """Return a copy with every tensor on ``device``."""
        moved = {
            k: (getattr(self, k).to(device) if getattr(self, k) is not None else None)
            for k in ("x_train", "x_val", "x_test", "y_train", "y_val", "y_test", "train_noise")
        }
        return replace(self, **moved)

    def fixed_train_x(self, n: int | None = None, seed: int = 0) -> torch.Tensor:
        """The first ``n`` (default all) training inputs as one fixed draw, of the same kind as the test inputs.

        With dynamic binarization the stored training images are grey levels; this returns one binary draw
        of them (seeded by ``seed``), as the validation and test images are.
        """
        x = self.x_train if n is None else self.x_train[:n]
        return _bernoulli(x, seed) if self.binarize == "dynamic" else x

    def head(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first ``n`` points as the model sees them: test data, else binarized training data."""
        if self.x_test.shape[0]:
            return self.x_test[:n], None if self.y_test is None else self.y_test[:n]
        return self.fixed_train_x(n), None if self.y_train is None else self.y_train[:n]

    @classmethod
    def from_tensor(cls, x: torch.Tensor, name: str = "tensor") -> "Dataset":
        """Wrap one tensor ``(N, *x_shape)`` as a training set with no validation or test data."""
        if not isinstance(x, torch.Tensor):
            raise DataError(f"data must be a torch.Tensor or a ppl_vae Dataset, got {type(x).__name__}")
        if x.dim() < 2:
            raise DataError(f"data must have shape (num_points, *x_shape), got shape {tuple(x.shape)}")
        check_finite(x, "data")
        x = x.float()
        empty = x[:0]
        return cls(name, x, empty, empty, binarize="none")


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise :class:`DataError` naming the first rows that hold NaN or inf."""
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1) if x.dim() > 1 else ~torch.isfinite(x)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:5].tolist()
        raise DataError(f"{what} contains NaN or inf values (first bad rows: {rows}); clean or impute them first")


def _split_indices(n: int, fractions: tuple[float, ...], seed: int) -> list[torch.Tensor]:
    """Seeded random split of ``range(n)`` into the given fractions plus the remainder (first)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    sizes = [int(round(f * n)) for f in fractions]
    rest = n - sum(sizes)
    out, start = [perm[:rest]], rest
    for s in sizes:
        out.append(perm[start : start + s])
        start += s
    return out


def _bernoulli(x: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.bernoulli(x, generator=torch.Generator(device=x.device).manual_seed(seed))


def load_dataset(config: DataConfig | None = None, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load, split and binarize the dataset named in ``config``.

    :param DataConfig config: which dataset and how to treat it. Defaults to the 8x8 digits.
    :param data_dir: overrides ``config.data_dir``.
    :returns: a :class:`Dataset` on the CPU; move it with :meth:`Dataset.to`.
    """
    config = config or DataConfig()
    root = resolve_data_dir(data_dir or config.data_dir)
    seed = config.seed
    if config.name == "digits":
        x, y = _load_digits()
        train, val, test = _split_indices(len(x), (config.val_fraction, config.test_fraction), seed)
        parts = dict(x_train=x[train], y_train=y[train], x_val=x[val], y_val=y[val], x_test=x[test], y_test=y[test])
        num_classes = 10
    elif config.name in ("mnist", "fashion_mnist"):
        parts = _load_torchvision(config.name, root, config.download)
        train, val = _split_indices(len(parts["x_train"]), (config.val_fraction,), seed)
        x, y = parts["x_train"], parts["y_train"]
        parts.update(x_train=x[train], y_train=y[train], x_val=x[val], y_val=y[val])
        num_classes = 10
    else:  # binarized_mnist: fixed 50k/10k/10k split, already binary
        parts = _load_binarized_mnist(root, config.download)
        num_classes = None
    if len(parts["x_train"]) == 0:
        held_out = f"data.val_fraction={config.val_fraction}"
        if config.name == "digits":
            held_out += f" and data.test_fraction={config.test_fraction}"
        total = sum(len(parts[f"x_{split}"]) for split in ("val", "test") if split == "val" or config.name == "digits")
        raise DataError(f"{held_out} leave no training points of the {total} in {config.name}; lower them")
    image_shape = tuple(parts["x_train"].shape[1:])
    if config.num_train is not None:
        keep = _split_indices(len(parts["x_train"]), (), seed)[0][: config.num_train]
        parts["x_train"] = parts["x_train"][keep]
        if parts.get("y_train") is not None:
            parts["y_train"] = parts["y_train"][keep]
    binarize = config.binarize
    if config.name == "binarized_mnist":
        binarize = "none"  # already binary; a further draw would change nothing
    if binarize in ("static", "dynamic"):
        # Evaluation sets get one fixed draw in either mode, so evaluations are comparable.
        for i, split in enumerate(("train", "val", "test")):
            if binarize == "static" or split != "train":
                parts[f"x_{split}"] = _bernoulli(parts[f"x_{split}"], seed * 1000 + i)
    if config.flatten:
        for split in ("train", "val", "test"):
            # flatten, not reshape(N, -1): an empty split (val_fraction: 0) must keep its width
            parts[f"x_{split}"] = parts[f"x_{split}"].flatten(1)  # (N, C, H, W) -> (N, C*H*W)
    return Dataset(
        name=config.name,
        image_shape=image_shape,  # type: ignore[arg-type]
        binarize=binarize,
        num_classes=num_classes,
        config=config,
        **parts,
    )


