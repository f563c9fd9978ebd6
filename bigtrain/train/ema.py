"""Exponential moving average of G, with its half-life in kimg (Karras et al.'s convention)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def ema_beta(images_per_step: int, halflife_kimg: float, cur_kimg: float, rampup: float = 0.0) -> float:
    """Per-step decay beta such that G_ema keeps half its weight after `halflife_kimg` of images.

    beta = 0.5 ** (images_per_step / halflife_images); with a ramp-up, the half-life is at most
    rampup x (images seen so far), so early EMA does not drag on random initial weights.
    """
    halflife_images = halflife_kimg * 1000.0
    if rampup > 0:
        halflife_images = min(halflife_images, cur_kimg * 1000.0 * rampup)
    if halflife_images <= 0:
        return 0.0
    return 0.5 ** (images_per_step / halflife_images)


class EMA:
    """Holds G_ema: parameters averaged, buffers (BN statistics, SN vectors) copied from G."""

    def __init__(self, model: nn.Module):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._params = list(self.model.parameters())
        self._buffers = list(self.model.buffers())

    @torch.no_grad()
    def update(self, model: nn.Module, beta: float) -> None:
        source = list(model.parameters())
        if beta == 0.0:
            torch._foreach_copy_(self._params, source)
        else:
            torch._foreach_lerp_(self._params, source, 1.0 - beta)
        if self._buffers:  # models without BN or SN (ProGAN) have none
            torch._foreach_copy_(self._buffers, list(model.buffers()))


@torch.no_grad()
def refresh_batchnorm_stats(
    model: nn.Module, sample_inputs: Callable[[], tuple[torch.Tensor, torch.Tensor]], num_batches: int
) -> None:
    """BigGAN's "standing statistics": recompute BN running mean/var as the plain average over
    `num_batches` forward passes of fresh inputs, then leave the model in eval mode.

    Only the BN layers run in training mode, so spectral-norm power iterations stay frozen.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not norms or num_batches == 0:
        model.eval()
        return
    model.eval()
    momenta = []
    for bn in norms:
        momenta.append(bn.momentum)
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
        bn.train()
    for _ in range(num_batches):
        model(*sample_inputs())
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
        bn.eval()
