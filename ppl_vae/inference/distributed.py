r"""Data-parallel training with ``torch.distributed``: several processes (CPU cores, GPUs, machines) train one
model, launched by ``torchrun``.

Launch::

    torchrun --nproc-per-node 2 -m ppl_vae.cli fit configs/vae_digits.yaml

Each process (a *rank*) holds the whole model, guide and data. In every step, the global batch of B points
(the batch a single process would draw: same order, same binarization draws) is split into one shard per
rank; each rank computes its shard's loss scaled by :math:`1/B` (not by its shard's size) and its
gradients, and one ``all_reduce`` sums the gradients and the losses over the ranks. So N ranks take the
step one process takes on the B points, up to the order in which floating-point sums are added.

Why an all-reduce and not ``DistributedDataParallel``: DDP synchronises the gradients of one module
whose ``forward`` produces the loss that is then back-propagated. In SVI, Pyro's estimator runs the model
and the guide inside its own traces and calls ``backward`` itself (on a surrogate loss, for score-function
estimators), and the trained parameters live in several places (the model, the guide, function models'
:class:`~ppl_vae.programs.FunctionProgram`, an estimator's neural baselines). Summing every trained
parameter's gradient in one flat ``all_reduce`` after ``loss_and_grads`` is what DDP's buckets compute,
for all of them at once. As DDP does, rank 0's parameters and buffers are broadcast before the first
step, and buffers (running averages of baselines, batch-norm statistics) are broadcast from rank 0 after
every step, so every rank holds the same state and rank 0's checkpoint is the run's.

Backends: ``nccl`` on GPUs (rank r on ``cuda:LOCAL_RANK``), ``gloo`` on CPUs.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
from torch import distributed as dist
from torch import nn

from ..errors import ConfigError

__all__ = [
    "World",
    "SINGLE",
    "env_world",
    "current_world",
    "init_distributed",
    "sum_gradients",
    "leave_distributed",
    "broadcast_state",
    "broadcast_buffers",
    "gather_objects",
    "broadcast_object",
    "any_rank",
]


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    #: this process's rank, 0 to size - 1; rank 0 writes the run directory
    rank: int = 0
    #: number of processes
    size: int = 1
    #: this process's rank on its machine (its GPU with nccl)
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


#: one process, no process group
SINGLE = World()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"the environment variable {name} must be an integer, got {value!r}") from None


def env_world() -> World:
    """The world that ``torchrun`` describes in this process's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``), without joining it; :data:`SINGLE` outside ``torchrun``."""
    size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"RANK={rank} and WORLD_SIZE={size} in the environment do not describe a process group")
    return World(rank, size, _env_int("LOCAL_RANK", rank))


def current_world() -> World:
    """The process group this process has joined (``torch.distributed``'s default group), else :data:`SINGLE`."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    rank = dist.get_rank()
    return World(rank, dist.get_world_size(), _env_int("LOCAL_RANK", rank))


def init_distributed(device: str = "auto") -> World:
    """Join the process group that ``torchrun`` set up in the environment, once; one process returns :data:`SINGLE`.

    The backend is ``nccl`` when training will run on CUDA (``device`` ``auto`` with a GPU, or ``cuda``),
    each rank on ``cuda:LOCAL_RANK``; else ``gloo``. A user who has called
    ``torch.distributed.init_process_group`` already keeps that group.

    :raises ConfigError: when the environment names a group that cannot be joined.
    """
    world = env_world()
    if not world.distributed or (dist.is_available() and dist.is_initialized()):
        return current_world()
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 asks for several processes, but this torch build has no torch.distributed")
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE={world.size} but {', '.join(missing)} is not set; launch with torchrun")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK={world.local_rank} but this machine has {torch.cuda.device_count()} GPUs; start at most "
                "one process per GPU (--nproc-per-node), or train on CPUs with train.device: cpu"
            )
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return current_world()


def leave_distributed(exit_code: int | None = None) -> None:
    """Leave the process group, if this process joined one; with ``exit_code``, then end the process.

    A script run under ``torchrun`` ends best with ``leave_distributed(0)``: it flushes stdout and stderr and
    ends with :func:`os._exit`, skipping the interpreter's finalization. A ``gloo`` group's worker threads can
    still hold the last collective's tensors then, and dropping them needs the GIL, which finalization refuses
    to a non-Python thread by ending it: the process aborts (SIGABRT, "terminate called without an active
    exception") after work that succeeded. Rare (seen on a 2-core machine), but it fails the launch.
    Everything the library keeps is written and renamed into place before its calls return, so nothing is
    lost by skipping finalization; a script's own open files should be closed first.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if exit_code is not None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed, or a reader that went away
                pass
        os._exit(exit_code)


def _flat(tensors: Sequence[torch.Tensor], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.cat([t.reshape(-1).to(device=device, dtype=dtype) for t in tensors]) if tensors else torch.zeros(0, device=device, dtype=dtype)


def sum_gradients(params: Sequence[torch.Tensor], loss: float, world: World, stop: bool = False) -> tuple[float, bool]:
    """Sum every parameter's gradient, and ``loss``, over the ranks, in one ``all_reduce``.

    Returns the summed loss and whether ``stop`` was true on any rank: a stop request rides along in the same
    collective, so the loop needs no second one per step. A parameter that has no gradient on any rank keeps
    none (Adam then leaves it alone, as one process would); one with a gradient on some ranks gets the sum,
    zeros counted for the others.
    """
    if not world.distributed:
        return loss, stop
    ref = params[0] if params else torch.zeros(())
    grads = [p.grad if p.grad is not None else p.new_zeros(p.shape) for p in params]
    had = [1.0 if p.grad is not None else 0.0 for p in params]
    tail = torch.tensor([*had, 1.0 if stop else 0.0, loss], dtype=ref.dtype, device=ref.device)
    flat = torch.cat([_flat(grads, ref.dtype, ref.device), tail])
    dist.all_reduce(flat)
    offset, flags = 0, flat[-len(params) - 2 :].tolist()
    for p, flag in zip(params, flags):
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype) if flag > 0 else None
        offset += n
    return flags[-1], flags[-2] > 0


def _broadcast(tensors: list[torch.Tensor]) -> None:
    """Broadcast from rank 0 into ``tensors``, one collective per dtype and device."""
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for (dtype, device), group in groups.items():
        flat = _flat(group, dtype, device)
        dist.broadcast(flat, src=0)
        offset = 0
        for t in group:
            t.data.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def _unique(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    seen: set[int] = set()
    return [t for t in tensors if not (id(t) in seen or seen.add(id(t)))]


def broadcast_state(modules: Sequence[nn.Module], world: World) -> None:
    """Give every rank rank 0's parameters and buffers (before training, as DDP does)."""
    if world.distributed:
        _broadcast(_unique(t for m in modules for t in (*m.parameters(), *m.buffers())))


def broadcast_buffers(modules: Sequence[nn.Module], world: World) -> None:
    """Give every rank rank 0's buffers (after each step, as DDP does with ``broadcast_buffers``)."""
    if world.distributed:
        buffers = _unique(b for m in modules for b in m.buffers())
        if buffers:
            _broadcast(buffers)


def gather_objects(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (a collective: all ranks must call it)."""
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank (a collective)."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank when ``flag`` is true on any (a collective)."""
    if not world.distributed:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)
