"""Adversarial losses, each beside its equation. D(.) denotes the discriminator's logits; every loss
is a mean over the batch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def hinge_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]   (Lim & Ye 2017; BigGAN's default)."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_G = -E[D(G(z))]."""
    return -fake_logits.mean()


def nonsat_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = E[softplus(-D(x))] + E[softplus(D(G(z)))]   (Goodfellow et al. 2014, logistic)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def nonsat_g(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_G = E[softplus(-D(G(z)))]   (the non-saturating generator loss)."""
    return F.softplus(-fake_logits).mean()


def wgan_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = E[D(G(z))] - E[D(x)]   (Arjovsky et al. 2017); Lipschitz through a regularizer such as
    `regularize.gradient_penalty`."""
    return fake_logits.mean() - real_logits.mean()


def wgan_g(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_G = -E[D(G(z))]."""
    return -fake_logits.mean()


@dataclass(frozen=True)
class AdversarialLoss:
    """D's loss from the logits of reals and fakes, and G's from the logits of its fakes."""

    name: str
    d: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    g: Callable[[torch.Tensor], torch.Tensor]


ADVERSARIAL_LOSSES = {
    "hinge": AdversarialLoss("hinge", hinge_d, hinge_g),
    "nonsat": AdversarialLoss("nonsat", nonsat_d, nonsat_g),
    "wgan": AdversarialLoss("wgan", wgan_d, wgan_g),
}
