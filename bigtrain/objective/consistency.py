"""Consistency regularization of D: CR (Zhang et al. 2020, "Consistency Regularization for Generative
Adversarial Networks", eq. 1) and balanced CR (bCR; Zhao et al. 2021, "Improved Consistency
Regularization for GANs", eq. 3):

    L_cr  = lambda_real E[ (D(x) - D(T(x)))^2 ]                                       (CR: reals)
    L_bcr = lambda_real E[ (D(x) - D(T(x)))^2 ] + lambda_fake E[ (D(G(z)) - D(T(G(z))))^2 ]

on D's logits, gradients through both terms. T flips an image horizontally with probability 1/2 and
shifts it by up to 1/8 of its size (the papers' flip and 4-pixel shift at 32x32), filling with zeros;
its draws come from the slot's random stream. The augmented images are one more set in D's main pass;
G's loss does not see them.
"""

from __future__ import annotations

import torch

from ..augment import translation
from .regularizer import Regularizer


def consistency_transform(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """T(x): a random horizontal flip, then a random shift of up to 1/8 of the image."""
    flip = torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=x.device) < 0.5
    return translation(torch.where(flip, x.flip(3), x), 0.125, generator)


class Consistency(Regularizer):
    """Part of every D step: CR with `real` > 0, bCR with `fake` > 0 too."""

    network, title = "d", "consistency"

    def __init__(self, real: float, fake: float):
        self.real, self.fake = real, fake

    @classmethod
    def build(cls, section, networks):
        return cls(section.real, section.fake) if section.real or section.fake else None

    def extra_d_set(self, reals, real_labels, fakes, fake_labels, generator):
        if not self.fake:
            return consistency_transform(reals.detach(), generator), real_labels
        images = torch.cat([reals.detach(), fakes.detach().to(reals.dtype)])
        return consistency_transform(images, generator), torch.cat([real_labels, fake_labels])

    def d_penalty(self, real, fake, extra):
        n, augmented = real.logits.shape[0], extra.logits.float()
        penalty = self.real * (real.logits.float() - augmented[:n]).square().mean()
        if self.fake:
            penalty = penalty + self.fake * (fake.logits.float() - augmented[n:]).square().mean()
        return penalty
