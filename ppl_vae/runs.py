"""Run directories: the resolved config, per-epoch metrics, and atomic checkpoints.

A run directory holds::

    config.yaml        the fully resolved experiment config
    metrics.jsonl      one JSON line per finished epoch
    checkpoint.pt      the latest checkpoint (written to a temporary file, then renamed)
    evaluation.json    written by ``ppl-vae evaluate``

A checkpoint is a plain ``dict`` of tensors and numbers, loaded with
``torch.load(weights_only=True)``: it never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .errors import CheckpointError, RunDirError

__all__ = ["RunDir", "CHECKPOINT_FORMAT", "capture_rng_state", "restore_rng_state"]

#: version tag stored in every checkpoint
CHECKPOINT_FORMAT = "ppl_vae.checkpoint/1"
_REQUIRED_KEYS = ("format", "epoch", "step", "model", "guide", "optimizer", "rng")


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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
        if not self.config_path.is_file():
            raise RunDirError(f"{self.path} is not a ppl_vae run directory: {self.CONFIG} is missing")
        with open(self.config_path) as f:
            return yaml.safe_load(f) or {}

    # -- metrics --------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / self.METRICS

    def append_metrics(self, row: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        rows = []
        with open(self.metrics_path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        break  # a line cut short by a crash; what follows it is not trusted
        return rows

    def truncate_metrics(self, num_epochs: int) -> None:
        """Keep the rows of the first ``num_epochs`` epochs (those a checkpoint covers)."""
        rows = [r for r in self.read_metrics() if r.get("epoch", 0) <= num_epochs]
        text = "".join(json.dumps(r) + "\n" for r in rows).encode()
        atomic_write_bytes(self.metrics_path, lambda f: f.write(text))

    # -- checkpoints ----------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.path / self.CHECKPOINT

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    def save_checkpoint(self, state: dict) -> None:
        """Write ``state`` atomically: a temporary file, fsync, then rename."""
        state = {"format": CHECKPOINT_FORMAT, **state}
        atomic_write_bytes(self.checkpoint_path, lambda f: torch.save(state, f))

    def load_checkpoint(self, map_location: torch.device | str = "cpu") -> dict:
        """Load and check the checkpoint; :class:`CheckpointError` if missing, corrupted or truncated."""
        path = self.checkpoint_path
        if not path.is_file():
            raise CheckpointError(f"no checkpoint in {self.path} ({self.CHECKPOINT} is missing)")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # zip errors, EOF, unpickling errors all mean the same to a user
            raise CheckpointError(
                f"checkpoint {path} is corrupted or truncated and cannot be read ({type(err).__name__}: {err})"
            ) from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is not a ppl_vae checkpoint (expected format {CHECKPOINT_FORMAT})")
        missing = [k for k in _REQUIRED_KEYS if k not in state]
        if missing:
            raise CheckpointError(f"checkpoint {path} is incomplete: missing {missing}")
        return state

    # -- evaluation -----------------------------------------------------------------------
    def write_json(self, name: str, obj: dict) -> Path:
        text = (json.dumps(obj, indent=2) + "\n").encode()
        path = self.path / name
        atomic_write_bytes(path, lambda f: f.write(text))
        return path
