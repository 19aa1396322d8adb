"""The ``ppl-vae`` command line: fit, evaluate and sample.

Errors caused by input (a bad command line or config, missing data, a corrupted
checkpoint, a full disk or a read-only folder, ...) are printed as one line,
``ppl-vae: error: ...``, with exit status 2. An interrupted fit prints how to
resume and exits with status 130 (Ctrl-C) or 143 (SIGTERM); Ctrl-C before
training starts prints ``ppl-vae: interrupted`` and exits with status 130.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from ..errors import FitInterrupted, PplVaeError

from .commands import _cmd_compare, _cmd_evaluate, _cmd_fit, _cmd_sample, _cmd_show, write_sample_figures
from .views import _cmd_explore, _cmd_report
from .vqvae import fit_prior as _cmd_fit_prior
from .files import _failed_write, _write_error
from .parser import EXAMPLES, build_parser

__all__ = ["EXAMPLES", "build_parser", "main", "run", "write_sample_figures"]


class _PrintHandler(logging.Handler):
    """Prints the library's progress messages (the ``ppl_vae`` logger) as plain lines on stdout."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record))


def _log_to_stdout() -> None:
    logger = logging.getLogger("ppl_vae")
    if not any(isinstance(h, _PrintHandler) for h in logger.handlers):
        logger.addHandler(_PrintHandler())
    logger.setLevel(logging.INFO if _RANK == 0 else logging.WARNING)  # under torchrun, rank 0 tells the progress


def _env_int(name: str, default: int) -> int:
    """A number ``torchrun`` sets in the environment (its default outside torchrun)."""
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


#: this process's rank and the number of processes under ``torchrun`` (0 and 1 otherwise)
_RANK, _WORLD_SIZE = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
#: the commands that run as one process of several under ``torchrun`` (see the README's torchrun section)
DISTRIBUTED_COMMANDS = ("fit", "evaluate")
#: how errors are signed: ``ppl-vae``, and under torchrun the rank of any process but the first
_PROG = "ppl-vae" if _RANK == 0 else f"ppl-vae (rank {_RANK})"


COMMANDS = {"fit": _cmd_fit, "compare-estimators": _cmd_compare, "compare-guides": _cmd_compare, "show": _cmd_show, "evaluate": _cmd_evaluate, "sample": _cmd_sample,
            "explore": _cmd_explore, "report": _cmd_report, "fit-prior": _cmd_fit_prior}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ppl-vae``; returns the exit status."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 0
        _log_to_stdout()
        if args.command not in DISTRIBUTED_COMMANDS and _WORLD_SIZE > 1:
            raise PplVaeError(
                f"{args.command} runs in one process; under torchrun (WORLD_SIZE={_WORLD_SIZE}) only "
                f"{' and '.join(DISTRIBUTED_COMMANDS)} share their work out"
            )
        return COMMANDS[args.command](args)
    except FitInterrupted as err:  # a checkpoint was written: the message says how to resume
        print(f"\n{_PROG}: {err}", file=sys.stderr)
        signum = getattr(err, "signal", None)
        return 128 + int(signum) if signum else 130  # 143 for SIGTERM, as the shell reports a process it ended
    except KeyboardInterrupt:  # Ctrl-C outside training (imports, data loading): nothing was started
        print(f"\n{_PROG}: interrupted", file=sys.stderr)
        return 130
    except PplVaeError as err:
        print(f"{_PROG}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stdout = open(os.devnull, "w")
        return 0
    except (OSError, RuntimeError) as err:  # a failed write that no command wrapped (see _writing)
        failed = _failed_write(err)
        if failed is None:
            raise
        print(f"{_PROG}: error: {_write_error(failed, Path.cwd())}", file=sys.stderr)
        return 2
    finally:
        if _WORLD_SIZE > 1:
            from ..inference.distributed import leave_distributed

            leave_distributed()


def run() -> None:
    """The ``ppl-vae`` executable: :func:`main`, then exit with its status (under ``torchrun`` through
    :func:`~ppl_vae.inference.distributed.leave_distributed`, which says why)."""
    code = main()
    if _WORLD_SIZE > 1:
        from ..inference.distributed import leave_distributed

        logging.shutdown()
        leave_distributed(code)
    sys.exit(code)
