"""From a config to trained objects: build the data, model and guide; fit; reload a run.

This is the glue the CLI and scripts share; it holds no training logic of its
own (that is :func:`ppl_vae.inference.fit`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import pyro
from pyro.nn import PyroModule

from .config import ExperimentConfig, apply_overrides, config_from_dict, config_to_dict
from .data import Dataset, load_dataset
from .errors import CheckpointError, ConfigError
from .guides import make_guide
from .inference.fit import Callback, FitResult, fit, resolve_device
from .models import make_model
from .runs import RunDir

__all__ = ["Experiment", "build_experiment", "fit_experiment", "load_run", "resume_experiment", "training_estimator", "conditioning_labels"]


@dataclass
class Experiment:
    """A config with its data, model and guide built."""

    config: ExperimentConfig
    data: Dataset
    model: PyroModule
    guide: PyroModule


def build_experiment(config: ExperimentConfig, data_dir: str | os.PathLike | None = None) -> Experiment:
    """Load the data and build the model and guide, seeded by ``config.train.seed``."""
    data = load_dataset(config.data, data_dir)
    pyro.set_rng_seed(config.train.seed)
    model = make_model(config.model.name, data.x_shape, config.model.config)
    guide = make_guide(config.guide.name, model, config.guide.config)
    return Experiment(config, data, model, guide)


def conditioning_labels(model, y):
    """The labels a model must be given to score x: ``y`` for a model conditioned on an input y, else None.

    Evaluation estimates log p(x); a semi-observed label (M2) stays latent there, and models without labels
    ignore them.
    """
    return y if getattr(getattr(model, "spec", None), "inputs", ()) else None


def training_estimator(config: ExperimentConfig):
    """The estimator config, wrapped in a KL weighting (beta, annealing, free bits) when the config asks for one."""
    if config.kl_weighting.is_elbo:
        return config.estimator
    from .inference.objectives import make_objective

    return make_objective(config.estimator, config.kl_weighting)


def fit_experiment(
    config: ExperimentConfig,
    run_dir: RunDir | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
) -> tuple[Experiment, FitResult]:
    """Build and train a config, writing its resolved config into ``run_dir`` first.

    With ``resume``, continue from the checkpoint in ``run_dir`` instead of starting afresh.
    """
    exp = build_experiment(config, data_dir)
    if run_dir is not None:
        run_dir.write_config(config_to_dict(config))
    result = fit(
        exp.model,
        exp.guide,
        exp.data,
        estimator=training_estimator(config),
        optim=config.optim,
        train=config.train,
        run_dir=run_dir,
        resume=resume,
        callbacks=callbacks,
    )
    return exp, result


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
    config = config_from_dict(apply_overrides(run_dir.read_config(), overrides))
    return fit_experiment(config, run_dir, data_dir=data_dir, callbacks=callbacks, resume=True)


def load_run(
    run_dir: str | os.PathLike | RunDir,
    *,
    data_dir: str | os.PathLike | None = None,
    device: str = "auto",
) -> Experiment:
    """Rebuild a run's data, model and guide and load the trained parameters from its checkpoint."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    config = config_from_dict(run.read_config())
    exp = build_experiment(config, data_dir)
    target = resolve_device(device)
    state = run.load_checkpoint(map_location=target)
    try:
        exp.model.load_state_dict(state["model"])
        exp.guide.load_state_dict(state["guide"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint in {run.path} does not match its config: {err}") from None
    exp.model.to(target)
    exp.guide.to(target)
    exp.data = exp.data.to(target)
    return exp
