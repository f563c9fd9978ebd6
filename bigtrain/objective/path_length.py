"""Path length regularization (Karras et al. 2020, StyleGAN2 section 3.2, eq. 4), lazy (appendix B):

E_{w, y ~ N(0, I)} ( ||J_w^T y||_2 - a )^2,   a the running mean of the lengths
"""

from __future__ import annotations

import math

import torch

from ..config import ConfigError
from .regularizer import PassTools, Regularizer


def path_lengths(images: torch.Tensor, ws: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """||J_w^T y||_2 per sample, y ~ N(0, I) / sqrt(pixels) (the `noise` given): the gradient of
    <g(w), y> with respect to w, its squared norm summed over w's features and averaged over the
    synthesis layers. Only the first len(noise) images count; the graph is kept."""
    n = noise.shape[0]
    (grad,) = torch.autograd.grad((images[:n] * noise).sum(), ws, create_graph=True)
    return grad[:n].float().square().sum(dim=2).mean(dim=1).sqrt()


class PathLength(Regularizer):
    """Its own G step every `interval` G steps, on micro-batch / batch_shrink new samples (stylegan2-ada's
    Greg phase). The running mean a is averaged over ranks, so every rank keeps the same a."""

    network, title = "g", "path length"

    def __init__(self, weight: float, interval: int, decay: float, batch_shrink: int, device: torch.device):
        self.weight, self.interval, self.decay, self.batch_shrink = weight, interval, decay, batch_shrink
        self.mean = torch.zeros([], device=device)

    @classmethod
    def build(cls, section, networks):
        if section.weight <= 0:
            return None
        return cls(section.weight, section.interval, section.decay, section.batch_shrink, networks.device)

    @classmethod
    def check(cls, key, section, cfg):
        if section.decay > 1:
            raise ConfigError(f"{key}.decay={section.decay} is a rate in [0, 1]")
        if section.weight and cfg.model.name != "stylegan2":
            raise ConfigError(
                f"{key} acts on StyleGAN2's w: it needs model.name=stylegan2, not {cfg.model.name}"
            )

    def penalty(self, fake: torch.Tensor, ws: torch.Tensor, tools: PassTools) -> torch.Tensor:
        """(||J_w^T y|| - a)^2 x weight, updating a (decay `decay`) from this batch first."""
        noise = torch.randn(fake.shape, device=fake.device, generator=tools.generator)
        noise = noise.div(math.sqrt(fake.shape[2] * fake.shape[3])).to(fake.dtype)
        lengths = path_lengths(fake, ws, noise)
        batch_mean = tools.all_mean(lengths.detach().mean())
        self.mean.copy_(self.mean.lerp(batch_mean, self.decay))
        return (lengths - self.mean).square().mean() * self.weight

    def lazy_penalty(self, tools: PassTools, reals) -> tuple[torch.Tensor, torch.Tensor]:
        z, y, kwargs = tools.g_inputs(max(1, tools.micro_batch // self.batch_shrink))
        fake, ws = tools.g(z, y, **kwargs, return_ws=True)
        # Path length does not reach the toRGB biases: the zero term keeps them in the graph.
        return self.penalty(fake, ws, tools), fake[:, 0, 0, 0].sum() * 0

    def state_dict(self) -> dict:
        return {"pl_mean": self.mean.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.mean.copy_(state.get("pl_mean", torch.zeros([])))
