"""Run directories and the files the command line writes: new run paths, writability, and one-line errors for a full disk or a read-only folder."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from ..errors import PplVaeError



def _new_run(args: argparse.Namespace, config, world=None):
    """The path of a new run directory (not created: fit creates it once everything has been checked); in a
    data-parallel fit, rank 0's choice on every rank."""
    from ..inference.distributed import SINGLE, broadcast_object
    from ..runs import RunDir

    root = Path(args.out_dir or config.run.out_dir)
    base = args.name or config.run.name or f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = root / base, 1
    while path.exists():
        i += 1
        path = root / f"{base}-{i}"
    return RunDir(broadcast_object(str(path), world or SINGLE))


def _open_run(path: str):
    """An existing run directory, its ``config.yaml`` checked to read as a config mapping (a damaged one is
    one line naming it, before anything else reads it)."""
    from ..config import read_yaml
    from ..runs import RunDir

    run = RunDir.open(path)
    if run.config_path.is_file():
        read_yaml(run.config_path)
    return run


#: the errors of a write that a user can act on, and how to say them
_WRITE_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is too large for its file system",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def _failed_write(err: BaseException) -> OSError | None:
    """The OSError of a failed write behind ``err``: itself, or one it was raised from (torch.save reports a
    full disk as a RuntimeError raised while handling the OSError of its file's write)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and not isinstance(err, BrokenPipeError) and err.errno in _WRITE_ERRORS:
            return err
        err = err.__cause__ or err.__context__
    return None


def _write_error(err: OSError, where: Path) -> str:
    """One line for a failed write: what happened, and where (the file, else the folder being written)."""
    if not isinstance(err.filename, (str, bytes, os.PathLike)):
        return f"{_WRITE_ERRORS[err.errno]}: cannot write in {where}"
    target = Path(os.fsdecode(err.filename))
    if target.name.startswith(".") and ".tmp-" in target.name:  # an atomic write's temporary file
        target = target.with_name(target.name[1 : target.name.index(".tmp-")])
    return f"{_WRITE_ERRORS[err.errno]}: cannot write {target}"


@contextmanager
def _writing(where: Path, run=None) -> Iterator[None]:
    """Turn a failed write under ``where`` (a full disk, a read-only folder) into one line; for a fit, say
    that the run's last checkpoint (written atomically, so never half-written) is kept."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        failed = _failed_write(err)
        if failed is None:
            raise
        message = _write_error(failed, where)
        if run is not None and run.path.is_dir() and any(run.path.rglob(run.CHECKPOINT)):
            message += f"; its last checkpoint is kept: once it can be written, resume with: ppl-vae fit --resume {run.path}"
        raise PplVaeError(message) from None


def _check_writable(path: Path) -> None:
    """Refuse up front a folder that the command could not write into (its nearest existing folder, for one
    still to be made), before any data is loaded or anything computed; a write that fails later (a full disk)
    is reported by :func:`_writing`."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PplVaeError(f"cannot write in {existing}: it is read-only, or not writable for this user")


def _discard_unstarted(run, made_parent: bool) -> None:
    """Remove a new run's directory when the fit stopped before its first checkpoint (nothing to resume),
    and its parent folder when the fit made that too and it is left empty."""
    if run.path.is_dir() and not any(run.path.rglob(run.CHECKPOINT)):
        shutil.rmtree(run.path, ignore_errors=True)
    if made_parent and run.path.parent.is_dir() and not any(run.path.parent.iterdir()):
        with suppress(OSError):
            run.path.parent.rmdir()
