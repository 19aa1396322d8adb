"""Run directories: the resolved config, per-epoch metrics, and atomic checkpoints.

A run directory holds::

    config.yaml        the fully resolved experiment config
    metrics.jsonl      one JSON line per finished epoch
    checkpoint.pt      the latest checkpoint (written to a temporary file, then renamed)
    evaluation.json    written by ``ppl-vae evaluate``
    .lock              held by the process that trains the run (an OS lock, released when it dies)

A checkpoint is a plain ``dict`` of tensors and numbers, loaded with
``torch.load(weights_only=True)``: it never unpickles arbitrary objects. It carries
a SHA-256 digest of its own contents, checked on load, so a damaged file is an error
rather than silently wrong parameters.

What survives which stop: Ctrl-C and SIGTERM write a checkpoint after the current
step; a crash (kill -9, power loss) loses the steps since the last checkpoint, which
the next ``--resume`` repeats exactly. The checkpoint records how many epochs of
metrics it covers, and a resume drops the rows after them; a damaged metrics line is
moved aside to ``metrics.damaged.txt``, the valid rows around it are kept. A temporary
file left by a crash during a write is removed when the run is next trained.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml

from .errors import CheckpointError, RunDirError

__all__ = ["RunDir", "CHECKPOINT_FORMAT", "capture_rng_state", "restore_rng_state", "digest"]

#: version tag stored in every checkpoint
CHECKPOINT_FORMAT = "ppl_vae.checkpoint/2"
#: the format before digests, still read (without the check)
_FORMAT_WITHOUT_DIGEST = "ppl_vae.checkpoint/1"
_REQUIRED_KEYS = ("format", "epoch", "step", "model", "guide", "optimizer", "rng")

log = logging.getLogger("ppl_vae")


def _feed(h: Any, value: Any) -> None:
    """Feed a checkpoint's value into a hash, in a canonical order (keys sorted, tensors by their bytes)."""
    if isinstance(value, dict):
        h.update(b"{")
        for key in sorted(value, key=repr):
            h.update(repr(key).encode())
            _feed(h, value[key])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for item in value:
            _feed(h, item)
        h.update(b"]")
    elif torch.is_tensor(value):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    else:
        h.update(repr(value).encode())


def digest(state: dict) -> str:
    """SHA-256 of a checkpoint's contents (every key but ``digest`` itself)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "digest"})
    return h.hexdigest()


_TMP = ".tmp-"


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}{_TMP}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def capture_rng_state() -> dict:
    """The states of torch (CPU and CUDA), NumPy and Python's ``random``, as tensors and ints."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    np_state = state["numpy"]
    np.random.set_state(
        ("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


class RunDir:
    """A run directory on disk. Create one with :meth:`create`, open one with :meth:`open`."""

    CONFIG = "config.yaml"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "checkpoint.pt"
    EVALUATION = "evaluation.json"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @classmethod
    def create(cls, root: str | os.PathLike = "runs", name: str | None = None) -> "RunDir":
        """Make a new, empty run directory ``root/name`` (``name`` defaults to a timestamp)."""
        root = Path(root)
        base = name or time.strftime("run-%Y%m%d-%H%M%S")
        path, i = root / base, 1
        while path.exists():
            i += 1
            path = root / f"{base}-{i}"
        path.mkdir(parents=True)
        return cls(path)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RunDir":
        """Open an existing run directory; :class:`RunDirError` if it does not exist."""
        run = cls(path)
        if not run.path.is_dir():
            raise RunDirError(f"run directory {str(run.path)!r} does not exist")
        return run

    # -- config ---------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / self.CONFIG

    def write_config(self, config: dict) -> None:
        text = yaml.safe_dump(config, sort_keys=False).encode()
        atomic_write_bytes(self.config_path, lambda f: f.write(text))

    def read_config(self) -> dict:
        """The run's config mapping; :class:`RunDirError` if it is missing or damaged."""
        if not self.config_path.is_file():
            raise RunDirError(f"{self.path} is not a ppl_vae run directory: {self.CONFIG} is missing")
        try:
            with open(self.config_path, encoding="utf-8") as f:
                raw = yaml.safe_load(f)
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise RunDirError(
                f"{self.config_path} is damaged and cannot be read as YAML ({' '.join(str(err).split())[:200]}); "
                "restore it from a copy"
            ) from None
        if raw is not None and not isinstance(raw, dict):
            raise RunDirError(f"{self.config_path} is damaged: it holds a {type(raw).__name__}, not a config mapping")
        return raw or {}

    # -- metrics --------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    def append_metrics(self, row: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    DAMAGED_METRICS = "metrics.damaged.txt"

    def _metrics_lines(self) -> tuple[list[dict], list[str]]:
        """The valid rows, and the damaged lines (not a JSON object with an epoch), of metrics.jsonl."""
        if not self.metrics_path.exists():
            return [], []
        rows, damaged = [], []
        with open(self.metrics_path, errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None
                if isinstance(row, dict) and isinstance(row.get("epoch"), int):
                    rows.append(row)
                else:
                    damaged.append(line)
        return rows, damaged

    def read_metrics(self) -> list[dict]:
        """The valid metrics rows; a damaged line (cut short by a crash, or edited) is skipped, not what follows it."""
        return self._metrics_lines()[0]

    def truncate_metrics(self, num_epochs: int) -> None:
        """Keep the rows of the first ``num_epochs`` epochs (those a checkpoint covers), one per epoch; move
        damaged lines aside to ``metrics.damaged.txt`` and say so."""
        rows, damaged = self._metrics_lines()
        kept: dict[int, dict] = {}
        for row in rows:
            if row["epoch"] <= num_epochs:
                kept.setdefault(row["epoch"], row)
        if damaged:
            with open(self.path / self.DAMAGED_METRICS, "a") as f:
                f.write("".join(line + "\n" for line in damaged))
            log.warning(
                "%s had %d damaged line(s); moved them to %s and kept the valid rows",
                self.metrics_path, len(damaged), self.path / self.DAMAGED_METRICS,
            )
        text = "".join(json.dumps(kept[e]) + "\n" for e in sorted(kept)).encode()
        atomic_write_bytes(self.metrics_path, lambda f: f.write(text))

    # -- the writer's lock ----------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's lock (an OS lock on ``.lock``, released when the process dies) while training it.

        Also removes the temporary files a crash during a write left behind (no other process writes).

        :raises RunDirError: when another process holds it.
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                raise RunDirError(
                    f"{self.path} is being trained by another process ({'pid ' + holder if holder else 'unknown pid'}); "
                    "wait for it to finish, or stop it, before training this run again"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            self._remove_stale_temporaries()
            yield
        finally:
            os.close(fd)

    def _remove_stale_temporaries(self) -> None:
        for tmp in self.path.glob(f".*{_TMP}*"):
            tmp.unlink(missing_ok=True)

    # -- checkpoints ----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.path / self.CHECKPOINT

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def save_checkpoint(self, state: dict) -> None:
        """Write ``state`` atomically (a temporary file, fsync, then rename), with a digest of its contents."""
        state = {"format": CHECKPOINT_FORMAT, **state}
        state["digest"] = digest(state)
        buffer = io.BytesIO()
        torch.save(state, buffer)  # in memory first, so that a full disk is a plain OSError naming the file
        atomic_write_bytes(self.checkpoint_path, lambda f: f.write(buffer.getbuffer()))

    def load_checkpoint(self, map_location: torch.device | str = "cpu") -> dict:
        """Load and check the checkpoint; :class:`CheckpointError` if missing, corrupted or truncated."""
        path = self.checkpoint_path
        if not path.is_file():
            raise CheckpointError(f"no checkpoint in {self.path} ({self.CHECKPOINT} is missing)")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # zip errors, EOF, unpickling errors all mean the same to a user
            raise CheckpointError(
                f"checkpoint {path} is corrupted or truncated and cannot be read ({type(err).__name__}); "
                "resume from a copy, or train the run again"
            ) from None
        if not isinstance(state, dict) or state.get("format") not in (CHECKPOINT_FORMAT, _FORMAT_WITHOUT_DIGEST):
            raise CheckpointError(f"{path} is not a ppl_vae checkpoint (expected format {CHECKPOINT_FORMAT})")
        missing = [k for k in _REQUIRED_KEYS if k not in state]
        if missing:
            raise CheckpointError(f"checkpoint {path} is incomplete: missing {missing}")
        if state["format"] == CHECKPOINT_FORMAT and state.get("digest") != digest(state):
            raise CheckpointError(
                f"checkpoint {path} is damaged: its contents do not match the digest stored with them; resume from "
                "a copy, or train the run again"
            )
        return state

    # -- evaluation -----------------------------------------------------------------------
    def write_json(self, name: str, obj: dict) -> Path:
        text = (json.dumps(obj, indent=2) + "\n").encode()
        path = self.path / name
        atomic_write_bytes(path, lambda f: f.write(text))
        return path
