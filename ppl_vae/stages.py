"""Staged runs: M1+M2, where a model (M2) is trained on the latent codes of a model trained first (M1).

A config with an ``m1:`` section declares the first stage. ``ppl-vae fit`` trains it in ``RUN/m1`` (a
run directory of its own, resumed or skipped once done) and then the main model on the codes of its
guide (:func:`m1_features`). The resulting :class:`~ppl_vae.experiment.Experiment` keeps the trained
stage (``experiment.stage``), so tools know that its data are codes, not images.

References

- Kingma, D. P., Rezende, D. J., Mohamed, S. & Welling, M. (2014). Semi-Supervised Learning with Deep
  Generative Models. NeurIPS.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Iterator

from torch import nn

from .data import Dataset
from .errors import FitInterrupted
from .inference.semisup import latent_codes
from .runs import RunDir

__all__ = ["STAGE_DIR", "stage_run", "stage_config", "m1_features"]

#: the folder of the first stage inside an M1+M2 run directory
STAGE_DIR = "m1"


def stage_run(run_dir: RunDir | None) -> RunDir | None:
    """The first stage's run directory inside ``run_dir`` (None without a run directory)."""
    return None if run_dir is None else RunDir(run_dir.path / STAGE_DIR)


def stage_config(config: Any) -> Any:
    """The first stage's experiment config: its own sections, the main config's data."""
    return replace(config.m1, data=config.data)


def m1_features(guide: nn.Module, m1_data: Dataset, data: Dataset) -> Dataset:
    """``data`` with every split replaced by the codes of M1's guide, labels kept.

    The validation and test codes are the posterior means of z. The training codes are draws
    z1 ~ q(z1|x), made afresh in every batch as in Kingma et al. (2014): the posterior means plus
    Gaussian noise of the posterior's spread (``Dataset.train_noise``). Without that noise, M2 fits a
    fixed set of points and its learned likelihood scale shrinks without end. With dynamic
    binarization the training images are grey levels while the validation and test images are one
    fixed binary draw; the training images are encoded from a fixed binary draw too, so that M2's
    classifier sees codes of the same kind in training and at test time.
    """
    codes = {f"x_{s}": latent_codes(guide, getattr(m1_data, f"x_{s}")).cpu() for s in ("val", "test")}
    codes["x_train"], spread = (t.cpu() for t in latent_codes(guide, m1_data.fixed_train_x(), with_stddev=True))
    dim = codes["x_train"].shape[1]
    return replace(data, **codes, train_noise=spread, binarize="none", image_shape=(1, 1, dim))


@contextmanager
def resumable_stage(run_dir: RunDir | None, what: str) -> Iterator[None]:
    """Around the training of one stage of a staged run: an interruption names the whole run to resume, which
    goes on to the next stages (the stage's own folder alone would not)."""
    try:
        yield
    except FitInterrupted:
        if run_dir is None:
            raise
        raise FitInterrupted(f"interrupted in {what}; resume with: ppl-vae fit --resume {run_dir.path}", str(run_dir.path)) from None
