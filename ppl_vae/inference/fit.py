r"""``fit``: the one training loop, for every model, guide and estimator.

One step on a batch of B points is::

    with poutine.scale(scale=1 / B):          # losses in nats per data point
        loss = estimator.loss_and_grads(model, guide, x, y)
    optimizer.step(); optimizer.zero_grad()

Pyro computes the loss (and its surrogate for score-function sites);
``fit`` only feeds batches, steps a plain PyTorch optimizer over the modules'
parameters, validates, writes metrics and checkpoints, and shows progress.

Each fit runs in its own Pyro param-store scope, so nothing leaks from one
run into another. A checkpoint is written at the end of each epoch and when
the run is interrupted (Ctrl-C, or a callback's ``request_stop``); it holds
everything needed to continue bit for bit: module, optimizer and scheduler
state, param-store entries (e.g. TraceGraph baselines), every RNG state, and
the position in the epoch.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Optional, Sequence

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO
from pyro.optim.clipped_adam import ClippedAdam
from tqdm.auto import tqdm

from ..data import Batches, Dataset, check_finite
from ..labelled import MixedBatches, is_semi_supervised
from ..errors import CheckpointError, ConfigError, DataError, FitInterrupted, NonFiniteLossError
from ..runs import RunDir, capture_rng_state, param_store_state, restore_param_store, restore_rng_state
from .estimators import EstimatorConfig, check_estimator, make_estimator
from .semisup import classification_accuracy
from .evaluate import EvalConfig, conditioning_labels, evaluate

__all__ = ["OptimConfig", "TrainConfig", "FitResult", "Callback", "fit", "resolve_device", "check_data"]

OPTIMIZERS = ("adam", "clipped_adam")
SCHEDULES = ("constant", "exponential", "step", "cosine")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (the ``optim:`` section)."""

    name: str = "adam"  # adam | clipped_adam (Pyro's Adam with gradient-norm clipping)
    lr: float = 1e-3  # initial learning rate
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's moment decay rates
    weight_decay: float = 0.0  # L2 penalty
    clip_norm: float = 10.0  # clipped_adam: clip each parameter's gradient to this norm
    schedule: str = "constant"  # constant | exponential | step | cosine, stepped once per epoch
    gamma: float = 1.0  # exponential: lr factor per epoch; step: lr factor every step_size epochs
    step_size: int = 1  # step: epochs between decays

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {list(OPTIMIZERS)}, got {self.name!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr!r}")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"optim.gamma must be in (0, 1], got {self.gamma!r}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(self.betas))


@dataclass(frozen=True)
class TrainConfig:
    """How long and where to train (the ``train:`` section)."""

    epochs: int = 10  # passes over the training set
    batch_size: int = 100  # data points per step
    seed: int = 0  # seeds initialisation, batch order, dynamic binarization and sampling
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    val_every: int = 1  # validate every N epochs; 0 never
    val_num_samples: int = 1  # importance samples per point in validation (1: the ELBO only)
    checkpoint_every: int = 1  # write a checkpoint every N epochs (always at the end and on interrupt)
    progress: bool = True  # show a progress bar
    validate_steps: int = 20  # keep Pyro's argument validation for the first N steps of a fit call, then skip it; -1 always

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "val_num_samples", "checkpoint_every"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"train.{key} must be a positive int, got {value!r}")
        if not isinstance(self.validate_steps, int) or self.validate_steps < -1:
            raise ValueError(f"train.validate_steps must be an int >= -1, got {self.validate_steps!r}")
        if not isinstance(self.val_every, int) or self.val_every < 0:
            raise ValueError(f"train.val_every must be an int >= 0, got {self.val_every!r}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"train.device must be one of {list(DEVICES)} or 'cuda:N', got {self.device!r}")


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    history: list[dict]  # one metrics row per epoch run in this call
    epochs_done: int  # epochs completed in total (including those before a resume)
    device: str  # where training ran
    run_dir: Optional[RunDir] = None  # where checkpoints and metrics went, if anywhere
    final_loss: float = float("nan")  # training loss of the last epoch, nats per point


class Callback:
    """Hooks into :func:`fit`. Subclass and override what you need; keep plotting out of the loop."""

    def on_step(self, ctx: "FitContext", loss: float) -> None:
        """After each optimizer step, with the loss in nats per data point."""

    def on_epoch_end(self, ctx: "FitContext", metrics: dict) -> None:
        """After each epoch's metrics are computed (and before the checkpoint)."""


@dataclass
class FitContext:
    """State shared with callbacks."""

    model: torch.nn.Module
    guide: torch.nn.Module
    estimator: Optional[ELBO] = None  # the ELBO object being trained with
    epoch: int = 0  # the epoch in progress, counted from 0
    step: int = 0  # the step in progress within the epoch
    stop_requested: bool = False
    extra: dict = field(default_factory=dict)

    def request_stop(self) -> None:
        """Stop after the current step, writing a checkpoint to resume from."""
        self.stop_requested = True


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was requested but CUDA is not available; use device: cpu or auto")
    return torch.device(name)


def check_data(model: torch.nn.Module, data: Dataset) -> None:
    """Check shapes, finiteness and the likelihood's support before any training step.

    :raises DataError: naming the split and what is wrong with it.
    """
    x_shape = getattr(model, "x_shape", None)
    likelihood = getattr(model, "likelihood", None)
    for split in ("train", "val", "test"):
        x = getattr(data, f"x_{split}")
        if x is None or x.numel() == 0:
            continue
        if x_shape is not None and tuple(x.shape[1:]) != tuple(x_shape):
            raise DataError(
                f"{split} data has items of shape {tuple(x.shape[1:])} (data shape {tuple(x.shape)}), "
                f"but the model expects items of shape {tuple(x_shape)}"
            )
        check_finite(x, f"{split} data")
        if likelihood is not None:
            # Dynamic binarization makes training batches binary, whatever the stored grey levels.
            binary_batches = split == "train" and data.binarize == "dynamic"
            try:
                likelihood.check_data(x, what=f"{split} data", binarized=binary_batches)
            except ValueError as err:
                raise DataError(str(err)) from None


def _make_optimizer(params: list[torch.Tensor], config: OptimConfig) -> torch.optim.Optimizer:
    if config.name == "clipped_adam":
        return ClippedAdam(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, clip_norm=config.clip_norm)
    return torch.optim.Adam(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def _make_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig, epochs: int):
    if config.schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.gamma)
    if config.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def _unique_parameters(*modules: torch.nn.Module) -> list[torch.nn.Parameter]:
    seen, out = set(), []
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


class _SigintToStop:
    """While active, the first Ctrl-C asks the loop to stop cleanly; a second one interrupts at once."""

    def __init__(self, ctx: FitContext) -> None:
        self.ctx = ctx
        self.previous = None

    def __enter__(self) -> "_SigintToStop":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.ctx.stop_requested:
            raise KeyboardInterrupt
        self.ctx.request_stop()

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def fit(
    model: torch.nn.Module,
    guide: torch.nn.Module,
    data: Dataset | torch.Tensor,
    *,
    estimator: EstimatorConfig | str | ELBO | None = None,
    optim: OptimConfig | None = None,
    train: TrainConfig | None = None,
    run_dir: RunDir | str | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    labelled_per_batch: Optional[int] = None,
) -> FitResult:
    r"""Train ``model`` and ``guide`` by stochastic variational inference.

    Each step maximises the estimator's bound on a mini-batch; the loss shown and
    recorded is the negative bound in nats per data point.

    .. math::

        \mathcal{L}(\theta, \phi) = \frac{1}{B} \sum_{i=1}^{B}
        \mathbb{E}_{q_\phi(z|x_i)}\left[\log p_\theta(x_i, z) - \log q_\phi(z|x_i)\right]

    :param model: a Pyro model ``model(x, y)`` (a ``PyroModule``).
    :param guide: a Pyro guide with the same signature.
    :param data: a :class:`~ppl_vae.data.Dataset`, or a tensor ``(N, *x_shape)`` of training data.
    :param estimator: an :class:`EstimatorConfig`, a registry name, or a Pyro ELBO. Defaults to ``"trace"``.
    :param OptimConfig optim: optimizer and schedule. Defaults to Adam with lr 1e-3.
    :param TrainConfig train: epochs, batch size, seed, device, validation.
    :param run_dir: where to write metrics and checkpoints; None keeps everything in memory.
    :param bool resume: continue from the checkpoint in ``run_dir``.
    :param callbacks: :class:`Callback` objects.
    :param int labelled_per_batch: semi-supervised data only (training labels -1 where hidden, see
        :func:`ppl_vae.labelled.hide_labels`): draw :class:`~ppl_vae.labelled.MixedBatches` with this many
        labelled points per batch. None: plain shuffled batches.

    When the guide has a classifier q(y|x) (``label_dist``, as M2's) and the data have labels, every
    epoch also records ``val_accuracy`` and ``test_accuracy``.
    :raises NonFiniteLossError: when the loss becomes NaN or inf; the last good checkpoint is kept.
    :raises FitInterrupted: on Ctrl-C or ``request_stop``, after writing a checkpoint.
    """
    optim = optim or OptimConfig()
    train = train or TrainConfig()
    elbo = make_estimator(estimator)
    if not isinstance(data, Dataset):
        data = Dataset.from_tensor(data)
    if data.x_train.shape[0] == 0:
        raise DataError("the training set is empty")
    check_data(model, data)
    device = resolve_device(train.device)
    run = RunDir(run_dir) if isinstance(run_dir, (str, os.PathLike)) else run_dir
    if resume and (run is None or not run.has_checkpoint()):
        raise CheckpointError(f"cannot resume: {run.path if run else 'no run directory given'} has no checkpoint")

    # Estimators with learned state (e.g. neural baselines) expose it as ``estimator.trainable_module``.
    estimator_module = getattr(elbo, "trainable_module", None)
    modules = [m for m in (model, guide, estimator_module) if m is not None]
    for m in modules:
        m.to(device)
    data = data.to(device)
    semi_supervised = is_semi_supervised(data.y_train)
    if semi_supervised and not getattr(elbo, "check_without_labels", False):
        raise ConfigError(
            "the training labels mark unlabelled points (-1), but the estimator is not semi-supervised; "
            "wrap it: SemiSupervised_ELBO(make_estimator('enum'), aux_weight=...) (config section semi_supervised:)"
        )
    check_estimator(elbo, model, guide, data.x_train[:2], None if data.y_train is None else data.y_train[:2])
    if semi_supervised and labelled_per_batch is not None:
        try:
            batches = MixedBatches(
                data.x_train, data.y_train, batch_size=train.batch_size, labelled_per_batch=labelled_per_batch,
                seed=train.seed, binarize=data.binarize == "dynamic", noise=data.train_noise,
            )
        except ValueError as err:
            raise ConfigError(f"semi_supervised.labelled_per_batch: {err}") from None
    else:
        batches = Batches(
            data.x_train, data.y_train, batch_size=train.batch_size, seed=train.seed,
            binarize=data.binarize == "dynamic", noise=data.train_noise,
        )
    has_classifier = getattr(guide, "label_site", None) is not None and data.y_val is not None
    params = _unique_parameters(*modules)
    optimizer = _make_optimizer(params, optim)
    scheduler = _make_scheduler(optimizer, optim, train.epochs)
    ctx = FitContext(model, guide, elbo)
    history: list[dict] = []
    val_config = EvalConfig(num_samples=train.val_num_samples, batch_size=max(train.batch_size, 100))

    with pyro.get_param_store().scope():
        start_epoch, start_step, gen_state, loss_sum, points = 0, 0, None, 0.0, 0
        if resume:
            state = run.load_checkpoint(map_location=device)
            try:
                model.load_state_dict(state["model"])
                guide.load_state_dict(state["guide"])
                if estimator_module is not None:
                    estimator_module.load_state_dict(state["estimator"])
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
            except (RuntimeError, KeyError, ValueError) as err:
                raise CheckpointError(f"checkpoint in {run.path} does not match this model and guide: {err}") from None
            restore_param_store(state.get("param_store", {}), device)
            restore_rng_state(state["rng"])
            start_epoch, start_step = state["epoch"], state["step"]
            gen_state = state.get("batch_generator")
            loss_sum, points = state.get("epoch_loss_sum", 0.0), state.get("epoch_points", 0)
            run.truncate_metrics(start_epoch)
        else:
            pyro.set_rng_seed(train.seed)

        module_param_ids = {id(p) for p in params}

        def checkpoint(epoch: int, step: int, generator_state: Optional[torch.Tensor]) -> None:
            if run is None:
                return
            run.save_checkpoint(
                {
                    "epoch": epoch,
                    "step": step,
                    "model": model.state_dict(),
                    "guide": guide.state_dict(),
                    "estimator": estimator_module.state_dict() if estimator_module is not None else {},
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "param_store": param_store_state(module_param_ids),
                    "rng": capture_rng_state(),
                    "batch_generator": generator_state,
                    "epoch_loss_sum": loss_sum,
                    "epoch_points": points,
                }
            )

        total_steps = train.epochs * len(batches)
        done_steps = min(total_steps, start_epoch * len(batches) + start_step)
        bar = tqdm(total=total_steps, initial=done_steps, disable=not train.progress, unit="step", dynamic_ncols=True)
        for m in modules:
            m.train()
        epoch = start_epoch
        steps_run = 0
        try:
            with _SigintToStop(ctx):
                for epoch in range(start_epoch, train.epochs):
                    ctx.epoch = epoch
                    t0 = time.perf_counter()
                    first = start_step if epoch == start_epoch else 0
                    state_in = gen_state if epoch == start_epoch else None
                    for step, xb, yb in batches.epoch(epoch, first, state_in):
                        ctx.step = step
                        # The data were checked up front and non-finite losses are caught below, so after the
                        # first steps Pyro's per-sample argument checks only cost time (about 20% of a step).
                        validating = train.validate_steps < 0 or steps_run < train.validate_steps
                        steps_run += 1
                        try:
                            with poutine.scale(scale=1.0 / xb.shape[0]), (
                                nullcontext() if validating else pyro.validation_enabled(False)
                            ), warnings.catch_warnings():
                                # A NaN loss gets a clear error below; Pyro's own warning would only repeat it.
                                warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
                                loss = float(elbo.loss_and_grads(model, guide, xb, yb))
                        except ValueError:
                            # Pyro's validation rejects NaN distribution parameters before a loss exists.
                            if all(bool(torch.isfinite(p).all()) for p in params):
                                raise
                            loss = float("nan")
                        if not math.isfinite(loss):
                            where = f"epoch {epoch + 1}, step {step + 1}"
                            kept = f"; the last good checkpoint is kept in {run.path}" if run else ""
                            raise NonFiniteLossError(
                                f"the loss became {loss} at {where}{kept}. Try a lower optim.lr, "
                                "optim.name: clipped_adam, or check the data"
                            )
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        loss_sum += loss * xb.shape[0]
                        points += xb.shape[0]
                        bar.update(1)
                        if step % 10 == 0 or step == len(batches) - 1:
                            bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / points:.3f}", refresh=False)
                        for cb in callbacks:
                            cb.on_step(ctx, loss)
                        if ctx.stop_requested:
                            if step + 1 == len(batches):
                                break  # finish the epoch's bookkeeping below, then stop
                            checkpoint(epoch, step + 1, batches.generator.get_state())
                            raise FitInterrupted(
                                f"interrupted at epoch {epoch + 1}, step {step + 1}"
                                + (f"; resume with: ppl-vae fit --resume {run.path}" if run else ""),
                                str(run.path) if run else None,
                            )
                    scheduler.step()
                    metrics = {
                        "epoch": epoch + 1,
                        "train_loss": loss_sum / max(points, 1),
                        "lr": optimizer.param_groups[0]["lr"],
                        "epoch_time_s": time.perf_counter() - t0,
                    }
                    if train.val_every and (epoch + 1) % train.val_every == 0 and data.x_val.shape[0] > 0:
                        val = evaluate(model, guide, data.x_val, conditioning_labels(model, data.y_val), val_config)
                        metrics["val_elbo"] = val.elbo
                        metrics["val_elbo_stderr"] = val.elbo_stderr
                        if train.val_num_samples > 1:
                            metrics["val_log_likelihood"] = val.log_likelihood
                    if has_classifier:
                        for split in ("val", "test"):
                            if getattr(data, f"x_{split}").shape[0] and getattr(data, f"y_{split}") is not None:
                                metrics[f"{split}_accuracy"] = classification_accuracy(
                                    guide, getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
                                )
                    for cb in callbacks:
                        cb.on_epoch_end(ctx, metrics)
                    history.append(metrics)
                    summary = f"epoch {epoch + 1}/{train.epochs}  train loss {metrics['train_loss']:.3f}"
                    if "val_elbo" in metrics:
                        summary += f"  val ELBO {metrics['val_elbo']:.3f}"
                    if "test_accuracy" in metrics:
                        summary += f"  test error {100 * (1 - metrics['test_accuracy']):.2f}%"
                    if train.progress and ("val_elbo" in metrics or "test_accuracy" in metrics or epoch + 1 == train.epochs):
                        bar.write(summary)
                    loss_sum, points = 0.0, 0
                    if run is not None:
                        run.append_metrics(metrics)
                        if (epoch + 1) % train.checkpoint_every == 0 or epoch + 1 == train.epochs or ctx.stop_requested:
                            checkpoint(epoch + 1, 0, None)
                    if ctx.stop_requested and epoch + 1 < train.epochs:
                        raise FitInterrupted(
                            f"interrupted after epoch {epoch + 1}"
                            + (f"; resume with: ppl-vae fit --resume {run.path}" if run else ""),
                            str(run.path) if run else None,
                        )
                epoch = train.epochs
        finally:
            bar.close()

    return FitResult(
        history=history,
        epochs_done=max(epoch, start_epoch),
        device=str(device),
        run_dir=run,
        final_loss=history[-1]["train_loss"] if history else float("nan"),
    )
