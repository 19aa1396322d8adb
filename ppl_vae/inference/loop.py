"""The training loop of :func:`~ppl_vae.inference.fit.fit`: steps, epochs, metrics, checkpoints and stops.

The loop reads as :func:`run_epochs`: for each epoch, :func:`run_steps` (each step a :class:`Stepper` call),
then :func:`end_epoch` (the schedule, the epoch's metrics, the checkpoint). A stop request (a callback,
Ctrl-C or SIGTERM) writes a checkpoint at the next step, so the run resumes bit for bit from where it stopped
(:func:`restore`).
"""

from __future__ import annotations

import math
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

from ..contract import Classifier, ReportsTerms, capability, estimator_chain
from ..data import Dataset
from ..errors import ConfigError, FitInterrupted, NonFiniteLossError
from ..runs import RunDir, capture_rng_state, restore_rng_state
from ..schema import documented
from .distributed import SINGLE, World, any_rank, broadcast_buffers, gather_objects, sum_gradients
from .evaluate import EvalConfig, conditioning_labels, evaluate
from .semisup import classification_accuracy
from .terms import TermRecorder
from .training import TrainConfig, TrainingState

__all__ = ["Callback", "FitContext", "Position", "run_epochs", "restore"]


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


@dataclass
class Position:
    """Where a run stands: the epoch and step to run next, the batch generator, the epoch's running loss."""

    epoch: int = 0
    step: int = 0
    generator: torch.Tensor | None = None
    loss_sum: float = 0.0
    points: int = 0
    terms: dict = field(default_factory=dict)  #: each penalty term's sum over the epoch's points so far

    def payload(self) -> dict:
        return {
            "epoch": self.epoch, "step": self.step, "batch_generator": self.generator,
            "epoch_loss_sum": self.loss_sum, "epoch_points": self.points, "epoch_terms": dict(self.terms),
        }


def save(run: RunDir | None, state: TrainingState, position: Position, config: dict | None = None, world: World = SINGLE) -> None:
    """Write a checkpoint (rank 0, the only one given a ``run``); with several ranks, a collective that also
    stores every rank's RNG states, so that each resumes its own."""
    rng = gather_objects(capture_rng_state(), world)
    if run is not None:
        extra = {"config": config} if config is not None else {}
        ranks = {"rng_ranks": rng} if world.distributed else {}
        payload = {**position.payload(), **state.state_dict(), "rng": rng[0], "world_size": world.size, **ranks, **extra}
        run.save_checkpoint(payload)


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


def restore(
    run: RunDir, state: TrainingState, device: torch.device, train: TrainConfig, config: dict | None, world: World = SINGLE
) -> Position:
    saved = run.load_checkpoint(map_location=device)
    trained_by = saved.get("world_size", 1)
    if trained_by != world.size:
        how = "ppl-vae fit --resume" if trained_by == 1 else f"torchrun --nproc-per-node {trained_by} -m ppl_vae.cli fit --resume"
        raise ConfigError(
            f"{run.path} was trained by {trained_by} process(es) and this resume has {world.size}; batches and random "
            f"streams are split by process, so resume it with {trained_by} ({how} {run.path})"
        )
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
    restore_rng_state(saved["rng_ranks"][world.rank] if world.distributed else saved["rng"])
    if world.is_main:
        run.truncate_metrics(saved["epoch"])
    return Position(
        saved["epoch"], saved["step"], saved.get("batch_generator"), saved.get("epoch_loss_sum", 0.0),
        saved.get("epoch_points", 0), dict(saved.get("epoch_terms", {})),
    )


# -- the loop ---------------------------------------------------------------------------------------


class Stepper:
    """One optimizer step: validation for the first steps only, and a clear error for a non-finite loss."""

    def __init__(self, state: TrainingState, train: TrainConfig, run: RunDir | None, world: World = SINGLE) -> None:
        self.state, self.train, self.run, self.world = state, train, run, world
        self.steps_run = 0
        self.stop_agreed = False
        self.terms: dict[str, float] = {}  #: the last step's penalty terms (see inference/terms.py)
        self.param_count = state.param_count()

    def __call__(
        self, xb: torch.Tensor, yb: torch.Tensor | None, epoch: int, step: int, points: int | None = None, stop: bool = False
    ) -> float:
        """One step on ``xb`` (this rank's share of a batch of ``points`` points, all of it in one process);
        returns the batch's loss in nats per point. ``stop`` (a stop was requested here) is shared with the
        other ranks in the gradients' collective; ``stop_agreed`` then says whether any rank asked."""
        # The data were checked up front and non-finite losses are caught below, so after the first steps
        # Pyro's per-sample argument checks only cost time (about 20% of a step).
        validating = self.train.validate_steps < 0 or self.steps_run < self.train.validate_steps
        self.steps_run += 1
        state = self.state
        loss = self._loss_and_grads(xb, yb, points or xb.shape[0], validating)
        # Several ranks: the whole batch's loss and gradients, and whether any rank was asked to stop.
        loss, self.stop_agreed = sum_gradients(state.params, loss, self.world, stop)
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
        broadcast_buffers(state.modules, self.world)
        return loss

    def _loss_and_grads(self, xb: torch.Tensor, yb: torch.Tensor | None, points: int, validating: bool) -> float:
        state = self.state
        if xb.shape[0] == 0:  # a rank's empty share of a last batch smaller than the number of ranks
            return 0.0
        try:
            recorder = TermRecorder()
            with poutine.scale(scale=1.0 / points), (
                nullcontext() if validating else pyro.validation_enabled(False)
            ), warnings.catch_warnings(), recorder:
                # A NaN loss gets a clear error below; Pyro's own warning would only repeat it.
                warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
                loss = float(state.estimator.loss_and_grads(state.model, state.guide, xb, yb))
            self.terms = {**recorder.means(), **_estimator_terms(state.estimator)}
            return loss
        except ValueError as err:
            # Pyro's validation rejects non-finite distribution parameters before a loss exists.
            if "found invalid values" not in str(err) and all(bool(torch.isfinite(p).all()) for p in state.params):
                raise
            return float("nan")

    def _diverged(self, what: str, epoch: int, step: int) -> NonFiniteLossError:
        kept = f"; the last good checkpoint is kept in {self.run.path}" if self.run and self.run.has_checkpoint() else ""
        lr = self.state.optimizer.param_groups[0]["lr"]
        return NonFiniteLossError(
            f"{what} at epoch {epoch + 1}, step {step + 1}{kept}. Try a lower optim.lr (now {lr:g}), "
            "optim.name: clipped_adam, or check the data"
        )


def _estimator_terms(estimator: ELBO) -> dict[str, float]:
    """The named terms of the last step that estimators in the chain report themselves (:class:`ReportsTerms`)."""
    terms: dict[str, float] = {}
    for e in estimator_chain(estimator):
        reports = capability(e, ReportsTerms)
        if reports is not None:
            terms.update(reports.last_terms)
    return terms


def _epoch_metrics(state: TrainingState, data: Dataset, train: TrainConfig, epoch: int, position: Position, seconds: float) -> dict:
    metrics = {
        "epoch": epoch + 1,
        "train_loss": position.loss_sum / max(position.points, 1),
        "lr": state.optimizer.param_groups[0]["lr"],
        "epoch_time_s": seconds,
        **{f"term_{name}": total / max(position.points, 1) for name, total in sorted(position.terms.items())},
    }
    if train.val_every and (epoch + 1) % train.val_every == 0 and data.x_val.shape[0] > 0:
        val_config = EvalConfig(num_samples=train.val_num_samples, batch_size=max(train.batch_size, 100), seed=train.seed + epoch)
        val = evaluate(state.model, state.guide, data.x_val, conditioning_labels(state.model, data.y_val), val_config)
        metrics["val_elbo"], metrics["val_elbo_stderr"] = val.elbo, val.elbo_stderr
        if train.val_num_samples > 1 and val.reconstruction is None:  # a point-mass guide has no log p(x)
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


def _interrupted(loop: "Loop", where: str) -> FitInterrupted:
    run = loop.run
    received = loop.stopper.received if loop.stopper is not None else None
    by = " by SIGTERM" if received == signal.SIGTERM else ""
    again = f"torchrun --nproc-per-node {loop.world.size} -m ppl_vae.cli fit" if loop.world.distributed else "ppl-vae fit"
    resume = f"; resume with: {again} --resume {run.path}" if run else ""
    err = FitInterrupted(f"interrupted{by} {where}{resume}", str(run.path) if run else None)
    err.signal = received  # the CLI exits with 128 + the signal's number
    return err


@dataclass
class Loop:
    """What every part of the loop needs: the state, the batches, the data, the run and the callbacks."""

    state: TrainingState
    batches: object
    data: Dataset
    run: RunDir | None
    train: TrainConfig
    callbacks: Sequence[Callback]
    ctx: FitContext
    config: dict | None = None  #: the run's config mapping, stored in every checkpoint
    world: World = SINGLE  #: the training processes; only rank 0 is given the run to write
    bar: object = None
    stopper: object = None

    def stopping(self, agreed: bool | None = None) -> bool:
        """Whether a stop was requested (on any rank: every rank then stops at the same step).

        :param agreed: what the ranks agreed in the last step's gradient collective (``Stepper.stop_agreed``);
            several ranks then need no collective of their own, and a request made on some rank during a step
            stops every rank one step later.
        """
        if agreed is not None and self.world.distributed:
            self.ctx.stop_requested = self.ctx.stop_requested or agreed
            return agreed
        stop = any_rank(self.ctx.stop_requested, self.world)
        self.ctx.stop_requested = self.ctx.stop_requested or stop
        return stop


def run_steps(loop: Loop, stepper: Stepper, epoch: int, position: Position) -> None:
    """One epoch's steps from ``position``; on a stop request, a checkpoint at the next step, then FitInterrupted."""
    batches = loop.batches
    for step, xb, yb in batches.epoch(epoch, position.step, position.generator):
        loop.ctx.step = step
        points = batches.batch_points(step)
        loss = stepper(xb, yb, epoch, step, points, loop.ctx.stop_requested)
        position.loss_sum, position.points = position.loss_sum + loss * points, position.points + points
        for name, value in stepper.terms.items():
            position.terms[name] = position.terms.get(name, 0.0) + value * points
        loop.bar.update(1)
        if step % 10 == 0 or step == len(batches) - 1:
            loop.bar.set_postfix(epoch=epoch + 1, loss=f"{position.loss_sum / position.points:.3f}", refresh=False)
        for cb in loop.callbacks:
            cb.on_step(loop.ctx, loss)
        if step + 1 < len(batches) and loop.stopping(stepper.stop_agreed):
            generator = batches.generator.get_state()
            save(loop.run, loop.state, Position(epoch, step + 1, generator, position.loss_sum, position.points, dict(position.terms)), loop.config, loop.world)
            raise _interrupted(loop, f"at epoch {epoch + 1}, step {step + 1}")


def end_epoch(loop: Loop, epoch: int, position: Position, seconds: float) -> dict:
    """The schedule's step, the epoch's metrics (to the callbacks, the bar and the run), and the checkpoint."""
    loop.state.scheduler.step()
    metrics = _epoch_metrics(loop.state, loop.data, loop.train, epoch, position, seconds)
    for cb in loop.callbacks:
        cb.on_epoch_end(loop.ctx, metrics)
    train, done = loop.train, epoch + 1
    if train.progress and loop.world.is_main and ("val_elbo" in metrics or "test_accuracy" in metrics or done == train.epochs):
        loop.bar.write(_summary(metrics, train.epochs))
    if loop.run is not None:
        loop.run.append_metrics(metrics)
    checkpointing = loop.run is not None or loop.world.distributed  # rank 0 writes; the others join the collective
    if checkpointing and (loop.stopping() or done % train.checkpoint_every == 0 or done == train.epochs):
        save(loop.run, loop.state, Position(done), loop.config, loop.world)
    return metrics


def run_epochs(loop: Loop, position: Position) -> list[dict]:
    """The loop: each epoch's steps, then its metrics and checkpoint. Returns the metrics rows."""
    history, stepper, train = [], Stepper(loop.state, loop.train, loop.run, loop.world), loop.train
    total = train.epochs * len(loop.batches)
    done = min(total, position.epoch * len(loop.batches) + position.step)
    loop.bar = tqdm(total=total, initial=done, disable=not (train.progress and loop.world.is_main), unit="step", dynamic_ncols=True)
    loop.stopper = _StopOnSignal(loop.ctx)
    with loop.bar, loop.stopper:
        for epoch in range(position.epoch, train.epochs):
            loop.ctx.epoch, t0 = epoch, time.perf_counter()
            run_steps(loop, stepper, epoch, position)
            history.append(end_epoch(loop, epoch, position, time.perf_counter() - t0))
            position = Position(epoch + 1)
            if epoch + 1 < train.epochs and loop.stopping():
                raise _interrupted(loop, f"after epoch {epoch + 1}")
    return history
