"""WGAN-GP's gradient penalty (Gulrajani et al. 2017) with ProGAN's drift term (Karras et al. 2018, A.1):

lambda E[(||grad_x^ D(x^)|| - 1)^2] + eps_drift E[D(x)^2],   x^ = a random real/fake interpolate
"""

from __future__ import annotations

import torch

from ..config import ConfigError
from .regularizer import Regularizer


def wgan_gp_terms(
    interp_logits: torch.Tensor,
    interp: torch.Tensor,
    real_logits: torch.Tensor,
    gp_weight: float,
    drift: float,
) -> torch.Tensor:
    """The penalty and drift. `interp` must require grad and feed `interp_logits`."""
    (grad,) = torch.autograd.grad(interp_logits.sum(), interp, create_graph=True)
    penalty = (grad.flatten(1).norm(dim=1) - 1.0).pow(2).mean()
    return gp_weight * penalty + drift * real_logits.pow(2).mean()


class GradientPenalty(Regularizer):
    """Part of every D step: the interpolates are a third set in D's main pass (D's minibatch statistics
    keep the sets apart), so D runs once per micro-batch."""

    network, title = "d", "gradient penalty"
    double_backward = True

    def __init__(self, weight: float, drift: float):
        self.weight, self.drift = weight, drift

    @classmethod
    def build(cls, section, networks):
        return cls(section.weight, section.drift) if section.weight or section.drift else None

    @classmethod
    def check(cls, key, section, cfg):
        if cfg.loss.name == "wgan" and not section.weight and not cfg.regularize.weight_clip.value:
            raise ConfigError(
                f"loss.name=wgan needs D kept Lipschitz: set {key}.weight (WGAN-GP: 10) or "
                "regularize.weight_clip.value (WGAN: 0.01)"
            )

    def extra_d_set(self, reals, real_labels, fakes, fake_labels, generator):
        eps = torch.rand(reals.shape[0], 1, 1, 1, device=reals.device, generator=generator)
        interp = torch.lerp(fakes.detach().to(reals.dtype), reals.detach(), eps).requires_grad_(True)
        return interp, fake_labels

    def d_penalty(self, real, fake, extra):
        return wgan_gp_terms(extra.logits, extra.images, real.logits, self.weight, self.drift)
