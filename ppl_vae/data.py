"""Datasets, splits, binarization and device-resident batching.

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

import gzip
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import DataError
from .schema import (
    BOOL,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    check_fields,
    check_value,
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
    "resolve_data_dir",
]

#: dataset names accepted by :func:`load_dataset`
DATASETS = ("digits", "mnist", "fashion_mnist", "binarized_mnist")
#: binarization modes: a fresh draw per epoch on the device, one seeded draw, or grey levels
BINARIZE_MODES = ("dynamic", "static", "none")

_BINARIZED_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"


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


def default_data_dir() -> Path:
    """``$PPL_VAE_DATA`` if set, else the per-user cache directory."""
    env = os.environ.get("PPL_VAE_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "ppl_vae"


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """The explicit ``data_dir`` if given, else :func:`default_data_dir`."""
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


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


def _load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # (1797, 8, 8), grey levels 0..16
    return x.unsqueeze(1), torch.tensor(digits.target, dtype=torch.long)


_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _find_idx(raw: Path, stem: str) -> Path | None:
    return next((p for p in (raw / stem, raw / f"{stem}.gz") if p.is_file()), None)


def _read_bytes(path: Path) -> bytes:
    """The contents of a plain or gzipped file; :class:`DataError` naming it when it cannot be read."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"could not read {path}: {err}") from None


def _read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (the MNIST format), plain or gzipped.

    Read directly rather than through torchvision, which insists on unpacking the ``.gz``
    files next to themselves and so fails on a read-only data folder.
    """
    blob = _read_bytes(path)
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] != 0x08 or blob[3] not in (1, 3):
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = blob[3]
    dims = [int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(blob) - offset != int(np.prod(dims)):
        raise DataError(f"{path} is truncated or corrupted: header says {dims}, found {len(blob) - offset} bytes")
    return torch.from_numpy(np.frombuffer(blob, dtype=np.uint8, offset=offset).reshape(dims).copy())


def _one_line(err: BaseException, limit: int = 240) -> str:
    """An exception as one short line (download errors span several, with URLs and nested reasons)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _download(urls: list[str], folder: Path, filename: str, md5: str | None = None) -> str | None:
    """Download ``filename`` into ``folder`` from the first of ``urls`` that answers; None, else why it failed.

    The file arrives under a hidden temporary name and is renamed once complete (and its checksum checked),
    so a failed or interrupted download leaves nothing in ``folder``: no partial file, and no folder that
    this call created. Nothing is unpacked.
    """
    from torchvision.datasets.utils import download_url

    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    part = folder / f".{filename}.part-{os.getpid()}"
    problem, done = "no download address", False
    try:
        for url in urls:
            try:
                download_url(url, str(folder), part.name, md5)
                os.replace(part, folder / filename)
                done = True
                return None
            except Exception as err:  # torchvision raises RuntimeError, URLError, OSError, HTTPError ...
                problem = f"{url}: {_one_line(err)}"
            finally:
                part.unlink(missing_ok=True)
        return problem
    finally:
        if not done:
            for path in created:
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()


def _fetch_missing(what: str, folder: Path, missing: dict, download: bool, holder: str) -> dict[str, Path]:
    """Download the files that ``missing`` maps (key -> (stem, file name, addresses, md5)) into ``folder``,
    or raise one line naming every missing file. Called once every file has been looked for, before any is
    read: nothing is written into the data folder but a complete download (nothing is unpacked)."""
    names = ", ".join(f"{stem}[.gz]" for stem, *_ in missing.values())
    lacking = f"{what} files were not found in {folder} ({names} missing)"
    where = f"Put them there, or point --data-dir / $PPL_VAE_DATA at a folder holding {holder}"
    if not download:
        raise DataError(f"{lacking} and download is off (data.download: false). {where}")
    found = {}
    for key, (_, filename, urls, md5) in missing.items():
        problem = _download(urls, folder, filename, md5)
        if problem is not None:
            raise DataError(f"{lacking} and the download failed ({problem}). {where}")
        found[key] = folder / filename
    return found


def _torchvision_sources(name: str) -> tuple[list[str], dict[str, str]]:
    """Where torchvision downloads a data set from (its mirrors), and the MD5 of each file."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]
    return list(cls.mirrors), dict(cls.resources)


def _load_torchvision(name: str, root: Path, download: bool) -> dict[str, torch.Tensor]:
    folder = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name]
    raw = root / folder / "raw"
    paths = {key: _find_idx(raw, stem) for key, stem in _IDX_FILES.items()}
    missing = [key for key, path in paths.items() if path is None]
    if missing:
        mirrors, checksums = _torchvision_sources(name) if download else ([], {})
        wanted = {}
        for key in missing:
            stem, filename = _IDX_FILES[key], f"{_IDX_FILES[key]}.gz"
            wanted[key] = (stem, filename, [mirror + filename for mirror in mirrors], checksums.get(filename))
        paths.update(_fetch_missing(folder, raw, wanted, download, f"{folder}/raw/"))
    out = {}
    for key, path in paths.items():
        t = _read_idx(path)
        out[key] = t.float().div(255.0).unsqueeze(1) if key.startswith("x") else t.long()  # images (N, 1, 28, 28)
        if key.startswith("x") and t.dim() != 3:
            raise DataError(f"{path} holds an array of shape {tuple(t.shape)}, expected (N, 28, 28)")
    for split in ("train", "test"):
        if len(out[f"x_{split}"]) != len(out[f"y_{split}"]):
            raise DataError(f"{raw}: {split} images and labels differ in number")
    return out


def _read_amat(path: Path) -> torch.Tensor:
    text = _read_bytes(path)
    # Each value is a single character '0' or '1'; dropping separators gives one byte per pixel.
    # Lines are checked one by one: a short line beside a long one would otherwise shift every image.
    lines = text.translate(None, b" \t\r").split()
    digits = np.frombuffer(b"".join(lines), dtype=np.uint8)
    if (
        not lines
        or any(len(line) != 784 for line in lines)
        or not ((digits == ord("0")) | (digits == ord("1"))).all()
    ):
        raise DataError(f"{path} is not a binarized MNIST .amat file (784 values of 0 or 1 per line)")
    return torch.from_numpy((digits - ord("0")).astype(np.float32)).reshape(-1, 1, 28, 28)


def _load_binarized_mnist(root: Path, download: bool) -> dict[str, torch.Tensor]:
    folder = root / "binarized_mnist"
    stems = {"train": "binarized_mnist_train.amat", "val": "binarized_mnist_valid.amat", "test": "binarized_mnist_test.amat"}
    paths = {key: next((p for p in (folder / s, folder / f"{s}.gz") if p.is_file()), None) for key, s in stems.items()}
    wanted = {key: (stem, stem, [_BINARIZED_MNIST_URL + stem], None) for key, stem in stems.items() if paths[key] is None}
    if wanted:
        paths.update(_fetch_missing("binarized MNIST", folder, wanted, download, "binarized_mnist/"))
    return {f"x_{key}": _read_amat(path) for key, path in paths.items()}


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
            yield step, xb, (self.y[idx] if self.y is not None else None)


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

    def batch_index(self, order: torch.Tensor | None, step: int) -> torch.Tensor | slice:
        lo, hi = step * self.batch_size, min(len(self.x), (step + 1) * self.batch_size)
        return order[lo:hi] if order is not None else slice(lo, hi)
