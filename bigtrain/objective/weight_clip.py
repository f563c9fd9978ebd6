"""Weight clipping (Arjovsky et al. 2017, "Wasserstein GAN", algorithm 1): after every optimizer step of
the critic D, each of its parameters is clamped to [-c, c], which keeps D in a compact set of
K-Lipschitz functions for some K. The paper's setting: c = 0.01 with RMSProp at lr 5e-5
(`optim.name: rmsprop`).
"""

from __future__ import annotations

import torch

from ..config import ConfigError
from .regularizer import Regularizer


@torch.no_grad()
def clip_weights_(module: torch.nn.Module, value: float) -> None:
    """Clamp the parameters D's optimizer trains (FreezeD's frozen blocks stay as they are)."""
    for p in module.parameters():
        if p.requires_grad:
            p.clamp_(-value, value)


class WeightClip(Regularizer):
    """After every D step: D's parameters clamped to [-value, value]."""

    network, title = "d", "weight clipping"

    def __init__(self, value: float, D: torch.nn.Module):
        self.value, self.D = value, D

    @classmethod
    def build(cls, section, networks):
        return cls(section.value, networks.D) if section.value > 0 else None

    @classmethod
    def check(cls, key, section, cfg):
        if section.value > 0 and cfg.dist.backend == "deepspeed":
            raise ConfigError(
                f"{key}.value with dist.backend=deepspeed: ZeRO keeps its own copy of D's weights, which "
                "clipping the module's would not reach; use dist.backend=ddp or accelerate"
            )

    def after_step(self) -> None:
        clip_weights_(self.D, self.value)
