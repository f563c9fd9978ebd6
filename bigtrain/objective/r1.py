"""R1 (Mescheder et al. 2018, "Which Training Methods for GANs do actually Converge?"), lazy as in
StyleGAN2 (appendix B):

    R1 = (gamma / 2) E_x[ ||grad_x D(x)||^2 ]   on reals
"""

from __future__ import annotations

import torch

from ..config import ConfigError
from .regularizer import PassTools, Regularizer


def r1_penalty(real_logits: torch.Tensor, reals: torch.Tensor, gamma: float) -> torch.Tensor:
    """R1 on reals, which must require grad. The graph is kept (create_graph) so the penalty trains D."""
    (grad,) = torch.autograd.grad(real_logits.sum(), reals, create_graph=True)
    return grad.float().square().sum(dim=(1, 2, 3)).mean() * (gamma / 2)


class R1(Regularizer):
    """Its own D step every `interval` D steps, on the main step's reals (stylegan2-ada's Dreg phase)."""

    network, title = "d", "R1"

    def __init__(self, gamma: float, interval: int):
        self.gamma, self.interval = gamma, interval

    @classmethod
    def build(cls, section, networks):
        return cls(section.gamma, section.interval) if section.gamma > 0 else None

    @classmethod
    def check(cls, key, section, cfg):
        gp = cfg.regularize.gradient_penalty
        if section.gamma and (gp.weight or gp.drift):
            raise ConfigError(f"{key} and regularize.gradient_penalty are two gradient penalties; use one")

    def lazy_penalty(self, tools: PassTools, reals) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = reals
        x = x.detach().requires_grad_(True)
        out = tools.d(x, y, double_backward=True, all_outputs=True)
        # R1 does not reach D's last bias, nor AC-GAN's class head: the zero term keeps them in the graph.
        zero = out.logits.sum() * 0
        if out.classes is not None:
            zero = zero + out.classes.sum() * 0
        return r1_penalty(out.logits, x, self.gamma), zero
