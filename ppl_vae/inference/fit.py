r"""``fit``: the one training loop, for every model, guide and estimator.

One step on a batch of B points is::

    with poutine.scale(scale=1 / B):          # losses in nats per data point
        loss = estimator.loss_and_grads(model, guide, x, y)
    optimizer.step(); optimizer.zero_grad()

Pyro computes the loss (and its surrogate for score-function sites); ``fit`` only feeds batches, steps a
plain PyTorch optimizer over the parameters of the :class:`~ppl_vae.inference.training.TrainingState`,
validates, writes metrics and checkpoints, and shows progress.

Each fit runs in its own Pyro param-store scope, so nothing leaks from one run into another. A
checkpoint is written at the end of each epoch and when the run is interrupted (Ctrl-C, or a
callback's ``request_stop``); it holds everything needed to continue bit for bit: the training state,
every RNG state, and the position in the epoch.
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
from typing import Sequence

import pyro
import torch
from pyro import poutine
from pyro.infer import ELBO
from tqdm.auto import tqdm

from ..contract import Classifier, HasLikelihood, HasXShape, capability, estimator_chain
from ..data import Batches, Dataset, check_finite
from ..errors import (
    CheckpointError,
    ConfigError,
    DataError,
    FitInterrupted,
    NonFiniteLossError,
)
from ..labelled import MixedBatches, is_semi_supervised, training_example
from ..programs import as_modules
from ..runs import RunDir, capture_rng_state, restore_rng_state
from ..schema import documented
from .checks import check_estimator
from .estimators import EstimatorConfig, make_estimator
from .evaluate import EvalConfig, conditioning_labels, evaluate
from .jit import KeyedJit_ELBO
from .record import record_config
from .semisup import SemiSupervised_ELBO, classification_accuracy
from .tracing import broadcasts_particles, max_plate_nesting, rng_devices
from .training import (
    OptimConfig,
    TrainConfig,
    TrainingState,
    instantiate,
    resolve_device,
)

__all__ = ["OptimConfig", "TrainConfig", "FitResult", "Callback", "FitContext", "fit", "resolve_device", "check_data"]


@documented
@dataclass
class FitResult:
    """What :func:`fit` returns."""

    #: one metrics row per epoch run in this call
    history: list[dict]
    #: epochs completed in total (including those before a resume)
    epochs_done: int
    #: where training ran
    device: str
    #: where checkpoints and metrics went, if anywhere
    run_dir: RunDir | None = None
    #: training loss of the last epoch, nats per point
    final_loss: float = float("nan")
    #: the trained model as a module (a function model's :class:`~ppl_vae.programs.FunctionProgram`)
    model: torch.nn.Module | None = None
    #: the trained guide as a module
    guide: torch.nn.Module | None = None


class Callback:
    """Hooks into :func:`fit`. Subclass and override what you need; keep plotting out of the loop."""

    def on_step(self, ctx: "FitContext", loss: float) -> None:
        """After each optimizer step, with the loss in nats per data point."""

    def on_epoch_end(self, ctx: "FitContext", metrics: dict) -> None:
        """After each epoch's metrics are computed (and before the checkpoint)."""


@documented
@dataclass
class FitContext:
    """State shared with callbacks."""

    model: torch.nn.Module
    guide: torch.nn.Module
    #: the ELBO object being trained with
    estimator: ELBO | None = None
    #: the epoch in progress, counted from 0
    epoch: int = 0
    #: the step in progress within the epoch
    step: int = 0
    stop_requested: bool = False
    extra: dict = field(default_factory=dict)

    def request_stop(self) -> None:
        """Stop after the current step, writing a checkpoint to resume from."""
        self.stop_requested = True


class _StopOnSignal:
    """While active, the first Ctrl-C or SIGTERM asks the loop to stop cleanly (a checkpoint after the current
    step); a second one interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, ctx: FitContext) -> None:
        self.ctx = ctx
        self.previous: dict = {}
        self.received: int | None = None

    def __enter__(self) -> "_StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.ctx.stop_requested:
            raise KeyboardInterrupt
        self.received = signum
        self.ctx.request_stop()

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def check_data(model, data: Dataset) -> None:
    """Check shapes, finiteness and the likelihood's support before any training step.

    Shapes are checked against a model that declares ``x_shape``, the support against one that declares
    its ``likelihood`` (see :mod:`ppl_vae.contract`).

    :raises DataError: naming the split and what is wrong with it.
    """
    shaped, with_likelihood = capability(model, HasXShape), capability(model, HasLikelihood)
    for split in ("train", "val", "test"):
        x = getattr(data, f"x_{split}")
        if x is None or x.numel() == 0:
            continue
        if shaped is not None and tuple(x.shape[1:]) != tuple(shaped.x_shape):
            raise DataError(
                f"{split} data has items of shape {tuple(x.shape[1:])} (data shape {tuple(x.shape)}), "
                f"but the model expects items of shape {tuple(shaped.x_shape)}"
            )
        check_finite(x, f"{split} data")
        if with_likelihood is not None:
            # Dynamic binarization makes training batches binary, whatever the stored grey levels.
            binary_batches = split == "train" and data.binarize == "dynamic"
            try:
                with_likelihood.likelihood.check_data(x, what=f"{split} data", binarized=binary_batches)
            except ValueError as err:
                raise DataError(str(err)) from None


# -- before the loop --------------------------------------------------------------------------------


def _as_dataset(data: Dataset | torch.Tensor) -> Dataset:
    data = data if isinstance(data, Dataset) else Dataset.from_tensor(data)
    if data.x_train.shape[0] == 0:
        raise DataError("the training set is empty")
    return data


def _batches(data: Dataset, train: TrainConfig, labelled_per_batch: int | None):
    common = dict(batch_size=train.batch_size, seed=train.seed, binarize=data.binarize == "dynamic", noise=data.train_noise)
    if is_semi_supervised(data.y_train) and labelled_per_batch is not None:
        try:
            return MixedBatches(data.x_train, data.y_train, labelled_per_batch=labelled_per_batch, **common)
        except ValueError as err:
            raise ConfigError(f"semi_supervised.labelled_per_batch: {err}") from None
    return Batches(data.x_train, data.y_train, **common)


def _check_estimator_fits(elbo: ELBO, model, guide, data: Dataset) -> None:
    """The estimator's rules, the semi-supervised pairing, and particles for a model that does not broadcast."""
    semi_supervised = any(isinstance(e, SemiSupervised_ELBO) for e in estimator_chain(elbo))
    if is_semi_supervised(data.y_train) and not semi_supervised:
        raise ConfigError(
            "the training labels mark unlabelled points (-1), but the estimator is not semi-supervised; "
            "wrap it: SemiSupervised_ELBO(make_estimator('enum'), aux_weight=...) (config section semi_supervised:)"
        )
    x2, y2 = training_example(data)
    with torch.random.fork_rng(devices=rng_devices(x2)):
        # Learned estimator state (neural baselines) is initialised from the training seed, whatever it drew.
        check_estimator(elbo, model, guide, x2, y2)
    vectorized = [e for e in estimator_chain(elbo) if e.num_particles > 1 and e.vectorize_particles]
    if vectorized:
        y_check = None if semi_supervised else y2
        with torch.no_grad():
            nesting = max_plate_nesting(model, guide, x2, y_check)
        if not broadcasts_particles(model, guide, x2, y_check, nesting):
            for e in vectorized:
                if isinstance(e, KeyedJit_ELBO):
                    e.draw_particles_one_at_a_time()
                else:
                    e.vectorize_particles = False



def _open_run(run_dir: RunDir | str | os.PathLike | None, resume: bool) -> RunDir | None:
    run = RunDir(run_dir) if isinstance(run_dir, (str, os.PathLike)) else run_dir
    if resume and (run is None or not run.has_checkpoint()):
        raise CheckpointError(f"cannot resume: {run.path if run else 'no run directory given'} has no checkpoint")
    return run


@documented
@dataclass
class _Position:
    """Where a run stands: the epoch and step to run next, the batch generator, the epoch's running loss."""

    epoch: int = 0
    step: int = 0
    generator: torch.Tensor | None = None
    loss_sum: float = 0.0
    points: int = 0

    def payload(self) -> dict:
        return {
            "epoch": self.epoch, "step": self.step, "batch_generator": self.generator,
            "epoch_loss_sum": self.loss_sum, "epoch_points": self.points,
        }


def _save(run: RunDir | None, state: TrainingState, position: _Position, config: dict | None = None) -> None:
    if run is not None:
        extra = {"config": config} if config is not None else {}
        run.save_checkpoint({**position.payload(), **state.state_dict(), "rng": capture_rng_state(), **extra})


def _changed_keys(saved: dict, config: dict, prefix: str = "") -> list[str]:
    """The keys outside ``train`` whose values differ between two config mappings (keys that one of them
    leaves out, to their defaults, are not compared)."""
    out = []
    for key in sorted(set(saved) & set(config)):
        where = f"{prefix}{key}"
        if where in ("train", "run"):
            continue
        a, b = saved.get(key), config.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_keys(a, b, where + ".")
        elif a != b:
            out.append(f"{where} ({a!r} in the checkpoint, {b!r} now)")
    return out


def _restore(run: RunDir, state: TrainingState, device: torch.device, train: TrainConfig, config: dict | None) -> _Position:
    saved = run.load_checkpoint(map_location=device)
    if saved["epoch"] > train.epochs:
        raise ConfigError(
            f"{run.path} has done {saved['epoch']} epochs, more than train.epochs={train.epochs}; resume with "
            f"train.epochs of at least {saved['epoch']} (the run's config.yaml is left as it was)"
        )
    changed = _changed_keys(saved["config"], config) if config is not None and "config" in saved else []
    if changed:
        raise ConfigError(
            f"the config of {run.path} differs from the one its checkpoint was trained with in {'; '.join(changed)}; "
            "a resumed run may change train.* only: restore config.yaml, or start a new run"
        )
    state.load_state_dict(saved, str(run.path))
    restore_rng_state(saved["rng"])
    run.truncate_metrics(saved["epoch"])
    return _Position(saved["epoch"], saved["step"], saved.get("batch_generator"), saved.get("epoch_loss_sum", 0.0), saved.get("epoch_points", 0))


# -- the loop ---------------------------------------------------------------------------------------


class _Stepper:
    """One optimizer step: validation for the first steps only, and a clear error for a non-finite loss."""

    def __init__(self, state: TrainingState, train: TrainConfig, run: RunDir | None) -> None:
        self.state, self.train, self.run = state, train, run
        self.steps_run = 0
        self.param_count = state.param_count()

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor | None, epoch: int, step: int) -> float:
        # The data were checked up front and non-finite losses are caught below, so after the first steps
        # Pyro's per-sample argument checks only cost time (about 20% of a step).
        validating = self.train.validate_steps < 0 or self.steps_run < self.train.validate_steps
        self.steps_run += 1
        state = self.state
        try:
            with poutine.scale(scale=1.0 / xb.shape[0]), (
                nullcontext() if validating else pyro.validation_enabled(False)
            ), warnings.catch_warnings():
                # A NaN loss gets a clear error below; Pyro's own warning would only repeat it.
                warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
                loss = float(state.estimator.loss_and_grads(state.model, state.guide, xb, yb))
        except ValueError as err:
            # Pyro's validation rejects non-finite distribution parameters before a loss exists.
            if "found invalid values" not in str(err) and all(bool(torch.isfinite(p).all()) for p in state.params):
                raise
            loss = float("nan")
        if not math.isfinite(loss):
            raise self._diverged(f"the loss became {loss}", epoch, step)
        if self.steps_run == 1 and state.param_count() != self.param_count:
            raise ConfigError(
                "the model or guide created parameters during the first training step that did not exist after a "
                "first call on two points; create every parameter on the first call"
            )
        try:
            state.optimizer.step()
        except RuntimeError as err:
            if "overflow" not in str(err):
                raise
            raise self._diverged("the optimizer's step overflowed", epoch, step) from None
        state.optimizer.zero_grad(set_to_none=True)
        return loss

    def _diverged(self, what: str, epoch: int, step: int) -> NonFiniteLossError:
        kept = f"; the last good checkpoint is kept in {self.run.path}" if self.run and self.run.has_checkpoint() else ""
        lr = self.state.optimizer.param_groups[0]["lr"]
        return NonFiniteLossError(
            f"{what} at epoch {epoch + 1}, step {step + 1}{kept}. Try a lower optim.lr (now {lr:g}), "
            "optim.name: clipped_adam, or check the data"
        )


def _epoch_metrics(state: TrainingState, data: Dataset, train: TrainConfig, epoch: int, position: _Position, seconds: float) -> dict:
    metrics = {
        "epoch": epoch + 1,
        "train_loss": position.loss_sum / max(position.points, 1),
        "lr": state.optimizer.param_groups[0]["lr"],
        "epoch_time_s": seconds,
    }
    if train.val_every and (epoch + 1) % train.val_every == 0 and data.x_val.shape[0] > 0:
        val_config = EvalConfig(num_samples=train.val_num_samples, batch_size=max(train.batch_size, 100), seed=train.seed + epoch)
        val = evaluate(state.model, state.guide, data.x_val, conditioning_labels(state.model, data.y_val), val_config)
        metrics["val_elbo"], metrics["val_elbo_stderr"] = val.elbo, val.elbo_stderr
        if train.val_num_samples > 1:
            metrics["val_log_likelihood"] = val.log_likelihood
    if capability(state.guide, Classifier) is not None:
        for split in ("val", "test"):
            x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
            if x.shape[0] and y is not None:
                metrics[f"{split}_accuracy"] = classification_accuracy(state.guide, x, y)
    return metrics


def _summary(metrics: dict, epochs: int) -> str:
    line = f"epoch {metrics['epoch']}/{epochs}  train loss {metrics['train_loss']:.3f}"
    if "val_elbo" in metrics:
        line += f"  val ELBO {metrics['val_elbo']:.3f}"
    if "test_accuracy" in metrics:
        line += f"  test error {100 * (1 - metrics['test_accuracy']):.2f}%"
    return line


def _interrupted(loop: "_Loop", where: str) -> FitInterrupted:
    run = loop.run
    received = loop.stopper.received if loop.stopper is not None else None
    by = " by SIGTERM" if received == signal.SIGTERM else ""
    resume = f"; resume with: ppl-vae fit --resume {run.path}" if run else ""
    err = FitInterrupted(f"interrupted{by} {where}{resume}", str(run.path) if run else None)
    err.signal = received  # the CLI exits with 128 + the signal's number
    return err


@dataclass
class _Loop:
    """What every part of the loop needs: the state, the batches, the data, the run and the callbacks."""

    state: TrainingState
    batches: object
    data: Dataset
    run: RunDir | None
    train: TrainConfig
    callbacks: Sequence[Callback]
    ctx: FitContext
    config: dict | None = None  #: the run's config mapping, stored in every checkpoint
    bar: object = None
    stopper: object = None


def _run_steps(loop: _Loop, stepper: _Stepper, epoch: int, position: _Position) -> None:
    """One epoch's steps from ``position``; on a stop request, a checkpoint at the next step, then FitInterrupted."""
    batches = loop.batches
    for step, xb, yb in batches.epoch(epoch, position.step, position.generator):
        loop.ctx.step = step
        loss = stepper(xb, yb, epoch, step)
        position.loss_sum, position.points = position.loss_sum + loss * xb.shape[0], position.points + xb.shape[0]
        loop.bar.update(1)
        if step % 10 == 0 or step == len(batches) - 1:
            loop.bar.set_postfix(epoch=epoch + 1, loss=f"{position.loss_sum / position.points:.3f}", refresh=False)
        for cb in loop.callbacks:
            cb.on_step(loop.ctx, loss)
        if loop.ctx.stop_requested and step + 1 < len(batches):
            generator = batches.generator.get_state()
            _save(loop.run, loop.state, _Position(epoch, step + 1, generator, position.loss_sum, position.points), loop.config)
            raise _interrupted(loop, f"at epoch {epoch + 1}, step {step + 1}")


def _end_epoch(loop: _Loop, epoch: int, position: _Position, seconds: float) -> dict:
    """The schedule's step, the epoch's metrics (to the callbacks, the bar and the run), and the checkpoint."""
    loop.state.scheduler.step()
    metrics = _epoch_metrics(loop.state, loop.data, loop.train, epoch, position, seconds)
    for cb in loop.callbacks:
        cb.on_epoch_end(loop.ctx, metrics)
    train, done = loop.train, epoch + 1
    if train.progress and ("val_elbo" in metrics or "test_accuracy" in metrics or done == train.epochs):
        loop.bar.write(_summary(metrics, train.epochs))
    if loop.run is not None:
        loop.run.append_metrics(metrics)
        if done % train.checkpoint_every == 0 or done == train.epochs or loop.ctx.stop_requested:
            _save(loop.run, loop.state, _Position(done), loop.config)
    return metrics


def _run_epochs(loop: _Loop, position: _Position) -> list[dict]:
    """The loop: each epoch's steps, then its metrics and checkpoint. Returns the metrics rows."""
    history, stepper, train = [], _Stepper(loop.state, loop.train, loop.run), loop.train
    total = train.epochs * len(loop.batches)
    done = min(total, position.epoch * len(loop.batches) + position.step)
    loop.bar = tqdm(total=total, initial=done, disable=not train.progress, unit="step", dynamic_ncols=True)
    loop.stopper = _StopOnSignal(loop.ctx)
    with loop.bar, loop.stopper:
        for epoch in range(position.epoch, train.epochs):
            loop.ctx.epoch, t0 = epoch, time.perf_counter()
            _run_steps(loop, stepper, epoch, position)
            history.append(_end_epoch(loop, epoch, position, time.perf_counter() - t0))
            position = _Position(epoch + 1)
            if loop.ctx.stop_requested and epoch + 1 < train.epochs:
                raise _interrupted(loop, f"after epoch {epoch + 1}")
    return history


def fit(
    model,
    guide,
    data: Dataset | torch.Tensor,
    *,
    estimator: EstimatorConfig | str | ELBO | None = None,
    optim: OptimConfig | None = None,
    train: TrainConfig | None = None,
    run_dir: RunDir | str | os.PathLike | None = None,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    labelled_per_batch: int | None = None,
    run_config: dict | None = None,
) -> FitResult:
    r"""Train ``model`` and ``guide`` by stochastic variational inference.

    Each step maximises the estimator's bound on a mini-batch; the loss shown and
    recorded is the negative bound in nats per data point.

    .. math::

        \mathcal{L}(\theta, \phi) = \frac{1}{B} \sum_{i=1}^{B}
        \mathbb{E}_{q_\phi(z|x_i)}\left[\log p_\theta(x_i, z) - \log q_\phi(z|x_i)\right]

    :param model: a Pyro model ``model(x, y=None)``: a ``PyroModule`` or a function (see :mod:`ppl_vae.contract`).
    :param guide: a Pyro guide with the same signature.
    :param data: a :class:`~ppl_vae.data.Dataset`, or a tensor ``(N, *x_shape)`` of training data.
    :param estimator: an :class:`EstimatorConfig`, a registry name, or a Pyro ELBO. Defaults to ``"trace"``.
    :param OptimConfig optim: optimizer and schedule. Defaults to Adam with lr 1e-3.
    :param TrainConfig train: epochs, batch size, seed, device, validation.
    :param run_dir: where to write metrics and checkpoints (created when missing); None keeps everything
        in memory. Everything that can be checked is checked before it is created. Without a
        ``config.yaml`` there, one is written that the CLI can reopen (:mod:`ppl_vae.inference.record`).
    :param bool resume: continue from the checkpoint in ``run_dir``.
    :param callbacks: :class:`Callback` objects.
    :param int labelled_per_batch: semi-supervised data only (training labels -1 where hidden, see
        :func:`ppl_vae.labelled.hide_labels`): draw :class:`~ppl_vae.labelled.MixedBatches` with this many
        labelled points per batch. None: plain shuffled batches.
    :param dict run_config: the run's config mapping: written to ``config.yaml`` (on a resume, after the
        checkpoint has been checked against it: only ``train`` may differ), and stored in every checkpoint;
        None records one from the objects (:func:`~ppl_vae.inference.record.record_config`) for a new run.

    When the guide has a classifier q(y|x) (M2's) and the data have labels, every epoch also records
    ``val_accuracy`` and ``test_accuracy``.

    :raises ConfigError: for an estimator that cannot train the model and guide, or a model or guide that
        breaks the contract, before anything is written.
    :raises NonFiniteLossError: when the loss becomes NaN or inf; the last good checkpoint is kept.
    :raises FitInterrupted: on Ctrl-C or ``request_stop``, after writing a checkpoint.
    """
    optim, train = optim or OptimConfig(), train or TrainConfig()
    data, run = _as_dataset(data), _open_run(run_dir, resume)
    model, guide = as_modules(model, guide)
    elbo, device = make_estimator(estimator), resolve_device(train.device)
    check_data(model, data)
    data = data.to(device)
    batches = _batches(data, train, labelled_per_batch)
    with pyro.get_param_store().scope():
        if not resume:
            pyro.set_rng_seed(train.seed)
        state = _prepare(model, guide, elbo, data, device, optim, train)
        with run.lock() if run is not None else nullcontext():
            config = _record(run, resume, run_config, lambda: record_config(model, guide, data, elbo, optim, train))
            position = _restore(run, state, device, train, run_config) if resume else _Position()
            if run is not None and (resume and run_config is not None or not run.config_path.is_file()):
                run.write_config(config)
            for m in state.modules:
                m.train()
            ctx = FitContext(state.model, state.guide, state.estimator)
            history = _run_epochs(_Loop(state, batches, data, run, train, callbacks, ctx, config), position)
    final = history[-1]["train_loss"] if history else float("nan")
    return FitResult(history, max(position.epoch, train.epochs), str(device), run, final, state.model, state.guide)


def _record(run: RunDir | None, resume: bool, run_config: dict | None, recorded) -> dict | None:
    """The run's config mapping: the one given, else the run's own (a resume), else one recorded from the objects."""
    if run is None:
        return run_config
    if run_config is not None:
        return run_config
    if resume and run.config_path.is_file():
        return run.read_config()
    return recorded()


def _prepare(model, guide, elbo: ELBO, data: Dataset, device: torch.device, optim: OptimConfig, train: TrainConfig) -> TrainingState:
    """Move to the device, create lazy parameters, check the estimator and collect the training state."""
    for m in (model, guide):
        m.to(device)
    instantiate(model, guide, *training_example(data), without_labels=is_semi_supervised(data.y_train))
    for m in (model, guide):
        m.to(device)  # parameters created by the first call, on whatever device the user code chose
    _check_estimator_fits(elbo, model, guide, data)
    state = TrainingState.create(model, guide, elbo, optim, train.epochs)
    if state.estimator_state is not None:
        state.estimator_state.to(device)
    return state
