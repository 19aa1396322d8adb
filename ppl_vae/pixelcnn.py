"""A gated PixelCNN: masked convolutions in a vertical and a horizontal stack (no Pyro in here).

The network maps an image ``x`` of shape ``(batch, 1, height, width)`` to per-pixel logits such that the
logits at pixel ``i`` (raster order: row by row, left to right) depend only on the pixels before ``i``.
That is what lets :class:`ppl_vae.autoregressive.PixelCNNDistribution` score an image in one pass
(teacher forcing) and sample it pixel by pixel.

The two stacks remove the blind spot of the original PixelCNN:

- the **vertical stack** sees every pixel in the rows above (a ``(k//2 + 1) x k`` kernel padded at the top
  only); its first layer (mask ``A``) drops the current row, later layers (mask ``B``) keep it, since by
  then the features of the current row already depend on the rows above only;
- the **horizontal stack** sees the pixels to the left in the current row (a ``1 x (k//2 + 1)`` kernel
  padded on the left only; mask ``A`` drops the current pixel in the first layer) and reads the vertical
  stack at the same position.

Every layer is gated, ``tanh(W_f * x + V_f h) * sigmoid(W_g * x + V_g h)``, where ``h`` is the conditioning:
a vector (the decoder's output for z, or a label) added to the gates everywhere, and optionally a spatial
map (one vector per pixel, from a decoder that draws a map) added pixel by pixel.

References

- van den Oord, A., Kalchbrenner, N. & Kavukcuoglu, K. (2016). Pixel Recurrent Neural Networks. ICML.
- van den Oord, A., Kalchbrenner, N., Vinyals, O., Espeholt, L., Graves, A. & Kavukcuoglu, K. (2016).
  Conditional Image Generation with PixelCNN Decoders. NeurIPS.
- Gulrajani, I. et al. (2017). PixelVAE: A Latent Variable Model for Natural Images. ICLR.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .schema import POSITIVE_INT, check_fields, documented, int_at_least, one_of

__all__ = ["MASK_TYPES", "STACKS", "OUTPUTS", "CONDITIONS", "PixelCNNConfig", "MaskedConv2d", "GatedLayer", "GatedPixelCNN"]

#: ``A``: the first layer, which must not see the pixel it predicts; ``B``: later layers
MASK_TYPES = ("A", "B")
#: the two stacks of the gated PixelCNN
STACKS = ("vertical", "horizontal")
#: what the network predicts per pixel: number of logits per pixel
OUTPUTS = {"bernoulli": 1, "categorical256": 256}
#: how the decoder's output conditions the network: a vector per image, or a map (a vector per pixel)
CONDITIONS = ("vector", "spatial")


@documented
@dataclass(frozen=True)
class PixelCNNConfig:
    """Configuration of a gated PixelCNN decoder (``pixelcnn:`` under ``observed:`` of a spec)."""

    #: gated layers (each has a vertical and a horizontal convolution)
    num_layers: int = 3
    #: feature channels of each stack
    channels: int = 32
    #: kernel width k (odd, >= 3): the vertical stack reads k//2 rows up, the horizontal k//2 pixels left
    kernel_size: int = 3
    #: bernoulli (binary pixels, one logit each) | categorical256 (grey levels 0..255, 256 logits each)
    output: str = "bernoulli"
    #: vector (the decoder outputs cond_dim numbers per image) | spatial (cond_channels per pixel)
    condition: str = "vector"
    #: size of the conditioning vector (condition: vector)
    cond_dim: int = 32
    #: channels of the conditioning map (condition: spatial)
    cond_channels: int = 4

    def __post_init__(self) -> None:
        check_fields(
            self, "pixelcnn", num_layers=POSITIVE_INT, channels=POSITIVE_INT, kernel_size=int_at_least(3),
            output=one_of(OUTPUTS), condition=one_of(CONDITIONS), cond_dim=POSITIVE_INT, cond_channels=POSITIVE_INT,
        )
        if self.kernel_size % 2 == 0:
            raise ValueError(f"pixelcnn.kernel_size must be odd, got {self.kernel_size}")

    @property
    def receptive_reach(self) -> int:
        """How many rows up (and columns either side) the output at a pixel can see."""
        return self.num_layers * (self.kernel_size // 2)


class MaskedConv2d(nn.Conv2d):
    """A causal convolution of one stack, with mask type ``A`` or ``B``.

    ``vertical``: kernel ``(k//2 + 1, k)``, padded ``k//2`` rows at the top and ``k//2`` columns either side, so
    the output at ``(i, j)`` reads rows ``i - k//2 .. i`` (type ``B``) or ``i - k//2 .. i - 1`` (type ``A``).
    ``horizontal``: kernel ``(1, k//2 + 1)``, padded ``k//2`` columns on the left, so the output at ``(i, j)``
    reads row ``i``, columns ``j - k//2 .. j`` (type ``B``) or ``.. j - 1`` (type ``A``).

    :param str stack: ``vertical`` or ``horizontal``.
    :param str mask_type: ``A`` or ``B``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stack: str, mask_type: str) -> None:
        if stack not in STACKS or mask_type not in MASK_TYPES:
            raise ValueError(f"a masked convolution needs stack in {STACKS} and mask_type in {MASK_TYPES}, got {stack!r}, {mask_type!r}")
        half = kernel_size // 2
        shape = (half + 1, kernel_size) if stack == "vertical" else (1, half + 1)
        super().__init__(in_channels, out_channels, shape, padding=0)
        self.stack, self.mask_type = stack, mask_type
        # F.pad order: (left, right, top, bottom)
        self.pads = (half, half, half, 0) if stack == "vertical" else (half, 0, 0, 0)
        mask = torch.ones(shape)
        if mask_type == "A":
            if stack == "vertical":
                mask[-1, :] = 0  # the current row
            else:
                mask[:, -1] = 0  # the current pixel
        self.register_buffer("mask", mask)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return F.conv2d(F.pad(inputs, self.pads), self.weight * self.mask, self.bias)


def _gate(pre: torch.Tensor) -> torch.Tensor:
    # (B, 2p, H, W) -> (B, p, H, W)
    f, g = pre.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer(nn.Module):
    """One gated layer: a vertical and a horizontal masked convolution, the link from the vertical stack to the
    horizontal one, the conditioning added to both gates, and a residual connection on the horizontal stack
    (not in the first layer, whose input is the image itself).

    :param int in_channels: input channels (the image's in the first layer, ``channels`` after).
    :param int channels: output channels of each stack.
    :param int kernel_size: the kernel width k.
    :param str mask_type: ``A`` (first layer) or ``B``.
    :param int cond_dim: size of the conditioning vector (0: none).
    :param int cond_channels: channels of the conditioning map (0: none).
    """

    def __init__(self, in_channels: int, channels: int, kernel_size: int, mask_type: str, cond_dim: int = 0, cond_channels: int = 0) -> None:
        super().__init__()
        self.vertical = MaskedConv2d(in_channels, 2 * channels, kernel_size, "vertical", mask_type)
        self.horizontal = MaskedConv2d(in_channels, 2 * channels, kernel_size, "horizontal", mask_type)
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        self.cond_vector = nn.Linear(cond_dim, 4 * channels, bias=False) if cond_dim else None
        self.cond_map = nn.Conv2d(cond_channels, 4 * channels, 1, bias=False) if cond_channels else None
        self.residual = mask_type == "B" and in_channels == channels

    def _conditioning(self, h: torch.Tensor | None, s: torch.Tensor | None) -> list[torch.Tensor]:
        terms = []
        if self.cond_vector is not None and h is not None:
            terms.append(self.cond_vector(h)[:, :, None, None])  # (B, 4p, 1, 1): the same at every pixel
        if self.cond_map is not None and s is not None:
            terms.append(self.cond_map(s))  # (B, 4p, H, W)
        return terms

    def forward(self, v: torch.Tensor, x: torch.Tensor, h: torch.Tensor | None = None, s: torch.Tensor | None = None):
        """``v``, ``x``: the vertical and horizontal stacks' inputs; ``h``: ``(B, cond_dim)``; ``s``: ``(B, cond_channels, H, W)``."""
        v_pre, x_pre = self.vertical(v), self.horizontal(x)
        for term in self._conditioning(h, s):
            v_term, x_term = term.chunk(2, dim=1)
            v_pre, x_pre = v_pre + v_term, x_pre + x_term
        # The link reads the vertical stack after its conditioning, so both halves of a conditioning term have a
        # gradient even in the last layer, whose vertical output is unused (TorchScript's autodiff, used by the
        # JIT estimators, fails on a chunk with one half left without a gradient).
        x_pre = x_pre + self.vertical_to_horizontal(v_pre)
        x_out = self.out(_gate(x_pre))
        return _gate(v_pre), (x + x_out if self.residual else x_out)


class GatedPixelCNN(nn.Module):
    """A gated PixelCNN over one-channel images: ``forward(x, h, s)`` returns per-pixel logits.

    :param int image_channels: channels of the image (one: colour channels would need masks across channels).
    :param PixelCNNConfig config: layers, channels, kernel, output kind and conditioning.
    :param int num_outputs: logits per pixel, overriding ``config.output`` (e.g. K for a K-way categorical over
        code indices, :class:`~ppl_vae.models.code_prior.PixelCNNPrior`); None: those of ``config.output``.
    """

    def __init__(self, image_channels: int, config: PixelCNNConfig, num_outputs: int | None = None) -> None:
        super().__init__()
        if image_channels != 1:
            raise ValueError(f"the PixelCNN models one-channel images, got {image_channels} channels")
        self.config = config
        p = config.channels
        cond_dim = config.cond_dim if config.condition == "vector" else 0
        cond_channels = config.cond_channels if config.condition == "spatial" else 0
        self.layers = nn.ModuleList(
            GatedLayer(image_channels if i == 0 else p, p, config.kernel_size, "A" if i == 0 else "B", cond_dim, cond_channels)
            for i in range(config.num_layers)
        )
        self.logits_per_pixel = OUTPUTS[config.output] if num_outputs is None else int(num_outputs)
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(p, p, 1), nn.ReLU(), nn.Conv2d(p, self.logits_per_pixel, 1))

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None, s: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, logits_per_pixel, H, W)`` for images ``x`` ``(B, 1, H, W)`` (floats, centred on 0).

        The logits at a pixel depend on ``x`` only through the pixels before it in raster order.
        """
        v = x
        for layer in self.layers:
            v, x = layer(v, x, h, s)
        return self.head(x)
