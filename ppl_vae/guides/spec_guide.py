"""The amortized guide compiled from a :class:`~ppl_vae.spec.GuideSpec`."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from ..contract import DATA_PLATE, DATA_SITE
from ..heads import make_head
from ..models.spec_model import SpecModel, concat_features
from ..nets import ConvEncoder, Trunk
from ..spec import GuideSpec, SpecError, check_guide, guide_order

__all__ = ["SpecGuide"]


class SpecGuide(PyroModule):
    r"""An amortized guide compiled from a declarative spec.

    For each data point in the plate ``data``, in an order where conditioning latents come first::

        context_v = trunk_v(encoder_v(x), inputs, latents it conditions on)
        v ~ q(v | ...) = head_v(context_v)

    A semi-observed latent (``observed_when_given``) is not sampled when the batch carries labels; its
    factor is then the classifier q(y|x) (the :class:`~ppl_vae.contract.Classifier` capability).

    Build it with :meth:`for_model`, which checks the spec against the model's.

    :param SpecModel model: the compiled model this guide pairs with.
    :param GuideSpec spec: the declaration.
    """

    def __init__(self, model: SpecModel, spec: GuideSpec) -> None:
        super().__init__()
        self.spec = spec
        self.x_shape = model.x_shape
        self.order = guide_order(spec)
        self.factor_specs = {f.name: f for f in spec.factors}
        self.latent_specs = dict(model.latent_specs)
        # Encoding of conditioning values is the model's (one-hot for categories); keep a reference, not a submodule.
        self._encoding = {"input_size": model.input_size, "encode": model.encode, "latent_value": model.latent_value}
        self.has_inputs = bool(model.input_specs)
        self.image_encoders = nn.ModuleDict()
        self.trunks = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        for f in spec.factors:
            in_dim = 0
            for cond in f.conditions_on:
                if cond == DATA_SITE and f.net.kind == "conv":
                    try:
                        self.image_encoders[f.name] = ConvEncoder(
                            self.x_shape, f.net.channels, f.net.activation, owner=f"guide factor {f.name!r}"
                        )
                    except ValueError as err:
                        raise SpecError(str(err)) from None
                    in_dim += self.image_encoders[f.name].out_dim
                elif cond == DATA_SITE:
                    in_dim += math.prod(self.x_shape)
                else:
                    in_dim += model.input_size(cond)
            self.trunks[f.name] = Trunk(in_dim, f.net.hidden_dims, f.net.activation)
            latent = self.latent_specs[f.name]
            self.heads[f.name] = make_head(f.head, self.trunks[f.name].out_dim, latent.dim, latent.gumbel_temperature)

    @property
    def label_site(self) -> str | None:
        """The semi-observed latent (``observed_when_given``, e.g. M2's class ``y``), if the model has one."""
        return next((n for n in self.order if self.latent_specs[n].observed_when_given), None)

    def label_dist(self, x: torch.Tensor) -> dist.Categorical:
        """The classifier q(y|x) of the semi-observed latent, as a Categorical over its classes.

        Relaxed and one-hot guide factors give the Categorical with the same logits.

        :raises ValueError: if the model has no semi-observed latent, or its guide factor conditions on
            something other than x.
        """
        name = self.label_site
        if name is None:
            raise ValueError("this model has no semi-observed latent (observed_when_given), so its guide has no classifier")
        conds = self.factor_specs[name].conditions_on
        if tuple(conds) != (DATA_SITE,):
            raise ValueError(f"the classifier q({name}|x) needs guide factor {name!r} to condition on x alone, got {list(conds)}")
        q = self.latent_dist(name, {DATA_SITE: x})
        return q if isinstance(q, dist.Categorical) else dist.Categorical(logits=q.logits)

    @classmethod
    def for_model(cls, model: SpecModel, spec: GuideSpec) -> "SpecGuide":
        """The guide ``spec`` compiled to pair with ``model``."""
        if not isinstance(model, SpecModel):
            raise SpecError(f"a spec guide pairs with a spec model, got {type(model).__name__}")
        if not isinstance(spec, GuideSpec):
            raise SpecError(f"a spec guide needs a GuideSpec, got {type(spec).__name__}")
        check_guide(model.spec, spec)
        return cls(model, spec)

    def _features(self, name: str, cond: str, value: torch.Tensor) -> torch.Tensor:
        if cond == DATA_SITE:
            if name in self.image_encoders:
                return self.image_encoders[name](value)
            # (*batch, *x_shape) -> (*batch, prod(x_shape))
            return value.reshape(*value.shape[: value.dim() - len(self.x_shape)], -1)
        return self._encoding["encode"](cond, value)

    def latent_dist(self, name: str, values: dict[str, torch.Tensor]) -> dist.TorchDistribution:
        """q(v | conditions) for latent ``name`` given ``values`` of x, inputs and earlier latents."""
        f = self.factor_specs[name]
        features = concat_features([self._features(name, c, values[c]) for c in f.conditions_on])
        return self.heads[name](self.trunks[name](features))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        values: dict[str, torch.Tensor] = {DATA_SITE: x}
        if self.has_inputs:
            if y is None:
                raise ValueError("this guide conditions on an input y; pass the labels y")
            values["y"] = y
        with pyro.plate(DATA_PLATE, x.shape[0]):
            for name in self.order:
                latent = self.latent_specs[name]
                if latent.observed_when_given and y is not None:
                    values[name] = self._encoding["latent_value"](latent, y)
                    continue
                infer = {"enumerate": "parallel"} if self.factor_specs[name].enumerate else {}
                values[name] = pyro.sample(name, self.latent_dist(name, values), infer=infer)
        return values
