"""Errors that ppl_vae raises for bad input.

Each one carries a message meant for a person: what was wrong, where, and what
to do. The CLI prints these without a traceback.
"""

from __future__ import annotations

__all__ = [
    "PplVaeError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "RunDirError",
    "NonFiniteLossError",
    "FitInterrupted",
]


class PplVaeError(Exception):
    """Base class of the errors ppl_vae raises for bad input or a failed run."""


class ConfigError(PplVaeError, ValueError):
    """An invalid config: an unknown key, a value of the wrong type, or a bad value."""


class DataError(PplVaeError, ValueError):
    """Data of the wrong shape, with NaNs, outside a likelihood's support, or missing files."""


class CheckpointError(PplVaeError, RuntimeError):
    """A missing, corrupted or truncated checkpoint."""


class RunDirError(PplVaeError, FileNotFoundError):
    """A run directory that does not exist or lacks its config."""


class NonFiniteLossError(PplVaeError, FloatingPointError):
    """The loss became NaN or infinite during training; the last good checkpoint is kept."""


class FitInterrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C, SIGTERM or a callback); a checkpoint was written to resume from.

    :ivar run_dir: the run directory holding the checkpoint, or None when the fit had none.
    :ivar signal: the signal that stopped it (``signal.SIGTERM``), or None for Ctrl-C or a callback; the
        CLI exits with status 128 + its number (143 for SIGTERM), else 130.
    """

    def __init__(self, message: str, run_dir: str | None = None, *, signal: int | None = None) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.signal = signal
