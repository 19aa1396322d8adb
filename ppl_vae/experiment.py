"""From a config to trained objects: build the data, model and guide; fit; reload a run.

This is the glue the CLI and scripts share; it holds no training logic of its
own (that is :func:`ppl_vae.inference.fit`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Sequence

import pyro
from pyro.nn import PyroModule

from .config import ExperimentConfig, apply_overrides, config_from_dict, config_to_dict
from .data import Dataset, load_dataset
from .errors import CheckpointError, ConfigError, FitInterrupted
from .guides import make_guide
from .inference.evaluate import conditioning_labels
from .inference.fit import Callback, FitResult, fit, resolve_device
from .models import make_model
from .runs import RunDir

__all__ = [
    "Experiment",
    "build_experiment",
    "fit_experiment",
    "load_run",
    "resume_experiment",
    "training_estimator",
    "conditioning_labels",
    "m1_features",
]


@dataclass
class Experiment:
    """A config with its data, model and guide built."""

    config: ExperimentConfig
    data: Dataset
    model: PyroModule
    guide: PyroModule


def _m1_run(run_dir: RunDir | None, create: bool = False) -> RunDir | None:
    if run_dir is None:
        return None
    if create:
        (run_dir.path / "m1").mkdir(parents=True, exist_ok=True)
    return RunDir(run_dir.path / "m1")


def m1_features(m1: Experiment, data: Dataset) -> Dataset:
    """``data`` with every split replaced by M1's latent codes, labels kept.

    The validation and test codes are the posterior means of z. The training codes are draws
    z1 ~ q(z1|x), made afresh in every batch as in Kingma et al. (2014): the posterior means plus
    Gaussian noise of the posterior's spread (``Dataset.train_noise``). Without that noise, M2 fits a
    fixed set of points and its learned likelihood scale shrinks without end. With dynamic
    binarization the training images are grey levels while the validation and test images are one
    fixed binary draw; the training images are encoded from a fixed binary draw too, so that M2's
    classifier sees codes of the same kind in training and at test time.
    """
    from .inference.semisup import latent_codes

    codes = {f"x_{s}": latent_codes(m1.guide, getattr(m1.data, f"x_{s}")).cpu() for s in ("val", "test")}
    codes["x_train"], spread = (t.cpu() for t in latent_codes(m1.guide, m1.data.fixed_train_x(), with_stddev=True))
    dim = codes["x_train"].shape[1]
    return replace(
        data, **codes, train_noise=spread, binarize="none", image_shape=(1, 1, dim), extra={**data.extra, "features": "m1"}
    )


def _load_data(config: ExperimentConfig, data_dir, run_dir: RunDir | None, m1: Experiment | None) -> Dataset:
    data = load_dataset(config.data, data_dir)
    if config.m1 is not None:
        if m1 is None and run_dir is None:
            raise ConfigError(
                "an M1+M2 config trains its M2 stage on the codes of a trained M1: fit it with ppl-vae fit "
                "(which trains both stages), or pass the trained M1 experiment"
            )
        if m1 is None:
            m1 = load_run(_m1_run(run_dir), data_dir=data_dir, device="cpu", config=replace(config.m1, data=config.data))
        data = m1_features(m1, data)
    if config.semi_supervised.enabled:
        from .labelled import hide_labels

        data = hide_labels(data, config.semi_supervised.num_labels, config.semi_supervised.seed)
    return data


def build_experiment(
    config: ExperimentConfig,
    data_dir: str | os.PathLike | None = None,
    *,
    run_dir: RunDir | None = None,
    m1: Experiment | None = None,
) -> Experiment:
    """Load the data and build the model and guide, seeded by ``config.train.seed``.

    With ``semi_supervised.num_labels`` set, all but that many training labels are hidden. An M1+M2
    config (``m1:`` section) replaces the data by the latent codes of the trained M1 stage: ``m1``,
    or the one saved in ``run_dir/m1``.
    """
    data = _load_data(config, data_dir, run_dir, m1)
    pyro.set_rng_seed(config.train.seed)
    model = make_model(config.model.name, data.x_shape, config.model.config)
    guide = make_guide(config.guide.name, model, config.guide.config)
    return Experiment(config, data, model, guide)


def training_estimator(config: ExperimentConfig, data: Dataset | None = None):
    """The estimator config, wrapped in a KL weighting (beta, annealing, free bits) when the config asks for one,
    and in :class:`~ppl_vae.inference.semisup.SemiSupervised_ELBO` for semi-supervised training."""
    estimator = config.estimator
    if not config.kl_weighting.is_elbo:
        from .inference.objectives import make_objective

        estimator = make_objective(config.estimator, config.kl_weighting)
    ss = config.semi_supervised
    if ss.enabled:
        from .inference.estimators import make_estimator
        from .inference.semisup import SemiSupervised_ELBO, kingma_aux_weight, unbiased_labelled_weight

        if data is None:
            raise ValueError("a semi-supervised estimator needs the data, to weigh the labelled terms")
        num_train = len(data.x_train)
        aux = ss.aux_weight if ss.aux_weight is not None else kingma_aux_weight(num_train, ss.num_labels)
        labelled = ss.labelled_weight
        if labelled is None:
            labelled = unbiased_labelled_weight(num_train, ss.num_labels, config.train.batch_size, ss.labelled_per_batch)
        estimator = SemiSupervised_ELBO(make_estimator(estimator), aux, labelled)
    return estimator


def fit_experiment(
    config: ExperimentConfig,
    run_dir: RunDir | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
) -> tuple[Experiment, FitResult]:
    """Build and train a config, writing its resolved config into ``run_dir`` first.

    With ``resume``, continue from the checkpoint in ``run_dir`` instead of starting afresh. An
    M1+M2 config trains its M1 stage first, in ``run_dir/m1`` (resumed or skipped once done).
    """
    m1 = None
    if config.m1 is not None:
        load_dataset(config.data, data_dir)  # a missing data set fails here, before the run directory is written to
        if run_dir is not None:
            run_dir.write_config(config_to_dict(config))
        m1_config = replace(config.m1, data=config.data)
        m1_run = _m1_run(run_dir, create=True)
        m1_resume = bool(resume and m1_run is not None and m1_run.has_checkpoint())
        if config.train.progress:
            print("stage 1 of 2: M1, trained on the images" + (" (resumed)" if m1_resume else ""))
        try:
            m1, _ = fit_experiment(m1_config, m1_run, data_dir=data_dir, resume=m1_resume)
        except FitInterrupted:
            if run_dir is None:
                raise
            # The run to resume is the M1+M2 run, which goes on to stage 2; its m1/ folder alone would not.
            raise FitInterrupted(
                f"interrupted in stage 1 (M1); resume with: ppl-vae fit --resume {run_dir.path}", str(run_dir.path)
            ) from None
        if config.train.progress:
            print("stage 2 of 2: M2, trained on M1's latent codes")
    exp = build_experiment(config, data_dir, run_dir=run_dir, m1=m1)
    if run_dir is not None and config.m1 is None:
        run_dir.write_config(config_to_dict(config))
    ss = config.semi_supervised
    result = fit(
        exp.model,
        exp.guide,
        exp.data,
        estimator=training_estimator(config, exp.data),
        optim=config.optim,
        train=config.train,
        run_dir=run_dir,
        resume=bool(resume and (run_dir is None or run_dir.has_checkpoint())),
        callbacks=callbacks,
        labelled_per_batch=ss.labelled_per_batch if ss.enabled else None,
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
    config: ExperimentConfig | None = None,
) -> Experiment:
    """Rebuild a run's data, model and guide and load the trained parameters from its checkpoint."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    config = config or config_from_dict(run.read_config())
    exp = build_experiment(config, data_dir, run_dir=run)
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
