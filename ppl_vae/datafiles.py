"""Dataset files: where they live, reading them, and downloading the missing ones.

Where the files live: ``data_dir`` (``--data-dir``), else ``$PPL_VAE_DATA``, else ``~/.cache/ppl_vae``
(``$XDG_CACHE_HOME/ppl_vae``). MNIST and Fashion-MNIST use torchvision's layout below it
(``MNIST/raw/*.gz``); binarized MNIST reads ``binarized_mnist/binarized_mnist_{train,valid,test}.amat[.gz]``.
Every file is looked for before any is read; only the missing ones are downloaded (``data.download``),
each under a temporary name renamed once complete, and nothing is unpacked: the data folder is written to
only by a download that succeeded.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from .errors import DataError

__all__ = ["default_data_dir", "resolve_data_dir", "load_digits", "load_torchvision", "load_binarized_mnist"]

_BINARIZED_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"


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


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
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


def load_torchvision(name: str, root: Path, download: bool) -> dict[str, torch.Tensor]:
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


def load_binarized_mnist(root: Path, download: bool) -> dict[str, torch.Tensor]:
    folder = root / "binarized_mnist"
    stems = {"train": "binarized_mnist_train.amat", "val": "binarized_mnist_valid.amat", "test": "binarized_mnist_test.amat"}
    paths = {key: next((p for p in (folder / s, folder / f"{s}.gz") if p.is_file()), None) for key, s in stems.items()}
    wanted = {key: (stem, stem, [_BINARIZED_MNIST_URL + stem], None) for key, stem in stems.items() if paths[key] is None}
    if wanted:
        paths.update(_fetch_missing("binarized MNIST", folder, wanted, download, "binarized_mnist/"))
    return {f"x_{key}": _read_amat(path) for key, path in paths.items()}
