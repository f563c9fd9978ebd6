"""A generic convolutional encoder x -> z, for the parts of the objective that invert G (MRGAN's E).

DCGAN's discriminator trunk (Radford et al. 2016, section 3): 4x4 convolutions of stride 2, each halving
the side from the model's resolution down to 4x4 and doubling the width (from `width`, capped at 8 x
width), LeakyReLU(0.2), no normalization (the encoder's output must not depend on the other images of
its batch); then one linear layer from the 4x4 map to z. Images below the model's resolution (a ProGAN
phase) are upsampled to it first (nearest neighbour), so one encoder serves every phase.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Encoder(nn.Module):
    """images (B, 3, R, R) in about [-1, 1], R <= `resolution` -> z (B, z_dim)."""

    def __init__(self, resolution: int, z_dim: int, width: int = 32):
        super().__init__()
        if resolution < 4 or resolution & (resolution - 1):
            raise ValueError(f"the encoder takes a power-of-two resolution of at least 4, not {resolution}")
        layers: list[nn.Module] = []
        channels, out, side = 3, width, resolution
        while side > 4:
            layers += [nn.Conv2d(channels, out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            channels, out, side = out, min(2 * out, 8 * width), side // 2
        self.trunk = nn.Sequential(*layers)
        self.out = nn.Linear(channels * 4 * 4, z_dim)
        self.resolution = resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.resolution:
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="nearest")
        return self.out(self.trunk(x).flatten(1))
