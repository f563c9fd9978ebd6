"""Mixing regularization (Karras et al. 2019, StyleGAN section 3.1): with probability p, a G pass takes
a second latent's w from a random layer on, so that neighbouring styles do not learn to depend on each
other. It changes G's inputs and adds no penalty."""

from __future__ import annotations

import random

import torch

from ..config import ConfigError
from .regularizer import Regularizer


class StyleMixing(Regularizer):
    network, title = "g", "style mixing"

    def __init__(self, prob: float, num_ws: int):
        self.prob, self.num_ws = prob, num_ws

    @classmethod
    def build(cls, section, networks):
        return cls(section.prob, networks.G.num_ws) if section.prob > 0 else None

    @classmethod
    def check(cls, key, section, cfg):
        if section.prob > 1:
            raise ConfigError(f"{key}.prob={section.prob} is a probability in [0, 1]")
        if section.prob and cfg.model.name != "stylegan2":
            raise ConfigError(
                f"{key} mixes StyleGAN2's w: it needs model.name=stylegan2, not {cfg.model.name}"
            )

    def g_kwargs(self, kwargs: dict, z: torch.Tensor, draw_seed: int, generator: torch.Generator) -> None:
        draw = random.Random(draw_seed)  # host-side: no device sync for the coin or the layer
        if draw.random() < self.prob:
            kwargs["mix_z"] = torch.randn(z.shape, device=z.device, generator=generator)
            kwargs["mix_cutoff"] = draw.randrange(1, self.num_ws)
