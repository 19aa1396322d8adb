"""The networks of a VQ-VAE (plain ``nn.Module`` s, no Pyro): encoders from data to a grid or a set of
code-sized vectors, and decoders back. The conv pair reuses :class:`~ppl_vae.nets.ConvEncoder` and mirrors it;
unlike :class:`~ppl_vae.nets.ConvDecoder`, the decoder starts from a grid of vectors, not from one vector.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..nets import MLP, ConvEncoder, activation, flatten_batch

__all__ = ["GridEncoder", "GridDecoder", "SetEncoder", "SetDecoder"]


class GridDecoder(nn.Module):
    """A grid of code vectors ``(..., h, w, D)`` to flat decoder outputs: a 1x1 conv, then stride-2 transposed
    convolutions that mirror :class:`~ppl_vae.nets.ConvEncoder` (pixel-major output, as
    :class:`~ppl_vae.nets.ConvDecoder`'s, for the likelihood to reshape)."""

    def __init__(self, code_dim: int, image_shape: tuple[int, int, int], channels: tuple[int, ...], activation_name: str, params_per_element: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(code_dim, channels[-1], 1), activation(activation_name)]
        for i in range(len(channels) - 1, 0, -1):
            layers += [nn.ConvTranspose2d(channels[i], channels[i - 1], 4, stride=2, padding=1), activation(activation_name)]
        layers.append(nn.ConvTranspose2d(channels[0], image_shape[0] * params_per_element, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)
        self.image_shape = image_shape
        self.params_per_element = params_per_element

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat, batch = flatten_batch(z, 3)
        out = self.net(flat.permute(0, 3, 1, 2))  # (B, h, w, D) -> (B, D, h, w) -> (B, C * P, H, W)
        c, height, width = self.image_shape
        # (B, C * P, H, W) -> (B, C, H, W, P), so the likelihood reshapes it pixel by pixel
        out = out.reshape(-1, c, self.params_per_element, height, width).permute(0, 1, 3, 4, 2)
        return out.reshape(*batch, -1)


class GridEncoder(nn.Module):
    """Images ``(..., C, H, W)`` to a grid of code-sized vectors ``(..., h, w, D)``: :class:`~ppl_vae.nets.ConvEncoder`
    then a 1x1 conv to D channels."""

    def __init__(self, image_shape: tuple[int, int, int], channels: tuple[int, ...], code_dim: int, activation_name: str) -> None:
        super().__init__()
        self.conv = ConvEncoder(image_shape, channels, activation_name, owner="vqvae encoder")
        factor = 2 ** len(channels)
        self.grid = (channels[-1], image_shape[1] // factor, image_shape[2] // factor)
        self.project = nn.Conv2d(channels[-1], code_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, batch = flatten_batch(x, 3)
        maps = self.conv(flat).reshape(-1, *self.grid)  # ConvEncoder flattens (c, h, w); undo it
        z_e = self.project(maps).permute(0, 2, 3, 1)  # (B, h, w, D)
        return z_e.reshape(*batch, *z_e.shape[1:])


class SetEncoder(nn.Module):
    """Data ``(..., *x_shape)``, flattened, to a set of code-sized vectors ``(..., num_latents, D)`` by an MLP."""

    def __init__(self, x_shape: tuple[int, ...], hidden_dims: tuple[int, ...], num_latents: int, code_dim: int, activation_name: str) -> None:
        super().__init__()
        self.x_shape = x_shape
        self.mlp = MLP(math.prod(x_shape), hidden_dims, num_latents * code_dim, activation_name)
        self.latent_shape = (num_latents, code_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, batch = flatten_batch(x, len(self.x_shape))
        return self.mlp(flat.flatten(1)).reshape(*batch, *self.latent_shape)


class SetDecoder(nn.Module):
    """A set of code vectors ``(..., num_latents, D)`` to flat decoder outputs by an MLP."""

    def __init__(self, num_latents: int, code_dim: int, hidden_dims: tuple[int, ...], out_dim: int, activation_name: str) -> None:
        super().__init__()
        self.mlp = MLP(num_latents * code_dim, hidden_dims, out_dim, activation_name)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(z.flatten(-2))
