"""What the trainer and the evaluator may ask of a generator and a discriminator, whatever the family.

A family's networks subclass these and override what they have; the trainer never probes a network
for attributes or sets attributes on it around a call.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..errors import ConfigError
from .codes import LatentCodes


class GeneratorRole(nn.Module):
    """z (B, z_dim), labels (B,) [, keyword arguments] -> images (B, 3, R, R) in about [-1, 1]."""

    # Style-based: truncation pulls w toward w_avg inside G (psi); else it bounds the z given to G.
    style_based: bool = False
    num_ws: int = 0  # style-based: the number of w inputs of the synthesis network
    # The class-conditioning tensors: regular expressions matched at the start of state-dict keys. Their
    # shapes (or presence) may follow the number of classes; fine-tuning from weights trained with
    # another class count keeps these as built (train.init_from), any other difference is an error.
    class_tensors: tuple[str, ...] = ()
    # InfoGAN's latent codes (models/codes.py), in the last codes.dim columns of z; None: z is noise only.
    # Set by build_models; whoever draws G's latents (GInputs, the Sampler) draws them after the noise.
    codes: LatentCodes | None = None

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
    the objective that read more of D than its score (feature matching, AC-GAN's classifier, InfoGAN's Q)."""

    logits: torch.Tensor  # (B,)
    # (B, F): the penultimate activation, the per-image features D's output layer reads (taken before
    # minibatch discrimination, which mixes in the other images of the set)
    features: torch.Tensor
    classes: torch.Tensor | None  # (B, C): the auxiliary classifier's logits (AC-GAN); None without it
    # (B, Q): InfoGAN's Q head on the features, the parameters of Q(c | x) (models/codes.py); None without it
    codes: torch.Tensor | None = None


class DiscriminatorRole(nn.Module):
    """images (B, 3, R, R), labels (B,), parts -> logits (B,). `parts`: the batch is that many
    contiguous sets (reals, fakes, ...) that D's minibatch statistics must keep apart. With
    `all_outputs=True` it returns a `DOutput` instead: the logits, the features and the class logits.

    FreezeD (`freeze_input_blocks`): the first blocks of `input_blocks()` keep their parameters and
    buffers. They are out of autograd (requires_grad False) and in eval mode (spectral norm's power
    iteration paused), and stay so through `train()` and `requires_grad_()` on the whole D: the trainer
    freezes D as a whole in the G step and unfreezes it after, which then gives back the trainable part
    only."""

    class_tensors: tuple[str, ...] = ()  # as GeneratorRole.class_tensors
    _frozen_blocks: tuple[nn.Module, ...] = ()  # set by freeze_input_blocks

    def input_blocks(self) -> list[nn.Module]:
        """D's blocks in input order (what `model.freeze_d` counts); a block may be several modules
        grouped (its fromRGB, its attention). Parts after the last block (D's output layers) are no block."""
        return []

    def freeze_input_blocks(self, count: int) -> list[nn.Module]:
        """Freeze the first `count` of `input_blocks()` for good (see the class docstring); returns them.
        Call it before the optimizer and the distributed wrappers are built, which then leave them out."""
        blocks = self.input_blocks()
        if count > len(blocks):
            raise ConfigError(
                f"model.freeze_d={count} but this D has {len(blocks)} blocks to freeze (counted from the input side)"
            )
        self._frozen_blocks = tuple(blocks[:count])
        for block in self._frozen_blocks:
            block.requires_grad_(False)
            block.eval()
        return list(self._frozen_blocks)

    def train(self, mode: bool = True):
        super().train(mode)
        for block in self._frozen_blocks:
            block.eval()  # spectral norm's u, v stay as they are
        return self

    def requires_grad_(self, requires_grad: bool = True):
        super().requires_grad_(requires_grad)
        for block in self._frozen_blocks:
            block.requires_grad_(False)
        return self

    def set_phase(self, resolution: int, alpha: float = 1.0) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} does not grow (train.phases needs model.name=progan)"
        )
