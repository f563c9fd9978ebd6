"""Latent consistency regularization (zCR; Zhao et al. 2021, "Improved Consistency Regularization for
GANs", section 3.2, eqs. 4 and 5). With z' = z + dz, dz ~ N(0, sigma^2 I):

    L_D += lambda_dis E[ (D(G(z)) - D(G(z')))^2 ]          (D: consistent under a small latent change)
    L_G -= lambda_gen E[ ||G(z) - G(z')||^2 ]               (G: a latent change must change the image)

D's term is on its logits (the fakes of the D step and one more set of G(z') in D's pass). G's distance
is averaged over pixels, so lambda_gen does not scale with the resolution. G(z') is G's output for the
same labels and per-pass inputs (StyleGAN2's noise) as G(z): only the latent differs. It is computed by
the bare G module, its batch-norm statistics untouched (G's own step advances them once). The paper's
BigGAN CIFAR-10 settings: lambda_dis 5, lambda_gen 0.5, sigma 0.03.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.layers import frozen_state
from .regularizer import Regularizer


class LatentConsistency(Regularizer):
    """Records the latent of G's last pass and draws its shifted copy z' from the slot's stream. Built
    from `regularize.zcr` as D's part where `dis` > 0 and G's where `gen` > 0."""

    def __init__(self, G: nn.Module, sigma: float):
        self.G, self.sigma = G, sigma
        self.shifted: torch.Tensor | None = None
        self.kwargs: dict = {}

    @classmethod
    def build(cls, section, networks):
        parts: list[Regularizer] = []
        if section.dis > 0:
            parts.append(LatentConsistencyD(networks.G, section.sigma, section.dis))
        if section.gen > 0:
            parts.append(LatentConsistencyG(networks.G, section.sigma, section.gen, networks.accum))
        return parts or None

    def g_kwargs(self, kwargs, z, draw_seed, generator):
        self.shifted = z + self.sigma * torch.randn(z.shape, generator=generator, device=z.device)
        self.kwargs = kwargs  # the same dict G gets: the per-pass noise is added to it after the hooks

    def shifted_images(self, labels: torch.Tensor) -> torch.Tensor:
        with frozen_state(self.G, batchnorm=True):
            return self.G(self.shifted, labels, **self.kwargs)


class LatentConsistencyD(LatentConsistency):
    """D's term, part of every D step: G(z') is one more set in D's pass."""

    network, title = "d", "latent consistency of D"

    def __init__(self, G: nn.Module, sigma: float, weight: float):
        super().__init__(G, sigma)
        self.weight = weight

    def extra_d_set(self, reals, real_labels, fakes, fake_labels, generator):
        with torch.no_grad():
            return self.shifted_images(fake_labels).to(reals.dtype), fake_labels

    def d_penalty(self, real, fake, extra):
        return self.weight * (fake.logits.float() - extra.logits.float()).square().mean()


class LatentConsistencyG(LatentConsistency):
    """G's term, part of every G step (its mean over the micro-batch divided by the accumulation)."""

    network, title = "g", "latent consistency of G"

    def __init__(self, G: nn.Module, sigma: float, weight: float, accum: int):
        super().__init__(G, sigma)
        self.weight, self.accum = weight, accum

    def g_penalty(self, fake, real, last_micro_batch):
        shifted = self.shifted_images(fake.labels)
        distance = (fake.images.float() - shifted.float()).square().mean()
        return -self.weight * distance / self.accum
