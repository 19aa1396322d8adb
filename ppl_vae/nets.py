"""Network building blocks: plain ``nn.Module``s with no Pyro in them.

Models and guides own these networks and turn their outputs into
distributions; keeping the networks Pyro-free means the same MLP can be used in
a hand-written PyTorch loop (see ``benchmarks/``) and in a Pyro program.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from .schema import POSITIVE_INT, check_value

__all__ = ["ACTIVATIONS", "MLP", "Trunk", "ConvEncoder", "ConvDecoder", "activation", "check_choice", "flatten_batch"]

#: Registry of activation constructors, chosen by name in configs.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}


def check_choice(kind: str, name: str, registry: dict) -> None:
    """Raise ``ValueError`` naming the valid choices when ``name`` is not in ``registry``."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {sorted(registry)}")


def activation(name: str) -> nn.Module:
    """Return a fresh activation module by name (see :data:`ACTIVATIONS`)."""
    check_choice("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """A multi-layer perceptron ``in_dim -> hidden_dims... -> out_dim``.

    The activation follows every hidden layer; the output layer is linear.
    With ``hidden_dims=()`` it is a single affine map.

    :param int in_dim: input size (the trailing dimension of the input).
    :param Sequence[int] hidden_dims: sizes of the hidden layers.
    :param int out_dim: output size.
    :param str activation: name from :data:`ACTIVATIONS`. Defaults to ``"relu"``.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        activation_name: str = "relu",
    ) -> None:
        for name, value in [("in_dim", in_dim), ("out_dim", out_dim), *(("hidden_dims", h) for h in hidden_dims)]:
            check_value(f"MLP {name}", value, POSITIVE_INT)
        check_choice("activation", activation_name, ACTIVATIONS)
        layers: list[nn.Module] = []
        sizes = [in_dim, *hidden_dims]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), activation(activation_name)]
        layers.append(nn.Linear(sizes[-1], out_dim))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if inputs.shape[-1] != self.in_dim:
            raise ValueError(
                f"MLP expected inputs with trailing size {self.in_dim}, got shape {tuple(inputs.shape)}"
            )
        return super().forward(inputs)


class Trunk(nn.Sequential):
    """Hidden layers only: ``in_dim -> hidden_dims...``, each followed by the activation.

    Its output is a feature vector of size :attr:`out_dim` (``hidden_dims[-1]``,
    or ``in_dim`` when there are no hidden layers) for a head to read.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], activation_name: str = "relu") -> None:
        check_choice("activation", activation_name, ACTIVATIONS)
        layers: list[nn.Module] = []
        sizes = [in_dim, *hidden_dims]
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), activation(activation_name)]
        super().__init__(*layers)
        self.in_dim = in_dim
        self.out_dim = sizes[-1]


def flatten_batch(x: torch.Tensor, event_dims: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Merge all leading batch dims into one: ``(*batch, *event) -> (prod(batch), *event)``."""
    batch = tuple(x.shape[: x.dim() - event_dims])
    return x.reshape(-1, *x.shape[x.dim() - event_dims :]), batch


def _check_image(image_shape: Sequence[int], num_layers: int, owner: str) -> None:
    if len(image_shape) != 3:
        raise ValueError(
            f"{owner}: a conv network needs images of shape (channels, height, width), got items of shape "
            f"{tuple(image_shape)}; set data.flatten: false"
        )
    factor = 2**num_layers
    if image_shape[1] % factor or image_shape[2] % factor:
        raise ValueError(
            f"{owner}: {num_layers} stride-2 conv layers need height and width divisible by {factor}, "
            f"got {tuple(image_shape[1:])}"
        )


class ConvEncoder(nn.Module):
    """Stride-2 convolutions (kernel 4, padding 1) that halve the image per layer, then flatten.

    :param tuple image_shape: ``(channels, height, width)``.
    :param Sequence[int] channels: output channels of each layer.
    """

    def __init__(self, image_shape: Sequence[int], channels: Sequence[int], activation_name: str = "relu", owner: str = "conv encoder") -> None:
        super().__init__()
        _check_image(image_shape, len(channels), owner)
        layers: list[nn.Module] = []
        c = image_shape[0]
        for out in channels:
            layers += [nn.Conv2d(c, out, 4, stride=2, padding=1), activation(activation_name)]
            c = out
        self.net = nn.Sequential(*layers)
        self.image_shape = tuple(image_shape)
        factor = 2 ** len(channels)
        self.out_dim = c * (image_shape[1] // factor) * (image_shape[2] // factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, batch = flatten_batch(x, 3)
        return self.net(flat).reshape(*batch, self.out_dim)


class ConvDecoder(nn.Module):
    """A vector to an image: an MLP, a linear map to a small feature map, then stride-2 transposed convolutions.

    The output has ``params_per_element`` numbers per pixel, flattened pixel-major so that
    a likelihood can reshape it to ``(*image_shape, params_per_element)``.

    :param int in_dim: input size.
    :param Sequence[int] hidden_dims: MLP layers before the feature map.
    :param tuple image_shape: ``(channels, height, width)`` of the output.
    :param Sequence[int] channels: channels of the feature maps, from the largest map to the smallest
        (the mirror image of :class:`ConvEncoder`'s ``channels``).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        image_shape: Sequence[int],
        channels: Sequence[int],
        activation_name: str = "relu",
        params_per_element: int = 1,
        owner: str = "conv decoder",
    ) -> None:
        super().__init__()
        _check_image(image_shape, len(channels), owner)
        factor = 2 ** len(channels)
        self.start = (channels[-1], image_shape[1] // factor, image_shape[2] // factor)
        self.trunk = Trunk(in_dim, hidden_dims, activation_name)
        self.project = nn.Sequential(nn.Linear(self.trunk.out_dim, math.prod(self.start)), activation(activation_name))
        layers: list[nn.Module] = []
        for i in range(len(channels) - 1, 0, -1):
            layers += [nn.ConvTranspose2d(channels[i], channels[i - 1], 4, stride=2, padding=1), activation(activation_name)]
        layers.append(nn.ConvTranspose2d(channels[0], image_shape[0] * params_per_element, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)
        self.image_shape = tuple(image_shape)
        self.params_per_element = params_per_element
        self.out_dim = math.prod(image_shape) * params_per_element

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        flat, batch = flatten_batch(h, 1)
        maps = self.project(self.trunk(flat)).reshape(-1, *self.start)
        out = self.net(maps)  # (B, C * P, H, W)
        c, height, width = self.image_shape
        # (B, C * P, H, W) -> (B, C, H, W, P), so a likelihood reshapes it pixel by pixel
        out = out.reshape(-1, c, self.params_per_element, height, width).permute(0, 1, 3, 4, 2)
        return out.reshape(*batch, self.out_dim)
