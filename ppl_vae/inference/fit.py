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

import os
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

import pyro
import torch
from pyro.infer import ELBO

from ..contract import HasLikelihood, HasXShape, capability, estimator_chain
from ..data import Batches, Dataset, check_finite
from ..errors import (
    CheckpointError,
    ConfigError,
    DataError,
)
from ..labelled import MixedBatches, is_semi_supervised, training_example
from ..programs import as_modules
from ..runs import RunDir
from ..schema import documented
from .checks import check_estimator
from .distributed import World, broadcast_state, init_distributed
from .estimators import EstimatorConfig, make_estimator
from .jit import KeyedJit_ELBO
from .loop import Callback, FitContext, Loop, Position, restore, run_epochs
from .record import record_config
from .semisup import SemiSupervised_ELBO
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


def _batches(data: Dataset, train: TrainConfig, labelled_per_batch: int | None, world: World):
    common = dict(batch_size=train.batch_size, seed=train.seed, binarize=data.binarize == "dynamic", noise=data.train_noise)
    if is_semi_supervised(data.y_train) and labelled_per_batch is not None:
        try:
            batches = MixedBatches(data.x_train, data.y_train, labelled_per_batch=labelled_per_batch, **common)
        except ValueError as err:
            raise ConfigError(f"semi_supervised.labelled_per_batch: {err}") from None
    else:
        batches = Batches(data.x_train, data.y_train, **common)
    return batches.shard(world.rank, world.size)


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
    world = init_distributed(train.device)
    elbo, device = make_estimator(estimator), resolve_device(train.device, world.local_rank if world.distributed else None)
    check_data(model, data)
    data = data.to(device)
    batches = _batches(data, train, labelled_per_batch, world)
    writer = run if world.is_main else None  # rank 0 alone writes the run directory
    with pyro.get_param_store().scope():
        if not resume:
            pyro.set_rng_seed(train.seed)
        state = _prepare(model, guide, elbo, data, device, optim, train)
        _start_ranks(state, train, world, resume)
        with writer.lock() if writer is not None else nullcontext():
            config = _record(writer, resume, run_config, lambda: record_config(model, guide, data, elbo, optim, train))
            position = restore(run, state, device, train, run_config, world) if resume else Position()
            if writer is not None and (resume and run_config is not None or not writer.config_path.is_file()):
                writer.write_config(config)
            for m in state.modules:
                m.train()
            ctx = FitContext(state.model, state.guide, state.estimator)
            history = run_epochs(Loop(state, batches, data, writer, train, callbacks, ctx, config, world), position)
    final = history[-1]["train_loss"] if history else float("nan")
    return FitResult(history, max(position.epoch, train.epochs), str(device), run, final, state.model, state.guide)


def _start_ranks(state: TrainingState, train: TrainConfig, world: World, resume: bool) -> None:
    """Several ranks: every rank starts from rank 0's parameters, and (a new run) draws its own random stream."""
    if not world.distributed:
        return
    broadcast_state(state.modules, world)
    if not resume:
        pyro.set_rng_seed(train.seed + 1_000_003 * (world.rank + 1))


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
