"""Tests of ppl_vae.data: splits, binarization, batching, file readers and data checks."""

from __future__ import annotations

import gzip
import math
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from ppl_vae import data as data_module
from ppl_vae.data import DATASETS, Batches, DataConfig, Dataset, check_finite, load_dataset, resolve_data_dir
from ppl_vae.errors import DataError
from ppl_vae.guides import AmortizedGuideConfig, make_guide
from ppl_vae.inference.fit import TrainConfig, fit
from ppl_vae.models import VAEConfig, make_model

# ../shared/data beside the repository (see DESIGN.md, "Data").
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
NUM_DIGITS = 1797  # images in scikit-learn's load_digits


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def _sorted_rows(x: torch.Tensor, y: torch.Tensor) -> list[tuple]:
    """Each (image, label) pair as a tuple, sorted: a multiset that ignores the order."""
    flat = x.reshape(len(x), -1).tolist()
    return sorted((*row, label) for row, label in zip(flat, y.tolist()))


# -- digits: splits, binarization, options ---------------------------------------------------


@pytest.mark.parametrize("val_fraction, test_fraction", [(0.1, 0.2), (0.25, 0.0)])
def test_digits_split_sizes_match_fractions(val_fraction, test_fraction):
    data = load_dataset(DataConfig(binarize="none", val_fraction=val_fraction, test_fraction=test_fraction))
    num_val, num_test = round(val_fraction * NUM_DIGITS), round(test_fraction * NUM_DIGITS)
    assert len(data.x_val) == len(data.y_val) == num_val
    assert len(data.x_test) == len(data.y_test) == num_test
    assert len(data.x_train) == len(data.y_train) == NUM_DIGITS - num_val - num_test
    for split in ("train", "val", "test"):  # an empty split keeps the item shape
        assert getattr(data, f"x_{split}").shape[1:] == (64,), split


def test_digits_splits_are_a_disjoint_partition():
    from sklearn.datasets import load_digits

    data = load_dataset(DataConfig(binarize="none", flatten=False))
    x = torch.cat([data.x_train, data.x_val, data.x_test])
    y = torch.cat([data.y_train, data.y_val, data.y_test])
    digits = load_digits()
    original_x = torch.tensor(digits.images, dtype=torch.float32).div(16.0)
    original_y = torch.tensor(digits.target)
    # Train + val + test is the original data set, each (image, label) exactly as often as there:
    # an overlap between splits would repeat one point and leave out another.
    assert _sorted_rows(x, y) == _sorted_rows(original_x, original_y)


def test_digits_split_is_seeded():
    a = load_dataset(DataConfig(binarize="none", seed=3))
    b = load_dataset(DataConfig(binarize="none", seed=3))
    c = load_dataset(DataConfig(binarize="none", seed=4))
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_train, c.y_train)
    assert not torch.equal(a.x_val, c.x_val)


def test_fractions_that_leave_no_training_point_are_refused():
    # 0.5003 + 0.4996 < 1, but the two rounded sizes take all 1797 digits
    with pytest.raises(DataError, match="leave no training points of the 1797"):
        load_dataset(DataConfig(val_fraction=0.5003, test_fraction=0.4996))
    with pytest.raises(ValueError, match="must be below 1"):
        DataConfig(val_fraction=0.6, test_fraction=0.6)


# -- train, validation and test share no point, for every data set and setting ---------------------

#: a spread of allowed settings: fractions (zero, small, large), a few training points or all, seeds,
#: every binarization mode, images or vectors
SPLIT_SETTINGS = [
    dict(),
    dict(val_fraction=0.0, test_fraction=0.0),
    dict(val_fraction=0.0, test_fraction=0.3, binarize="static", seed=4),
    dict(val_fraction=0.45, test_fraction=0.5, binarize="none"),
    dict(val_fraction=0.2, test_fraction=0.1, num_train=1, seed=1),
    dict(val_fraction=0.1, test_fraction=0.2, num_train=37, binarize="static", flatten=False),
    dict(val_fraction=0.3, test_fraction=0.3, num_train=10**6, binarize="none", seed=9),
    dict(val_fraction=0.99, test_fraction=0.0, binarize="dynamic", seed=2),
]
_ID_BITS = 12


def _numbered(first: int, n: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` binary images (N, 1, side, side) whose first pixels spell their number (``first`` on) in binary,
    so that every binarization keeps them; the labels are the same numbers."""
    ids = torch.arange(first, first + n)
    x = torch.zeros(n, side * side)
    x[:, :_ID_BITS] = ((ids[:, None] >> torch.arange(_ID_BITS)) & 1).float()
    return x.reshape(n, 1, side, side), ids


def _ids(x: torch.Tensor) -> list[int]:
    bits = x.flatten(1)[:, :_ID_BITS].long()
    return (bits << torch.arange(_ID_BITS)).sum(1).tolist()


def _numbered_source(monkeypatch, name: str) -> dict[str, set[int]]:
    """Replace the reader of data set ``name`` by numbered images; the numbers of each source split."""
    if name == "digits":
        monkeypatch.setattr(data_module, "_load_digits", lambda: _numbered(0, 300, 8))
        return {"train": set(range(300))}
    if name == "binarized_mnist":
        parts = {f"x_{split}": _numbered(first, n, 28)[0] for split, first, n in (("train", 0, 400), ("val", 400, 150), ("test", 550, 120))}
        monkeypatch.setattr(data_module, "_load_binarized_mnist", lambda root, download: dict(parts))
        return {"train": set(range(400)), "val": set(range(400, 550)), "test": set(range(550, 670))}
    (x_train, y_train), (x_test, y_test) = _numbered(0, 500, 28), _numbered(500, 120, 28)
    parts = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    monkeypatch.setattr(data_module, "_load_torchvision", lambda name, root, download: dict(parts))
    return {"train": set(range(500)), "test": set(range(500, 620))}


@pytest.mark.parametrize("name", DATASETS)
def test_splits_share_no_point(monkeypatch, name):
    """Index level, for every data set name: each image carries its number, kept by every binarization."""
    source = _numbered_source(monkeypatch, name)
    everything = set().union(*source.values())
    for settings in SPLIT_SETTINGS:
        data = load_dataset(DataConfig(name=name, **settings))
        ids = {split: _ids(getattr(data, f"x_{split}")) for split in ("train", "val", "test")}
        where = f"{name} {settings}"
        for split, numbers in ids.items():
            assert len(set(numbers)) == len(numbers), f"{where}: a point repeats in {split}"
            assert set(numbers) <= everything, where
            labels = getattr(data, f"y_{split}")
            if labels is not None:  # every image keeps its own label
                assert labels.tolist() == numbers, f"{where}: {split} labels are out of step with the images"
        assert not set(ids["train"]) & set(ids["val"]), where
        assert not set(ids["train"]) & set(ids["test"]), where
        assert not set(ids["val"]) & set(ids["test"]), where
        if name in ("mnist", "fashion_mnist"):  # the test split is the data set's own; val comes from its train split
            assert set(ids["test"]) == source["test"], where
            assert set(ids["val"]) <= source["train"], where
        if name == "binarized_mnist":  # a fixed split: fractions do not apply
            assert set(ids["val"]) == source["val"] and set(ids["test"]) == source["test"], where
        if settings.get("num_train") is None:
            assert set().union(*map(set, ids.values())) == everything, f"{where}: points were lost"
        else:
            assert len(ids["train"]) <= settings["num_train"], where


def _image_keys(x: torch.Tensor) -> list[bytes]:
    grey = (x.flatten(1) * 255).round().to(torch.uint8).numpy()
    return [row.tobytes() for row in grey]


def _check_real_splits(name: str, data_dir: Path | None, settings: dict) -> None:
    """No image in two splits (the real sources hold no duplicate image), and a binarized load draws
    from the same points in the same order as a grey one."""
    grey = load_dataset(DataConfig(name=name, download=False, **{**settings, "binarize": "none"}), data_dir=data_dir)
    keys = {split: _image_keys(getattr(grey, f"x_{split}")) for split in ("train", "val", "test")}
    for split, k in keys.items():
        assert len(set(k)) == len(k), f"{name} {settings}: an image repeats in {split}"
    assert not set(keys["train"]) & set(keys["val"])
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["val"]) & set(keys["test"])
    if settings.get("binarize", "dynamic") != "none" and name != "binarized_mnist":
        drawn = load_dataset(DataConfig(name=name, download=False, **settings), data_dir=data_dir)
        for split in ("train", "val", "test"):
            g, b = getattr(grey, f"x_{split}"), getattr(drawn, f"x_{split}")
            assert g.shape == b.shape, split
            assert bool((b[g == 0] == 0).all()) and bool((b[g == 1] == 1).all()), f"{name} {settings}: {split} rows moved"


REAL_SETTINGS = [
    dict(),
    dict(val_fraction=0.3, test_fraction=0.25, seed=5, binarize="static"),
    dict(val_fraction=0.0, num_train=1000, seed=2, binarize="dynamic", flatten=False),
]


@pytest.mark.parametrize("settings", REAL_SETTINGS)
def test_real_digits_splits_share_no_image(settings):
    _check_real_splits("digits", None, settings)


@pytest.mark.slow  # 60-70k real images per load
@pytest.mark.parametrize("settings", REAL_SETTINGS)
@pytest.mark.parametrize("name, folder", [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"), ("binarized_mnist", "binarized_mnist")])
def test_real_mnist_splits_share_no_image(name, folder, settings):
    if not (SHARED_DATA / folder).is_dir():
        pytest.skip(f"{name} is not in {SHARED_DATA} (no network here to fetch it)")
    _check_real_splits(name, SHARED_DATA, settings)


def test_static_binarization_is_binary_and_reproducible():
    a = load_dataset(DataConfig(binarize="static", seed=1))
    b = load_dataset(DataConfig(binarize="static", seed=1))
    assert a.binarize == "static"
    for split in ("train", "val", "test"):
        x = getattr(a, f"x_{split}")
        assert _is_binary(x), split
        assert 0 < x.mean() < 1, split
        assert torch.equal(x, getattr(b, f"x_{split}")), split
    grey = load_dataset(DataConfig(binarize="none", seed=1))
    # The draw follows the grey levels: pixels that are 0 stay 0, pixels that are 1 stay 1.
    assert bool((a.x_train[grey.x_train == 0] == 0).all())
    assert bool((a.x_train[grey.x_train == 1] == 1).all())


def test_dynamic_binarization_keeps_grey_train_and_binarizes_val_and_test():
    a = load_dataset(DataConfig(binarize="dynamic"))
    b = load_dataset(DataConfig(binarize="dynamic"))
    grey = load_dataset(DataConfig(binarize="none"))
    assert a.binarize == "dynamic"
    assert not _is_binary(a.x_train)
    assert torch.equal(a.x_train, grey.x_train)
    for split in ("val", "test"):
        assert _is_binary(getattr(a, f"x_{split}")), split
        # one fixed draw, so evaluations are comparable across runs
        assert torch.equal(getattr(a, f"x_{split}"), getattr(b, f"x_{split}")), split


def test_binarize_none_keeps_grey_levels_everywhere():
    data = load_dataset(DataConfig(binarize="none"))
    assert data.binarize == "none"
    for split in ("train", "val", "test"):
        x = getattr(data, f"x_{split}")
        assert not _is_binary(x) and float(x.min()) >= 0 and float(x.max()) <= 1


def test_num_train_limits_the_training_set_only():
    full = load_dataset(DataConfig(binarize="none"))
    small = load_dataset(DataConfig(binarize="none", num_train=50))
    assert len(small.x_train) == len(small.y_train) == 50
    assert len(small.x_val) == len(full.x_val) and len(small.x_test) == len(full.x_test)
    # the kept points are training points, with their own labels
    assert _set_of_rows(small.x_train, small.y_train) <= _set_of_rows(full.x_train, full.y_train)
    more_than_all = load_dataset(DataConfig(binarize="none", num_train=10 * NUM_DIGITS))
    assert len(more_than_all.x_train) == len(full.x_train)


def _set_of_rows(x: torch.Tensor, y: torch.Tensor) -> set[tuple]:
    return set(_sorted_rows(x, y))


@pytest.mark.parametrize("flatten, shape", [(True, (64,)), (False, (1, 8, 8))])
def test_flatten(flatten, shape):
    data = load_dataset(DataConfig(flatten=flatten))
    assert data.x_shape == shape
    for split in ("train", "val", "test"):
        x = getattr(data, f"x_{split}")
        assert tuple(x.shape) == (len(x), *shape), split
    assert data.image_shape == (1, 8, 8)
    assert data.num_classes == 10


def test_data_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PPL_VAE_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"


# -- Batches ---------------------------------------------------------------------------------


def test_batches_yield_every_index_once_per_epoch():
    n, batch_size = 23, 5
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1)  # (n, 1): each row is its own index
    y = torch.arange(n)
    batches = Batches(x, y, batch_size=batch_size, seed=0)
    assert len(batches) == math.ceil(n / batch_size)
    for epoch in range(3):
        got = list(batches.epoch(epoch))
        assert [step for step, _, _ in got] == list(range(len(batches)))
        assert [len(xb) for _, xb, _ in got] == [5, 5, 5, 5, 3]
        seen = torch.cat([xb for _, xb, _ in got]).flatten().long()
        assert sorted(seen.tolist()) == list(range(n))
        assert torch.equal(torch.cat([yb for _, _, yb in got]), seen)  # labels travel with their points


def test_batches_order_depends_on_seed_and_epoch_only():
    x = torch.arange(50, dtype=torch.float32).unsqueeze(1)

    def order(seed: int, epoch: int) -> list[int]:
        return torch.cat([xb for _, xb, _ in Batches(x, batch_size=8, seed=seed).epoch(epoch)]).flatten().tolist()

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2)
    assert order(0, 1) != order(1, 1)
    # and it is shuffled
    assert order(0, 1) != list(range(50))


def test_batches_without_shuffle_keep_the_order():
    x = torch.arange(10, dtype=torch.float32).unsqueeze(1)
    got = torch.cat([xb for _, xb, _ in Batches(x, batch_size=4, shuffle=False).epoch(0)]).flatten()
    assert got.tolist() == list(range(10))


def test_batches_reject_a_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        Batches(torch.zeros(4, 2), batch_size=0)


def test_batches_resume_mid_epoch_gives_the_same_remaining_batches():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 6, generator=gen)  # grey levels, binarized afresh for every batch
    y = torch.arange(40)
    epoch, stop_after = 2, 3  # steps 0, 1, 2 are done when the run is interrupted

    def make() -> Batches:
        return Batches(x, y, batch_size=7, seed=5, binarize=True)

    uninterrupted = list(make().epoch(epoch))

    first = make()
    it = first.epoch(epoch)
    done = [next(it) for _ in range(stop_after)]
    saved_state = first.generator.get_state()  # what fit stores after step stop_after - 1

    resumed = list(make().epoch(epoch, start_step=stop_after, generator_state=saved_state))

    assert len(resumed) == len(uninterrupted) - stop_after
    for (s1, x1, y1), (s2, x2, y2) in zip(done + resumed, uninterrupted):
        assert s1 == s2
        assert _is_binary(x1)
        assert torch.equal(x1, x2), f"step {s1}"
        assert torch.equal(y1, y2), f"step {s1}"
    # The saved generator state is what makes the draws match: without it they differ.
    fresh = list(make().epoch(epoch, start_step=stop_after))
    assert [torch.equal(y1, y2) for (_, _, y1), (_, _, y2) in zip(fresh, resumed)] == [True] * len(resumed)
    assert not all(torch.equal(x1, x2) for (_, x1, _), (_, x2, _) in zip(fresh, resumed))


# -- binarized MNIST .amat files -------------------------------------------------------------


def _amat_text(rows: np.ndarray) -> bytes:
    return "".join(" ".join(str(int(v)) for v in row) + "\n" for row in rows).encode()


def _write_amat(folder: Path, split: str, rows: np.ndarray, gz: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"binarized_mnist_{split}.amat{'.gz' if gz else ''}"
    text = _amat_text(rows)
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(text)
    else:
        path.write_bytes(text)
    return path


def _synthetic_amat(tmp_path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    rows = {split: rng.integers(0, 2, size=(n, 784)) for split, n in (("train", 3), ("valid", 2), ("test", 2))}
    folder = tmp_path / "binarized_mnist"
    _write_amat(folder, "train", rows["train"], gz=False)  # plain
    _write_amat(folder, "valid", rows["valid"], gz=True)
    _write_amat(folder, "test", rows["test"], gz=True)
    return rows


def test_amat_reader_reads_plain_and_gzipped_files(tmp_path):
    rows = _synthetic_amat(tmp_path)
    data = load_dataset(DataConfig(name="binarized_mnist", download=False), data_dir=tmp_path)
    assert data.binarize == "none"
    assert data.image_shape == (1, 28, 28)
    for split, key in (("train", "train"), ("valid", "val"), ("test", "test")):
        x = getattr(data, f"x_{key}")
        assert x.dtype == torch.float32
        assert torch.equal(x, torch.tensor(rows[split], dtype=torch.float32)), split
    images = load_dataset(DataConfig(name="binarized_mnist", download=False, flatten=False), data_dir=tmp_path)
    assert tuple(images.x_train.shape) == (3, 1, 28, 28)
    assert torch.equal(images.x_train[1, 0, 2], torch.tensor(rows["train"][1, 56:84], dtype=torch.float32))


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(_amat_text(np.full((2, 784), 2)), id="value-not-0-or-1"),
        pytest.param(_amat_text(np.zeros((2, 783), dtype=int)), id="short-rows"),
        pytest.param(_amat_text(np.zeros((1, 783), dtype=int)) + _amat_text(np.zeros((1, 785), dtype=int)), id="ragged-rows"),
        pytest.param(b"0.5 " * 784 + b"\n", id="grey-levels"),
        pytest.param(b"", id="empty"),
    ],
)
def test_malformed_amat_file_raises_data_error_naming_it(tmp_path, text):
    _synthetic_amat(tmp_path)
    bad = tmp_path / "binarized_mnist" / "binarized_mnist_valid.amat.gz"
    with gzip.open(bad, "wb") as f:
        f.write(text)
    with pytest.raises(DataError, match="binarized_mnist_valid.amat.gz") as info:
        load_dataset(DataConfig(name="binarized_mnist", download=False), data_dir=tmp_path)
    assert "784" in str(info.value)


def test_corrupt_gzip_raises_data_error_naming_the_file(tmp_path):
    _synthetic_amat(tmp_path)
    bad = tmp_path / "binarized_mnist" / "binarized_mnist_test.amat.gz"
    bad.write_bytes(b"this is not gzip data")
    with pytest.raises(DataError, match="could not read .*binarized_mnist_test.amat.gz"):
        load_dataset(DataConfig(name="binarized_mnist", download=False), data_dir=tmp_path)


# -- missing files ---------------------------------------------------------------------------


def test_missing_binarized_mnist_without_download_names_the_folder(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(name="binarized_mnist", download=False), data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "binarized_mnist") in message
    assert "binarized_mnist_train.amat" in message and "download is off" in message


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_missing_mnist_without_download_names_the_folder(tmp_path, name, folder):
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(name=name, download=False), data_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / folder / "raw") in message
    assert "download is off" in message


# -- MNIST IDX files, read without torchvision ------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(blob)


def _fake_mnist(root: Path, gz: bool, n_train: int = 30, n_test: int = 10) -> dict[str, np.ndarray]:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for stem, array in arrays.items():
        _write_idx(raw / (stem + (".gz" if gz else "")), array, gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files_read_in_place_from_a_read_only_folder(tmp_path, gz):
    arrays = _fake_mnist(tmp_path, gz)
    raw = tmp_path / "MNIST" / "raw"
    for p in raw.iterdir():
        p.chmod(0o444)
    raw.chmod(0o555)  # torchvision would try (and fail) to unpack the .gz files here
    try:
        data = load_dataset(DataConfig(name="mnist", download=False, val_fraction=0.2, flatten=False), data_dir=tmp_path)
    finally:
        raw.chmod(0o755)
    assert sorted(p.name for p in raw.iterdir()) == sorted(s + (".gz" if gz else "") for s in arrays)  # nothing written
    assert tuple(data.x_test.shape) == (10, 1, 28, 28)
    assert len(data.x_train) + len(data.x_val) == 30
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255
    test = load_dataset(DataConfig(name="mnist", download=False, binarize="none", flatten=False), data_dir=tmp_path)
    torch.testing.assert_close(test.x_test[:, 0], expected)
    assert test.y_test.tolist() == (np.arange(10) % 10).tolist()


def test_corrupted_mnist_idx_file_is_named(tmp_path):
    _fake_mnist(tmp_path, gz=True)
    bad = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 100)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz is truncated or corrupted"):
        load_dataset(DataConfig(name="mnist", download=False), data_dir=tmp_path)
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="could not read .*t10k-images-idx3-ubyte.gz"):
        load_dataset(DataConfig(name="mnist", download=False), data_dir=tmp_path)


def test_partial_mnist_folder_names_the_missing_file(tmp_path):
    _fake_mnist(tmp_path, gz=True)
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\[\.gz\] missing"):
        load_dataset(DataConfig(name="mnist", download=False), data_dir=tmp_path)


def _no_network(monkeypatch, calls: list, partial: bytes = b"") -> None:
    """torchvision's downloader fails (after writing ``partial`` bytes of the file, as a cut connection)."""
    import torchvision.datasets.utils

    def download_url(url, root, filename=None, md5=None, *args, **kwargs):
        calls.append(url)
        if partial:
            Path(root, filename or Path(url).name).write_bytes(partial)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", download_url)


def _tree(root: Path) -> dict[str, tuple]:
    """Every folder, and every file with its size and mtime (a folder's mtime changes with an attempted download)."""
    return {
        str(p.relative_to(root)): ("dir",) if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


@pytest.mark.parametrize("partial", [b"", b"\x1f\x8b half a file"], ids=["no-connection", "cut-connection"])
def test_partial_mnist_folder_without_network_writes_nothing(tmp_path, monkeypatch, partial):
    """A missing test file: nothing is unpacked (torchvision's downloader would unpack the 47 MB of training
    images first), nothing half-downloaded is left, and one line names the missing file."""
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST is not in {SHARED_DATA}")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(SHARED_DATA / "MNIST" / "raw" / name, raw / name)
    before, calls = _tree(tmp_path), []
    _no_network(monkeypatch, calls, partial)
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(name="mnist"), data_dir=tmp_path)
    message = str(info.value)
    assert calls and all(url.endswith("/t10k-images-idx3-ubyte.gz") for url in calls)  # only the missing file
    assert "t10k-images-idx3-ubyte[.gz] missing" in message and "download failed" in message
    assert "train-images" not in message and "\n" not in message
    assert _tree(tmp_path) == before


def test_missing_mnist_files_are_downloaded_alone_and_not_unpacked(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    arrays = _fake_mnist(tmp_path, gz=True)
    raw = tmp_path / "MNIST" / "raw"
    blob = (raw / "t10k-labels-idx1-ubyte.gz").read_bytes()
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    fetched = []

    def download_url(url, root, filename=None, md5=None, *args, **kwargs):
        fetched.append((url, filename))
        Path(root, filename).write_bytes(blob)

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", download_url)
    data = load_dataset(DataConfig(name="mnist", binarize="none"), data_dir=tmp_path)
    assert len(fetched) == 1 and fetched[0][0].endswith("/t10k-labels-idx1-ubyte.gz")
    assert fetched[0][1].startswith(".")  # under a temporary name, renamed once complete
    assert sorted(p.name for p in raw.iterdir()) == sorted(f"{stem}.gz" for stem in arrays)
    assert data.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_binarized_mnist_without_network_leaves_no_folder(tmp_path, monkeypatch):
    calls = []
    _no_network(monkeypatch, calls, partial=b"0 1 0")
    with pytest.raises(DataError) as info:
        load_dataset(DataConfig(name="binarized_mnist"), data_dir=tmp_path)
    message = str(info.value)
    for split in ("train", "valid", "test"):
        assert f"binarized_mnist_{split}.amat[.gz]" in message
    assert "download failed" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []  # not even the binarized_mnist/ folder the download made


# -- the real data sets (from ../shared/data) ------------------------------------------------


# Slow: reading and splitting the 60-70k real images takes a second or two per data set.


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"MNIST is not in {SHARED_DATA}")
    return load_dataset(DataConfig(name="mnist", download=False), data_dir=SHARED_DATA)


@pytest.mark.slow
def test_mnist_shapes_and_splits(mnist):
    assert mnist.name == "mnist"
    assert tuple(mnist.x_train.shape) == (54_000, 784)  # 60k minus a 10% validation split
    assert tuple(mnist.x_val.shape) == (6_000, 784)
    assert tuple(mnist.x_test.shape) == (10_000, 784)
    assert tuple(mnist.y_train.shape) == (54_000,) and tuple(mnist.y_val.shape) == (6_000,)
    assert tuple(mnist.y_test.shape) == (10_000,)
    assert mnist.image_shape == (1, 28, 28) and mnist.num_classes == 10
    assert sorted(mnist.y_train.unique().tolist()) == list(range(10))


@pytest.mark.slow
def test_mnist_dynamic_binarization(mnist):
    assert mnist.binarize == "dynamic"
    assert float(mnist.x_train.min()) == 0 and float(mnist.x_train.max()) == 1
    assert not _is_binary(mnist.x_train)  # grey levels, binarized per batch in training
    assert _is_binary(mnist.x_val) and _is_binary(mnist.x_test)


@pytest.mark.slow
def test_binarized_mnist_shapes_and_splits():
    if not (SHARED_DATA / "binarized_mnist").is_dir():
        pytest.skip(f"binarized MNIST is not in {SHARED_DATA}")
    data = load_dataset(DataConfig(name="binarized_mnist", download=False), data_dir=SHARED_DATA)
    assert tuple(data.x_train.shape) == (50_000, 784)
    assert tuple(data.x_val.shape) == (10_000, 784)
    assert tuple(data.x_test.shape) == (10_000, 784)
    assert data.y_train is None and data.num_classes is None
    assert data.binarize == "none"
    assert _is_binary(data.x_train) and _is_binary(data.x_test)
    assert 0.05 < float(data.x_train.mean()) < 0.25  # MNIST is mostly background


# -- checks of the data before training ------------------------------------------------------


def _tiny_model(x_dim: int = 64, **model_kwargs):
    model = make_model("vae", (x_dim,), VAEConfig(latent_dim=2, hidden_dims=(8,), **model_kwargs))
    guide = make_guide("amortized", model, AmortizedGuideConfig(hidden_dims=(8,)))
    return model, guide


_TINY_TRAIN = TrainConfig(epochs=1, batch_size=10, device="cpu", val_every=0, progress=False)


def _binary_data(n: int = 20, dim: int = 64) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, dim), 0.5), generator=torch.Generator().manual_seed(0))


def test_fit_rejects_nan_naming_the_rows():
    x = _binary_data()
    x[3, 5] = float("nan")
    x[7, 0] = float("inf")
    model, guide = _tiny_model()
    with pytest.raises(DataError, match=r"NaN or inf.*\[3, 7\]"):
        fit(model, guide, x, train=_TINY_TRAIN)


def test_fit_names_the_split_that_holds_nan():
    x = _binary_data()
    x_val = _binary_data(5)
    x_val[4, 1] = float("nan")
    data = Dataset("toy", x, x_val, x[:0])
    model, guide = _tiny_model()
    with pytest.raises(DataError, match=r"val data contains NaN.*\[4\]"):
        fit(model, guide, data, train=_TINY_TRAIN)


def test_check_finite_names_rows():
    x = torch.zeros(6, 2, 2)
    x[2, 1, 0] = float("nan")
    x[5, 0, 1] = float("-inf")
    with pytest.raises(DataError, match=r"my data contains NaN or inf.*\[2, 5\]"):
        check_finite(x, "my data")
    check_finite(torch.zeros(3, 4), "clean data")  # no error


def test_fit_rejects_items_of_the_wrong_shape():
    model, guide = _tiny_model(x_dim=64)
    with pytest.raises(DataError, match=r"shape \(10,\).*expects items of shape \(64,\)"):
        fit(model, guide, _binary_data(dim=10), train=_TINY_TRAIN)


def test_bernoulli_rejects_grey_levels_and_suggests_binarizing():
    grey = torch.rand(20, 64, generator=torch.Generator().manual_seed(0))
    model, guide = _tiny_model()
    with pytest.raises(DataError, match="binarize") as info:
        fit(model, guide, grey, train=_TINY_TRAIN)
    assert "allow_nonbinary" in str(info.value)


def test_bernoulli_accepts_grey_levels_when_allowed():
    grey = torch.rand(20, 64, generator=torch.Generator().manual_seed(0))
    model, guide = _tiny_model(allow_nonbinary=True)
    result = fit(model, guide, grey, train=_TINY_TRAIN)
    assert result.epochs_done == 1
    assert math.isfinite(result.final_loss)


@pytest.mark.parametrize(
    "bad, expected",
    [
        (torch.zeros(5), r"shape \(num_points, \*x_shape\), got shape \(5,\)"),
        (np.zeros((5, 3)), "torch.Tensor.*ndarray"),
    ],
)
def test_from_tensor_rejects_bad_input(bad, expected):
    with pytest.raises(DataError, match=expected):
        Dataset.from_tensor(bad)


def test_from_tensor_wraps_a_training_set():
    data = Dataset.from_tensor(torch.ones(4, 2, 3, dtype=torch.float64))
    assert data.x_shape == (2, 3)
    assert data.x_train.dtype == torch.float32
    assert len(data.x_val) == 0 and len(data.x_test) == 0
    assert data.binarize == "none"
