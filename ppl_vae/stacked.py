"""Stacked autoencoders: greedy layer-wise training of a deep autoencoder, then fine-tuning of the whole.

A config with a ``stack:`` section (:class:`StackConfig`) declares the layers of a deep autoencoder, e.g.
``layers: [500, 250, 30]`` for 784-500-250-30. ``ppl-vae fit`` trains it in ``L + 1`` stages:

1. stage ``k`` (``k = 1 .. L``), in ``RUN/stage_k`` (a run directory of its own, resumed or skipped once
   done, as M1 in ``RUN/m1``), is an autoencoder with no hidden layer: one encoder layer and one decoder
   layer, trained on the codes of stage ``k - 1`` (stage 1 on the data)::

       z ~ Normal(0, I)                                   # site "z", shape (layers[k],)
       h ~ p(h | z) = Bernoulli(logits = V_k s(z) + c_k)  # s = sigmoid; no s on the last stage's code
       q(z | h) = Delta(W_k h~ + b_k)                     # h~: h, corrupted in training if asked

   where ``h`` is the data (stage 1, with the config's likelihood) or ``s`` of the previous stage's codes;
2. the deep model (a ``vae`` whose decoder is ``V_L, s, V_{L-1}, ..., s, V_1``) and guide (an ``amortized``
   guide whose encoder is ``W_1, s, ..., W_{L-1}, s`` with a ``delta`` head ``W_L``) start from the stages'
   weights (:func:`init_from_stages`) and are fine-tuned on the data in ``RUN``, by the config's own
   ``estimator``, ``optim`` and ``train``.

**Why sigmoid codes with a Bernoulli likelihood.** In the deep decoder, layer ``V_k`` (``k > 1``) passes
``s(V_k u + c_k)`` on to the next layer. An inner stage trained with the likelihood Bernoulli(logits
``V_k u + c_k``) reconstructs exactly that mean, ``s(V_k u + c_k)``, so the stage and the deep network agree;
its loss is the cross-entropy of Vincent et al. (2010) on codes in [0, 1] (the Bernoulli is improper there,
hence ``allow_nonbinary``). A Normal likelihood on real codes would train a linear output that the deep
decoder then squashes. So the layers' activation is the sigmoid, always.

The N(0, I) prior on each stage's code is, with the ``delta`` head, an L2 penalty on the pre-activation code,
as for every point-mass guide of the package (``docs/autoencoders.md``). It pushes the codes towards 0, so the
sigmoid codes towards 0.5; the config's ``kl_weighting`` applies to every stage and to the fine-tuning, and
``kl_weighting: {beta: 0}`` drops the prior (plain stacked autoencoders, as the shipped configs do).

References

- Hinton, G. E. & Salakhutdinov, R. R. (2006). Reducing the Dimensionality of Data with Neural Networks. Science.
- Bengio, Y., Lamblin, P., Popovici, D. & Larochelle, H. (2007). Greedy Layer-Wise Training of Deep Networks. NeurIPS.
- Vincent, P., Larochelle, H., Lajoie, I., Bengio, Y. & Manzagol, P.-A. (2010). Stacked Denoising Autoencoders. JMLR.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .data import Dataset
from .guides import make_guide
from .guides.amortized import AmortizedGuideConfig
from .guides.corruption import CorruptionConfig
from .guides.penalties import SparsityConfig
from .inference.estimators import make_estimator
from .inference.fit import Callback, fit
from .inference.objectives import kl_weighted
from .inference.semisup import latent_codes
from .likelihoods import LIKELIHOODS
from .models import make_model
from .models.vae import VAEConfig
from .programs import seeded
from .runs import RunDir
from .schema import POSITIVE, POSITIVE_INT, SIZES, check_fields, documented, one_of, optional
from .stages import resumable_stage

__all__ = [
    "ACTIVATION",
    "STAGE_HEADS",
    "StageConfig",
    "StackConfig",
    "Stage",
    "stage_dir",
    "deep_model_config",
    "deep_guide_config",
    "stage_model_config",
    "stage_guide_config",
    "stage_codes",
    "train_stages",
    "init_from_stages",
]

log = logging.getLogger("ppl_vae")

#: the activation of every layer (see the module docstring for why it is not an option)
ACTIVATION = "sigmoid"
#: the heads a stage's guide may have: the deep guide's delta head takes the stage head's location rows
STAGE_HEADS = ("delta", "normal")


@documented
@dataclass(frozen=True)
class StageConfig:
    """One stage of a stacked autoencoder (``stack.stage`` for every stage, or an item of ``stack.stages``)."""

    #: passes over the stage's training data
    epochs: int = 5
    #: data points per step; None: the config's train.batch_size
    batch_size: int | None = None
    #: learning rate; None: the config's optim.lr
    lr: float | None = None
    #: the stage guide's head: delta (a deterministic encoder) or normal (its loc seeds the deep delta head)
    head: str = "delta"
    #: stacked denoising autoencoders: corrupt the stage's input in training, e.g. {kind: masking, rate: 0.3}
    corruption: CorruptionConfig | None = None
    #: a sparsity penalty on the stage's code, e.g. {kind: kl, weight: 0.1, target: 0.05}
    sparsity: SparsityConfig | None = None

    def __post_init__(self) -> None:
        check_fields(self, "stack.stage", epochs=POSITIVE_INT, batch_size=optional(POSITIVE_INT), lr=optional(POSITIVE),
                     head=one_of(STAGE_HEADS))


@documented
@dataclass(frozen=True)
class StackConfig:
    """A stacked autoencoder (the ``stack:`` section): its layers, and how each stage is trained."""

    #: code sizes of the encoder's layers from the input side, e.g. [500, 250, 30]; the last is z's size
    layers: tuple[int, ...] = ()
    #: p(x|z) of the data (stage 1 and the deep model), a key of ppl_vae.likelihoods.LIKELIHOODS
    likelihood: str = "bernoulli"
    #: normal likelihoods: the fixed (normal) or initial (normal_learned) scale
    x_scale: float = 0.1
    #: the options of every stage
    stage: StageConfig = field(default_factory=StageConfig)
    #: one item per layer, replacing stage for that layer; empty: stage for all
    stages: tuple[StageConfig, ...] = ()

    def __post_init__(self) -> None:
        check_fields(self, "stack", layers=SIZES, likelihood=one_of(LIKELIHOODS), x_scale=POSITIVE)
        if not self.layers:
            raise ValueError("stack.layers must list at least one layer size, e.g. [500, 250, 30], got []")
        if self.stages and len(self.stages) != len(self.layers):
            raise ValueError(f"stack.stages must have one item per layer ({len(self.layers)}), got {len(self.stages)}")

    def stage_options(self, k: int) -> StageConfig:
        """The options of stage ``k`` (from 0)."""
        return self.stages[k] if self.stages else self.stage


@dataclass
class Stage:
    """One trained stage: its model, guide, and the data it was trained on."""

    model: nn.Module
    guide: nn.Module
    data: Dataset


def stage_dir(run_dir: RunDir | None, k: int) -> RunDir | None:
    """The run directory of stage ``k`` (from 0) inside ``run_dir``: ``RUN/stage_{k+1}``."""
    return None if run_dir is None else RunDir(run_dir.path / f"stage_{k + 1}")


def deep_model_config(stack: StackConfig) -> VAEConfig:
    """The deep model: a ``vae`` whose decoder is the stages' decoders in reverse."""
    return VAEConfig(latent_dim=stack.layers[-1], hidden_dims=tuple(reversed(stack.layers[:-1])), activation=ACTIVATION,
                     likelihood=stack.likelihood, x_scale=stack.x_scale)


def deep_guide_config(stack: StackConfig) -> AmortizedGuideConfig:
    """The deep guide: an ``amortized`` guide whose encoder is the stages' encoders, with a ``delta`` head."""
    return AmortizedGuideConfig(hidden_dims=stack.layers[:-1], activation=ACTIVATION, head="delta")


def stage_model_config(stack: StackConfig, k: int) -> VAEConfig:
    """Stage ``k``'s model: one decoder layer; inner stages see sigmoid codes with a Bernoulli likelihood."""
    inner = k > 0
    return VAEConfig(
        latent_dim=stack.layers[k], hidden_dims=(), activation=ACTIVATION,
        likelihood="bernoulli" if inner else stack.likelihood, x_scale=stack.x_scale, allow_nonbinary=inner,
        code_activation=k < len(stack.layers) - 1,
    )


def stage_guide_config(stack: StackConfig, k: int) -> AmortizedGuideConfig:
    """Stage ``k``'s guide: one encoder layer (the head's linear map), with the stage's options."""
    opts = stack.stage_options(k)
    return AmortizedGuideConfig(hidden_dims=(), activation=ACTIVATION, head=opts.head, corruption=opts.corruption,
                                sparsity=opts.sparsity)


def stage_codes(guide: nn.Module, data: Dataset) -> Dataset:
    """The next stage's data: ``sigmoid`` of the codes (q's mean) of every split, labels kept.

    The training codes are those of :meth:`~ppl_vae.data.Dataset.fixed_train_x` (one fixed binary draw under
    dynamic binarization), of the same kind as the validation and test codes.
    """
    codes = {f"x_{s}": torch.sigmoid(latent_codes(guide, getattr(data, f"x_{s}"))) for s in ("val", "test")}
    codes["x_train"] = torch.sigmoid(latent_codes(guide, data.fixed_train_x()))
    dim = codes["x_train"].shape[1]
    return replace(data, **codes, train_noise=None, binarize="none", image_shape=(1, 1, dim))


def _stage_train(config: Any, k: int):
    opts = config.stack.stage_options(k)
    train = replace(config.train, epochs=opts.epochs, batch_size=opts.batch_size or config.train.batch_size)
    optim = config.optim if opts.lr is None else replace(config.optim, lr=opts.lr)
    return train, optim


def _stage_estimator(config: Any):
    """The config's estimator, with its kl_weighting (beta: 0 drops the prior at the code: plain autoencoders)."""
    estimator = make_estimator(config.estimator)
    return estimator if config.kl_weighting.is_elbo else kl_weighted(estimator, config.kl_weighting)


def _fit_stage(config: Any, k: int, data: Dataset, run_dir: RunDir | None, resume: bool, callbacks) -> Stage:
    stack = config.stack
    with seeded(config.train.seed):
        model = make_model("vae", data.x_shape, stage_model_config(stack, k))
        guide = make_guide("amortized", model, stage_guide_config(stack, k), x=data.x_train[:2])
    run = stage_dir(run_dir, k)
    train, optim = _stage_train(config, k)
    resumed = bool(resume and run is not None and run.has_checkpoint())
    log.info("stage %d of %d: layer %d -> %d%s", k + 1, len(stack.layers) + 1, data.x_shape[-1], stack.layers[k],
             " (resumed)" if resumed else "")
    with resumable_stage(run_dir, f"stage {k + 1}"):
        result = fit(model, guide, data, estimator=_stage_estimator(config), optim=optim, train=train, run_dir=run,
                     resume=resumed, callbacks=callbacks)
    return Stage(result.model.to("cpu"), result.guide.to("cpu"), data)


def train_stages(config: Any, data: Dataset, run_dir: RunDir | None, resume: bool = False,
                 callbacks: tuple[Callback, ...] = ()) -> list[Stage]:
    """Train the stages of a stacked config in order, each on the codes of the one before (stage 1 on ``data``).

    Stage ``k`` is trained in ``run_dir/stage_k``; with ``resume`` a stage with a checkpoint continues from
    it, or, once done, is only reloaded. ``callbacks`` go to every stage's ``fit``.
    """
    stages: list[Stage] = []
    current = data.to("cpu")
    for k in range(len(config.stack.layers)):
        stage = _fit_stage(config, k, current, run_dir, resume, callbacks)
        stages.append(stage)
        current = stage_codes(stage.guide, current)
    log.info("stage %d of %d: fine-tuning the deep autoencoder", len(config.stack.layers) + 1, len(config.stack.layers) + 1)
    return stages


def _copy(target: nn.Linear, source: nn.Linear, rows: int | None = None) -> None:
    with torch.no_grad():
        target.weight.copy_(source.weight[:rows] if rows else source.weight)
        target.bias.copy_(source.bias[:rows] if rows else source.bias)


def init_from_stages(model: nn.Module, guide: nn.Module, stages: list[Stage]) -> None:
    """Set the deep model's and guide's weights to the stages' (:func:`deep_model_config`, :func:`deep_guide_config`).

    Encoder layer ``k`` of the deep guide is stage ``k``'s encoder (the location rows of a ``normal`` head);
    decoder layer ``j`` of the deep model is stage ``L - j``'s decoder; the likelihood's own parameters (a
    learned scale) are stage 1's.
    """
    num = len(stages)
    for k, stage in enumerate(stages):
        head = stage.guide.heads["z"].linear
        dim = stage.model.latent_dim
        target = guide.heads["z"].linear if k == num - 1 else guide.trunk[2 * k]
        _copy(target, head, rows=dim)
        _copy(model.decoder[2 * (num - 1 - k)], stage.model.decoder[0])
    model.likelihood.load_state_dict(stages[0].model.likelihood.state_dict())
