"""The Pyro model compiled from a :class:`~ppl_vae.spec.ModelSpec`."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn
from torch.nn import functional as F

from ..contract import DATA_PLATE, DATA_SITE
from ..families import FAMILIES, PRIOR_SHAPES, shaped_prior
from ..likelihoods import make_likelihood
from ..nets import MLP, ConvDecoder
from ..spec import LatentSpec, ModelSpec, SpecError, model_order

__all__ = ["SpecModel", "concat_features"]


def concat_features(features: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate ``(..., d_i)`` tensors along the last dim, broadcasting their batch dims.

    Batch dims differ when a parent is enumerated or drawn per particle.
    """
    batch = torch.broadcast_shapes(*(f.shape[:-1] for f in features))
    return torch.cat([f.expand(*batch, f.shape[-1]) for f in features], dim=-1)


class SpecModel(PyroModule):
    r"""A generative model compiled from a declarative spec.

    For each data point in the plate ``data``, in topological order::

        v ~ p(v | parents(v)) = family_v(net_v(parents(v)))     # each latent v (prior params when parentless)
        x ~ p(x | parents(x)) = likelihood(decoder(parents(x)))

    Always-given inputs (``y``) come from the batch's labels. A latent with
    ``observed_when_given`` is observed when the batch carries labels.

    Capabilities (:mod:`ppl_vae.contract`): ``x_shape``, ``likelihood``, ``needs_labels`` (a spec with
    an input y), and, with a semi-observed class latent and a style latent ``z``, ``label_site``,
    ``num_classes`` and ``label_value`` (class grids and analogies).

    :param tuple x_shape: shape of one observation.
    :param ModelSpec spec: the declaration (it checked itself when it was built).
    """

    def __init__(self, x_shape: tuple[int, ...], spec: ModelSpec) -> None:
        super().__init__()
        if not isinstance(spec, ModelSpec):
            raise SpecError(f"a spec model needs a ModelSpec, got {type(spec).__name__}")
        self.spec = spec
        self.x_shape = tuple(int(s) for s in x_shape)
        self.order = model_order(spec)
        self.latent_specs = {v.name: v for v in spec.latents}
        self.input_specs = {i.name: i for i in spec.inputs}
        obs = spec.observed
        self.likelihood = make_likelihood(
            obs.likelihood, self.x_shape, scale=obs.x_scale, allow_nonbinary=obs.allow_nonbinary,
            option_key="model.observed.allow_nonbinary", pixelcnn=obs.pixelcnn,
        )
        self.nets = nn.ModuleDict()
        self.prior_params = nn.ParameterDict()
        for v in spec.latents:
            family = FAMILIES[v.family]
            if v.parents:
                in_dim = sum(self.input_size(p) for p in v.parents)
                self.nets[v.name] = MLP(in_dim, v.net.hidden_dims, family.num_params(v.dim), v.net.activation)
            elif v.prior == "learned":
                self.prior_params[v.name] = nn.Parameter(family.default_params(v.dim))
            else:
                self.register_buffer(f"prior_{v.name}", family.default_params(v.dim))
        in_dim = sum(self.input_size(p) for p in obs.parents)
        if obs.net.kind == "conv":
            try:
                self.decoder = ConvDecoder(
                    in_dim, obs.net.hidden_dims, self.x_shape, obs.net.channels, obs.net.activation,
                    self.likelihood.params_per_element, owner="observed variable 'x'",
                )
            except ValueError as err:
                raise SpecError(str(err)) from None
        else:
            self.decoder = MLP(in_dim, obs.net.hidden_dims, self.likelihood.num_outputs, obs.net.activation)

    # -- capabilities --------------------------------------------------------------------------
    @property
    def needs_labels(self) -> bool:
        """Whether x is conditioned on an always-given input y (a conditional VAE)."""
        return bool(self.input_specs)

    @property
    def label_classes(self) -> int:
        """The number of classes of a categorical input y (samples cycle through them); 0 for a real input."""
        spec = self.input_specs.get("y")
        return spec.dim if spec is not None and spec.kind == "categorical" else 0

    @property
    def label_site(self) -> str | None:
        """The semi-observed class latent with a style latent ``z`` beside it (M2's ``y``), if any."""
        name = next((v.name for v in self.spec.latents if v.observed_when_given), None)
        return name if name is not None and "z" in self.latent_specs else None

    @property
    def num_classes(self) -> int:
        """The number of classes of the label site (0 without one)."""
        return self.latent_specs[self.label_site].dim if self.label_site else 0

    def label_value(self, y: torch.Tensor) -> torch.Tensor:
        """Class indices ``y`` as values of the label site."""
        return self.latent_value(self.latent_specs[self.label_site], y)

    # -- encodings ---------------------------------------------------------------------------
    def input_size(self, name: str) -> int:
        """Size of the float encoding of variable ``name`` when it feeds a network."""
        if name in self.input_specs:
            return self.input_specs[name].dim
        v = self.latent_specs[name]
        return FAMILIES[v.family].input_size(v.dim)

    def encode(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """Float encoding ``(..., input_size)`` of a value of variable ``name``."""
        if name in self.input_specs:
            spec = self.input_specs[name]
            if spec.kind == "categorical":
                return F.one_hot(value.long(), spec.dim).to(self._dtype())
            return value.to(self._dtype())
        v = self.latent_specs[name]
        return FAMILIES[v.family].encode(value, v.dim).to(self._dtype())

    def latent_value(self, latent: LatentSpec, y: torch.Tensor) -> torch.Tensor:
        """A batch of class labels as values of the semi-observed latent ``latent``."""
        if latent.family == "categorical":
            return y.long()
        return F.one_hot(y.long(), latent.dim).to(self._dtype())

    def _dtype(self) -> torch.dtype:
        return next(iter(self.decoder.parameters())).dtype

    # -- factors -----------------------------------------------------------------------------
    def latent_dist(self, name: str, values: dict[str, torch.Tensor], observed: bool = False) -> dist.TorchDistribution:
        """p(v | parents(v)) for latent ``name`` given earlier ``values``."""
        v = self.latent_specs[name]
        family = FAMILIES[v.family]
        if v.parents:
            params = self.nets[name](concat_features([self.encode(p, values[p]) for p in v.parents]))
        elif v.prior == "learned":
            params = self.prior_params[name]
        else:
            params = getattr(self, f"prior_{name}")
            if v.prior in PRIOR_SHAPES:
                return shaped_prior(v.prior, params)  # a fixed shaped prior: the buffer gives device and dtype
        if observed and v.family == "relaxed_categorical":
            # A relaxed sample never hits a vertex of the simplex; an observed one-hot label is scored exactly.
            return dist.OneHotCategorical(logits=params)
        return family.dist(params, v.dim, v.gumbel_temperature)

    def x_dist(self, values: dict[str, torch.Tensor]) -> dist.TorchDistribution:
        """p(x | parents(x))."""
        features = concat_features([self.encode(p, values[p]) for p in self.spec.observed.parents])
        return self.likelihood(self.decoder(features))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """Score the batch ``x`` (``(batch, *x_shape)``); ``y`` holds the labels of a conditional model, or the
        observed values of a semi-observed latent (M2)."""
        values: dict[str, torch.Tensor] = {}
        if self.input_specs:
            if y is None:
                raise ValueError("this model is conditioned on an input y; pass the labels y (e.g. --labels / data with labels)")
            values["y"] = y
        with pyro.plate(DATA_PLATE, x.shape[0]):
            for name in self.order:
                v = self.latent_specs[name]
                obs = self.latent_value(v, y) if (v.observed_when_given and y is not None) else None
                infer = {"enumerate": "parallel"} if (v.enumerate and obs is None) else {}
                values[name] = pyro.sample(name, self.latent_dist(name, values, obs is not None), obs=obs, infer=infer)
            return pyro.sample(DATA_SITE, self.x_dist(values), obs=self.likelihood.observe(x))
