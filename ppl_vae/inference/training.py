"""What a fit trains: the optimizer and schedule configs, and the training state with one ``state_dict``.

:class:`TrainingState` holds the model, the guide, the estimator's learned state (neural baselines,
a KL schedule's step), the parameters they own, and the optimizer and scheduler over them. Its
``state_dict`` is what a checkpoint stores besides the position in the run and the RNG states.

A module of the estimator's state marked :class:`~ppl_vae.contract.TrainedByObjective` (an adversarial
autoencoder's discriminator, :mod:`ppl_vae.inference.adversarial`) is a second player: the objective steps
it with its own optimizer, so the optimizer here leaves its parameters out. It is still moved to the device
and checkpointed with the estimator's state, its optimizer state included (its ``get_extra_state``).

Every parameter is a module parameter: a ``PyroModule`` owns its own, and a model or guide written
as a function is wrapped in a :class:`~ppl_vae.programs.FunctionProgram` that owns what it registers
with ``pyro.module`` and ``pyro.param``. :meth:`TrainingState.create` runs the model and guide once
first, so that parameters created lazily on a first call exist before the optimizer is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.optim.clipped_adam import ClippedAdam
from torch import nn

from ..contract import HasTrainableState, TrainedByObjective, capability
from ..errors import CheckpointError, ConfigError
from ..schema import (
    BOOL,
    POSITIVE,
    POSITIVE_INT,
    check_fields,
    documented,
    int_at_least,
    number_in,
    one_of,
)
from .tracing import rng_devices

__all__ = [
    "OptimConfig",
    "TrainConfig",
    "TrainingState",
    "instantiate",
    "make_optimizer",
    "make_scheduler",
    "resolve_device",
]

OPTIMIZERS = ("adam", "clipped_adam")
SCHEDULES = ("constant", "exponential", "step", "cosine")
DEVICES = ("auto", "cpu", "cuda")


@documented
@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (the ``optim:`` section)."""

    #: adam | clipped_adam (Pyro's Adam with gradient-norm clipping)
    name: str = "adam"
    #: initial learning rate
    lr: float = 1e-3
    #: Adam's moment decay rates
    betas: tuple[float, float] = (0.9, 0.999)
    #: L2 penalty
    weight_decay: float = 0.0
    #: clipped_adam: clip each parameter's gradient to this norm
    clip_norm: float = 10.0
    #: constant | exponential | step | cosine, stepped once per epoch
    schedule: str = "constant"
    #: exponential: lr factor per epoch; step: lr factor every step_size epochs
    gamma: float = 1.0
    #: step: epochs between decays
    step_size: int = 1

    def __post_init__(self) -> None:
        check_fields(
            self, "optim", name=one_of(OPTIMIZERS), schedule=one_of(SCHEDULES), lr=POSITIVE,
            gamma=number_in(0, 1, low_open=True), weight_decay=number_in(0), clip_norm=POSITIVE, step_size=POSITIVE_INT,
        )
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(self.betas))


def _device(where: str, value: object) -> str:
    if not isinstance(value, str) or (value not in DEVICES and not value.startswith("cuda:")):
        raise ValueError(f"{where} must be one of {list(DEVICES)} or 'cuda:N', got {value!r}")
    return value


@documented
@dataclass(frozen=True)
class TrainConfig:
    """How long and where to train (the ``train:`` section)."""

    #: passes over the training set
    epochs: int = 10
    #: data points per step
    batch_size: int = 100
    #: seeds initialisation, batch order, dynamic binarization and sampling
    seed: int = 0
    #: auto (cuda when available) | cpu | cuda | cuda:N
    device: str = "auto"
    #: validate every N epochs; 0 never
    val_every: int = 1
    #: importance samples per point in validation (1: the ELBO only)
    val_num_samples: int = 1
    #: write a checkpoint every N epochs (always at the end and on interrupt)
    checkpoint_every: int = 1
    #: show a progress bar
    progress: bool = True
    #: keep Pyro's argument validation for the first N steps of a fit call, then skip it; -1 always
    validate_steps: int = 20

    def __post_init__(self) -> None:
        check_fields(
            self, "train", epochs=POSITIVE_INT, batch_size=POSITIVE_INT, val_num_samples=POSITIVE_INT,
            checkpoint_every=POSITIVE_INT, validate_steps=int_at_least(-1), val_every=int_at_least(0),
            device=_device, progress=BOOL, seed=int_at_least(0),
        )


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is an error.

    :param int local_rank: in data-parallel training, this process's rank on its machine: ``auto`` and
        ``cuda`` then mean its own GPU, ``cuda:LOCAL_RANK``.
    """
    _device("device", name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was requested but CUDA is not available; use device: cpu or auto")
    if name == "cuda" and local_rank is not None:
        return torch.device("cuda", local_rank)
    return torch.device(name)


def make_optimizer(params: list[torch.Tensor], config: OptimConfig) -> torch.optim.Optimizer:
    """Adam (PyTorch's fused implementation where the parameters allow it), or Pyro's ClippedAdam, over ``params``."""
    if config.name == "clipped_adam":
        return ClippedAdam(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, clip_norm=config.clip_norm)
    # The fused kernel takes the whole update in one call per device: on a 2-core CPU it halves the optimizer's
    # share of a small step (benchmarks/profile_step.py). It needs floating parameters on CPU or CUDA.
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, fused=fused or None)


def make_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, epochs: int):
    """The learning-rate schedule, stepped once per epoch."""
    if config.schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.gamma)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def instantiate(
    model: nn.Module, guide: nn.Module, x: torch.Tensor, y: torch.Tensor | None, *, without_labels: bool = False
) -> None:
    """Run the guide and the model against it once, without gradients, so that lazily created parameters exist.

    :param bool without_labels: run them a second time without the labels (semi-supervised data: a guide
        may create a parameter on the unlabelled path only).
    :raises ConfigError: when the model or guide fails on two training points, naming what went wrong.
    """
    for labels in ((y, None) if without_labels and y is not None else (y,)):
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=rng_devices(x)):
                guide_trace = poutine.trace(guide).get_trace(x, labels)
                poutine.replay(model, trace=guide_trace)(x, labels)
        except (ConfigError, KeyboardInterrupt):
            raise
        except Exception as err:  # an error in user code on a first call is a contract problem
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ConfigError(
                f"the model or guide failed on a batch of {x.shape[0]} training points ({type(err).__name__}: "
                f"{first}); see docs/bring_your_own_model.md for what ppl_vae calls them with"
            ) from None


def mismatch(err: Exception) -> str:
    """The first specific line of a ``load_state_dict`` error (a missing or unexpected key, a shape), shortened."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return next((line for line in lines if not line.startswith("Error(s) in loading")), lines[0] if lines else "")[:200]


def _unique(modules: list[nn.Module]) -> list[nn.Parameter]:
    seen, out = set(), []
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def _trained_by_objective(module: nn.Module) -> bool:
    """Whether the objective steps this module's parameters itself (see :class:`~ppl_vae.contract.TrainedByObjective`)."""
    marked = capability(module, TrainedByObjective)
    return marked is not None and bool(marked.trained_by_objective)


def _refuse_stray_params(owned: set[int]) -> None:
    """A module that calls a bare ``pyro.param`` keeps that parameter only in the global param store."""
    stray = [name for name, value in pyro.get_param_store().named_parameters() if id(value) not in owned]
    if stray:
        raise ConfigError(
            f"the model or guide registers {stray} with pyro.param outside its own parameters, so they would be "
            "lost after training; make them parameters of the module (an nn.Parameter or a PyroParam attribute), "
            "or write the model or guide as a function (see docs/bring_your_own_model.md)"
        )


@documented
@dataclass
class TrainingState:
    """The model, guide and estimator state, with the optimizer and scheduler over their parameters."""

    model: nn.Module
    guide: nn.Module
    estimator: ELBO
    estimator_state: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: object

    @classmethod
    def create(cls, model: nn.Module, guide: nn.Module, estimator: ELBO, optim: OptimConfig, epochs: int) -> "TrainingState":
        """Collect the parameters (after :func:`instantiate`) and make the optimizer and schedule over them."""
        state = capability(estimator, HasTrainableState)
        estimator_state = state.trainable_module if state is not None else None
        modules = [m for m in (model, guide, estimator_state) if m is not None]
        params = _unique(modules)
        _refuse_stray_params({id(p) for p in params})
        # A second player (an adversarial discriminator) is stepped by the objective, with its own optimizer.
        players = [m for m in (estimator_state.modules() if estimator_state is not None else ()) if _trained_by_objective(m)]
        own = {id(p) for m in players for p in m.parameters()}
        optimizer = make_optimizer([p for p in params if id(p) not in own], optim)
        return cls(model, guide, estimator, estimator_state, optimizer, make_scheduler(optimizer, optim, epochs))

    @property
    def modules(self) -> list[nn.Module]:
        return [m for m in (self.model, self.guide, self.estimator_state) if m is not None]

    @property
    def params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def param_count(self) -> int:
        """How many tensors are trained (to notice a parameter created after the first step)."""
        return len(_unique(self.modules))

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "guide": self.guide.state_dict(),
            "estimator": self.estimator_state.state_dict() if self.estimator_state is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict, where: str) -> None:
        """Restore from a checkpoint's state; :class:`CheckpointError` naming ``where`` when it does not fit."""
        try:
            self.model.load_state_dict(state["model"])
            self.guide.load_state_dict(state["guide"])
            if self.estimator_state is not None:
                self.estimator_state.load_state_dict(state["estimator"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, KeyError, ValueError) as err:
            first = mismatch(err)
            raise CheckpointError(f"the checkpoint in {where} does not match this model and guide: {first}") from None
