"""From a config to trained objects: build the data, model, guide and training objective; fit; reload a run.

This is the glue the CLI and scripts share; it holds no training logic of its own (that is
:func:`ppl_vae.inference.fit`). Progress messages go to the ``ppl_vae`` logger; only the CLI prints.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Sequence

import pyro
from pyro.infer import ELBO
from torch import nn

from .config import ExperimentConfig, config_from_dict, config_to_dict, override_config
from .contract import needs_labels
from .data import Dataset, load_dataset
from .errors import CheckpointError, ConfigError, RunDirError
from .guides import make_guide
from .inference.adversarial import Adversarial_ELBO
from .inference.estimators import make_estimator
from .inference.evaluate import conditioning_labels
from .inference.fit import Callback, FitResult, fit
from .inference.objectives import kl_weighted
from .inference.semisup import (
    SemiSupervised_ELBO,
    kingma_aux_weight,
    unbiased_labelled_weight,
)
from .inference.distributed import env_world
from .inference.training import instantiate, mismatch, resolve_device
from .labelled import hide_labels, is_semi_supervised, training_example
from .models import make_model
from .programs import seeded
from .runs import RunDir
from .schema import documented
from .stacked import init_from_stages, stage_dir, train_stages
from .stages import m1_features, resumable_stage, stage_config, stage_run

__all__ = [
    "Experiment",
    "build_experiment",
    "fit_experiment",
    "load_run",
    "resume_experiment",
    "training_estimator",
    "conditioning_labels",
]

log = logging.getLogger("ppl_vae")


@documented
@dataclass
class Experiment:
    """A config with its data, model and guide built."""

    config: ExperimentConfig
    data: Dataset
    model: nn.Module
    guide: nn.Module
    #: M1+M2: the trained first stage, whose codes ``data`` holds (not images)
    stage: "Experiment | None" = None


def _load_data(config: ExperimentConfig, data_dir, run_dir: RunDir | None, m1: Experiment | None) -> tuple[Dataset, Experiment | None]:
    data = load_dataset(config.data, data_dir)
    if config.m1 is not None:
        if m1 is None and run_dir is None:
            raise ConfigError(
                "an M1+M2 config trains its M2 stage on the codes of a trained M1: fit it with ppl-vae fit "
                "(which trains both stages), or pass the trained M1 experiment"
            )
        if m1 is None:
            m1 = load_run(stage_run(run_dir), data_dir=data_dir, device="cpu", config=stage_config(config))
        data = m1_features(m1.guide, m1.data, data)
    if config.semi_supervised.enabled:
        data = hide_labels(data, config.semi_supervised.num_labels, config.semi_supervised.seed)
    return data, m1


def build_experiment(
    config: ExperimentConfig,
    data_dir: str | os.PathLike | None = None,
    *,
    run_dir: RunDir | None = None,
    m1: Experiment | None = None,
    data: Dataset | None = None,
) -> Experiment:
    """Load the data and build the model and guide, their networks seeded by ``config.train.seed``.

    With ``semi_supervised.num_labels`` set, all but that many training labels are hidden. An M1+M2
    config (``m1:`` section) replaces the data by the latent codes of the trained M1 stage: ``m1``,
    or the one saved in ``run_dir/m1``. ``data`` replaces the loaded data (a run trained from Python
    on a tensor).
    """
    if data is None:
        data, m1 = _load_data(config, data_dir, run_dir, m1)
    with seeded(config.train.seed):
        model = make_model(config.model.name, data.x_shape, config.model.config)
        x = data.x_train[:2]
        y = data.y_train[:2] if data.y_train is not None and needs_labels(model) else None
        guide = make_guide(config.guide.name, model, config.guide.config, x=x, y=y)
    return Experiment(config, data, model, guide, m1)


def training_estimator(config: ExperimentConfig, data: Dataset | None = None) -> ELBO:
    """The training objective of a config, assembled in this one place: the estimator, wrapped in a KL
    weighting (beta, annealing, free bits) when the config asks for one, and in
    :class:`~ppl_vae.inference.semisup.SemiSupervised_ELBO` for semi-supervised training. With an
    ``adversarial:`` section, the adversarial autoencoder's objective, which replaces the estimator."""
    if config.adversarial is not None:
        return adversarial_objective(config)
    estimator = make_estimator(config.estimator)
    if not config.kl_weighting.is_elbo:
        estimator = kl_weighted(estimator, config.kl_weighting)
    ss = config.semi_supervised
    if ss.enabled:
        if data is None:
            raise ValueError("a semi-supervised objective needs the data, to weigh the labelled terms")
        num_train = len(data.x_train)
        aux = ss.aux_weight if ss.aux_weight is not None else kingma_aux_weight(num_train, ss.num_labels)
        labelled = ss.labelled_weight
        if labelled is None:
            labelled = unbiased_labelled_weight(num_train, ss.num_labels, config.train.batch_size, ss.labelled_per_batch)
        estimator = SemiSupervised_ELBO(estimator, aux, labelled)
    return estimator


def adversarial_objective(config: ExperimentConfig) -> ELBO:
    """The adversarial autoencoder's objective of a config, refusing the sections it cannot be combined with."""
    sections = (("kl_weighting", not config.kl_weighting.is_elbo), ("semi_supervised", config.semi_supervised.enabled))
    clashes = [name for name, on in sections if on]
    if clashes:
        raise ConfigError(f"the adversarial: objective replaces the KL term, so it takes no {' or '.join(clashes)} section; remove it")
    return Adversarial_ELBO(config.adversarial)


def _train_stage(config: ExperimentConfig, run_dir: RunDir | None, data_dir, resume: bool) -> Experiment:
    """Stage 1 of an M1+M2 config, in ``run_dir/m1`` (resumed, or skipped once done)."""
    load_dataset(config.data, data_dir)  # a missing data set fails here, before anything is written
    m1_run = stage_run(run_dir)
    if run_dir is not None and env_world().is_main:  # in data-parallel training, rank 0 writes the run
        run_dir.path.mkdir(parents=True, exist_ok=True)
        run_dir.write_config(config_to_dict(config))
    m1_resume = bool(resume and m1_run is not None and m1_run.has_checkpoint())
    log.info("stage 1 of 2: M1, trained on the images%s", " (resumed)" if m1_resume else "")
    with resumable_stage(run_dir, "stage 1 (M1)"):
        m1, _ = fit_experiment(stage_config(config), m1_run, data_dir=data_dir, resume=m1_resume)
    log.info("stage 2 of 2: M2, trained on M1's latent codes")
    return m1


def _train_stack(config: ExperimentConfig, run_dir: RunDir | None, data_dir, resume: bool):
    """The layer-wise stages of a stacked config, in ``run_dir/stage_k`` (each resumed, or reloaded once done)."""
    data = load_dataset(config.data, data_dir)  # a missing data set fails here, before anything is written
    if run_dir is not None and env_world().is_main:
        run_dir.path.mkdir(parents=True, exist_ok=True)
        run_dir.write_config(config_to_dict(config))
    return train_stages(config, data, run_dir, resume)


def fit_experiment(
    config: ExperimentConfig,
    run_dir: RunDir | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
) -> tuple[Experiment, FitResult]:
    """Build and train a config; a new run directory gets the resolved config once training can start.

    With ``resume``, continue from the checkpoint in ``run_dir`` instead of starting afresh. An
    M1+M2 config trains its M1 stage first, in ``run_dir/m1`` (resumed or skipped once done); a stacked
    config (``stack:``) its layer-wise stages, in ``run_dir/stage_k``, then fine-tunes the whole.
    """
    m1 = _train_stage(config, run_dir, data_dir, resume) if config.m1 is not None else None
    stages = _train_stack(config, run_dir, data_dir, resume) if config.stack is not None else None
    exp = build_experiment(config, data_dir, run_dir=run_dir, m1=m1)
    ss = config.semi_supervised
    resume = bool(resume and run_dir is not None and run_dir.has_checkpoint())
    if config.prior is not None:
        log.info("stage 1 of 2: the VQ-VAE%s", " (resumed)" if resume else "")
    if stages is not None and not resume:
        init_from_stages(exp.model, exp.guide, stages)  # fine-tuning starts from the stages' weights
    result = fit(
        exp.model, exp.guide, exp.data, estimator=training_estimator(config, exp.data), optim=config.optim,
        train=config.train, run_dir=run_dir, resume=resume,
        callbacks=callbacks, labelled_per_batch=ss.labelled_per_batch if ss.enabled else None,
        run_config=config_to_dict(config),
    )
    if config.prior is not None:
        _train_code_prior(exp, result, run_dir, resume)
    return exp, result


def _train_code_prior(exp: Experiment, result: FitResult, run_dir: RunDir | None, resume: bool) -> None:
    """A VQ-VAE config's second stage (``prior:``): the PixelCNN prior over its codes, in ``run_dir/prior``.

    Skipped once trained on this VQ-VAE (same settings, same epochs), resumed when interrupted, and trained
    afresh when the VQ-VAE has trained further since (its codes changed). The model samples from it after.
    """
    from .inference.code_prior import fit_code_prior, load_code_prior, prior_is_current

    source = {"vqvae_epochs": int(result.epochs_done)}
    device = exp.model.codebook.device
    if run_dir is not None and prior_is_current(run_dir, exp.config.prior, source):
        log.info("code prior: already trained on this VQ-VAE's codes (%s)", run_dir.path / "prior")
        exp.model.set_code_prior(load_code_prior(run_dir, device=device))
        return
    log.info("stage 2 of 2: the PixelCNN prior over the VQ-VAE's codes")
    with resumable_stage(run_dir, "stage 2 (the code prior)"):
        prior, metrics = fit_code_prior(exp.model, exp.guide, exp.data, exp.config.prior, run_dir=run_dir, resume=resume, source=source)
    val = f", validation {metrics['val_bpd']:.4f}" if "val_bpd" in metrics else ""
    log.info("code prior: training %.4f bits per code%s (uniform %.4f)", metrics["train_bpd"][-1], val, metrics["uniform_bpd"])
    exp.model.set_code_prior(prior)


def resume_experiment(
    run_dir: RunDir,
    overrides: Sequence[str] = (),
    *,
    data_dir: str | os.PathLike | None = None,
    callbacks: Sequence[Callback] = (),
) -> tuple[Experiment, FitResult]:
    """Continue the run in ``run_dir`` from its checkpoint; only ``train.*`` may be overridden."""
    for item in overrides:
        if not item.startswith("train."):
            raise ConfigError(f"--set {item!r}: a resumed run may change only train.* settings")
    config = override_config(run_dir.read_config(), overrides)
    if config.run.hand_built_estimator or config.run.python_data:
        what = "data passed as a tensor" if config.run.python_data else f"a hand-built estimator ({config.run.hand_built_estimator})"
        raise ConfigError(f"{run_dir.path} was trained from Python with {what}; resume it from Python with fit(..., resume=True)")
    stage = stage_run(run_dir) if config.m1 is not None else stage_dir(run_dir, 0) if config.stack is not None else None
    if not run_dir.has_checkpoint() and not (stage is not None and stage.has_checkpoint()):
        raise CheckpointError(
            f"cannot resume {run_dir.path}: it has no checkpoint ({run_dir.CHECKPOINT} is missing), as a run killed "
            f"before its first checkpoint; start it again with: ppl-vae fit {run_dir.config_path}"
        )
    return fit_experiment(config, run_dir, data_dir=data_dir, callbacks=callbacks, resume=True)


def load_run(
    run_dir: str | os.PathLike | RunDir,
    *,
    data_dir: str | os.PathLike | None = None,
    device: str = "auto",
    config: ExperimentConfig | None = None,
    data: Dataset | None = None,
) -> Experiment:
    """Rebuild a run's data, model and guide and load the trained parameters from its checkpoint.

    :param data: the data of a run trained from Python on a tensor (which the run cannot reload).
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    config = config or config_from_dict(run.read_config())
    if config.run.python_data and data is None:
        raise RunDirError(
            f"{run.path} was trained from Python on data passed as a tensor, which it cannot reload; "
            "reopen it from Python with ppl_vae.load_run(run, data=the_same_data)"
        )
    if data is not None and not isinstance(data, Dataset):
        data = Dataset.from_tensor(data)
    exp = build_experiment(config, data_dir, run_dir=run, data=data)
    target = resolve_device(device)
    state = run.load_checkpoint(map_location=target)
    _load_modules(exp, state, run, target)
    exp.data = exp.data.to(target)
    return exp


def _load_modules(exp: Experiment, state: dict, run: RunDir, device) -> None:
    """Load the trained parameters (after creating those a function model makes on its first call)."""
    x, y = training_example(exp.data)
    with pyro.get_param_store().scope():
        instantiate(exp.model, exp.guide, x, y, without_labels=is_semi_supervised(exp.data.y_train))
    try:
        exp.model.load_state_dict(state["model"])
        exp.guide.load_state_dict(state["guide"])
    except RuntimeError as err:
        raise CheckpointError(f"the checkpoint in {run.path} does not match its config: {mismatch(err)}") from None
    exp.model.to(device)
    exp.guide.to(device)
