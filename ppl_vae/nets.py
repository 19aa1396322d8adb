"""Network building blocks: plain ``nn.Module``s with no Pyro in them.

Models and guides own these networks and turn their outputs into
distributions; keeping the networks Pyro-free means the same MLP can be used in
a hand-written PyTorch loop (see ``benchmarks/``) and in a Pyro program.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "MLP", "activation", "check_choice"]

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
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MLP {name} must be a positive int, got {value!r}")
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
