"""What the trainer and the evaluator may ask of a generator and a discriminator, whatever the family.

A family's networks subclass these and override what they have; the trainer never probes a network
for attributes or sets attributes on it around a call.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class GeneratorRole(nn.Module):
    """z (B, z_dim), labels (B,) [, keyword arguments] -> images (B, 3, R, R) in about [-1, 1]."""

    # Style-based: truncation pulls w toward w_avg inside G (psi); else it bounds the z given to G.
    style_based: bool = False
    num_ws: int = 0  # style-based: the number of w inputs of the synthesis network

    def pass_kwargs(self, training_g: bool) -> dict:
        """Keyword arguments of a training pass (`training_g`: the G step, which may update running
        statistics such as w_avg)."""
        return {}

    def pass_noise(self, batch: int, generator: torch.Generator, device: torch.device) -> dict:
        """Per-pass random inputs drawn outside the (maybe compiled) forward, from the slot's generator."""
        return {}

    def set_phase(self, resolution: int, alpha: float = 1.0) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} does not grow (train.phases needs model.name=progan)"
        )


class DOutput(NamedTuple):
    """What a discriminator declares beside its logits when asked (`all_outputs=True`), for the parts of
    the objective that read more of D than its score (feature matching, AC-GAN's classifier)."""

    logits: torch.Tensor  # (B,)
    # (B, F): the penultimate activation, the per-image features D's output layer reads (taken before
    # minibatch discrimination, which mixes in the other images of the set)
    features: torch.Tensor
    classes: torch.Tensor | None  # (B, C): the auxiliary classifier's logits (AC-GAN); None without it


class DiscriminatorRole(nn.Module):
    """images (B, 3, R, R), labels (B,), parts -> logits (B,). `parts`: the batch is that many
    contiguous sets (reals, fakes, ...) that D's minibatch statistics must keep apart. With
    `all_outputs=True` it returns a `DOutput` instead: the logits, the features and the class logits."""

    def set_phase(self, resolution: int, alpha: float = 1.0) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} does not grow (train.phases needs model.name=progan)"
        )
