"""The two views the objective has of the networks: G's inputs for a micro-batch slot, and D's scores of
images as D sees them (augmented, with the sets of a batch kept apart)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from ..augment import diff_augment
from ..augment.ada import AdaptiveAugment
from ..eval.sampling import random_labels
from ..models.roles import DOutput
from ..seeds import seed_for
from .regularizer import DScores, Regularizer


class GInputs:
    """Latents, labels and G's keyword arguments, one micro-batch slot per call.

    The draws of slot k come from a generator seeded by (seed, k), and rank r of W fills slots r, r + W,
    ...: one process with accum A x W runs the same computation as W processes with accum A, and a
    resumed run only needs the slot counter (`draws`). G's per-pass random inputs (StyleGAN2's per-pixel
    noise) are drawn here too, so a compiled G holds no generator. The same generator then serves the
    rest of the slot's draws (augmentation, interpolates, path-length noise)."""

    def __init__(
        self, G: nn.Module, seed: int, z_dim: int, num_classes: int, rank: int, world_size: int,
        device: torch.device, hooks: Sequence[Regularizer] = (),
    ):  # fmt: skip
        self.G, self.seed, self.z_dim, self.num_classes = G, seed, z_dim, num_classes
        self.rank, self.world_size, self.device = rank, world_size, device
        self.hooks = list(hooks)
        self.generator = torch.Generator(device)
        self.draws = 0

    def latents(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """z and labels of the next slot. Where G declares latent codes (InfoGAN), they are drawn after
        the labels and join z after the noise (models/codes.py)."""
        slot = self.draws * self.world_size + self.rank
        self.draws += 1
        self.generator.manual_seed(seed_for(self.seed, slot))
        z = torch.randn(n, self.z_dim, device=self.device, generator=self.generator)
        y = random_labels(n, self.num_classes, self.generator, self.device)
        if self.G.codes is not None:
            z = torch.cat([z, self.G.codes.draw(n, self.generator, self.device)], dim=1)
        return z, y

    def __call__(self, batch: int, training_g: bool = False) -> tuple[torch.Tensor, torch.Tensor, dict]:
        z, y = self.latents(batch)
        kwargs = self.G.pass_kwargs(training_g)
        for hook in self.hooks:
            hook.g_kwargs(kwargs, z, seed_for(self.seed, self.draws, 1), self.generator)
        kwargs.update(self.G.pass_noise(batch, self.generator, z.device))
        return z, y, kwargs


def instance_noise_sigma(sigma: float, anneal_kimg: float, kimg: float) -> float:
    """Instance noise's standard deviation at `kimg`: `sigma`, annealed linearly to 0 over `anneal_kimg`
    (0: constant)."""
    if anneal_kimg <= 0:
        return sigma
    return sigma * max(0.0, 1.0 - kimg / anneal_kimg)


class DView:
    """D's logits of images as D sees them: through the differentiable augmentation (the same for reals
    and fakes, in D and G steps alike), plus instance noise (Sonderby et al. 2016, "Amortised MAP Inference
    for Image Super-resolution", section 3.2: N(0, sigma^2) on every image D sees, so that the real and
    generated distributions overlap; `noise_sigma`, set by the trainer each step), the `parts` sets of a
    batch (reals, fakes, ...) kept apart by D's minibatch statistics. `train`: the wrapped (maybe
    compiled) D of the D step, or its eager module where the loss differentiates a gradient
    (AOTAutograd has no double backward); else the bare D, with `params` (name -> tensor) in place of
    its parameters where given (unrolled GAN). ADA's pipeline at its current p (`ada`) follows the
    differentiable augmentation. `all_outputs`: D's declared outputs (a
    DOutput: logits, features, class logits) instead of its logits alone. `logits_of` (DOutput -> (B,)):
    D's adversarial logits from its declared outputs instead of its own logit (Objective.d_logits: the
    semi-supervised GAN's log Z(x)), in every view; None: D's own."""

    def __init__(
        self, D: nn.Module, d_train: Callable, d_train_eager: Callable, augment: list[str],
        generator: torch.Generator, ada: AdaptiveAugment | None = None,
        logits_of: Callable[[DOutput], torch.Tensor] | None = None,
    ):  # fmt: skip
        self.D, self.d_train, self.d_train_eager = D, d_train, d_train_eager
        self.augment, self.generator, self.ada = augment, generator, ada
        self.logits_of = logits_of
        self.noise_sigma = 0.0

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, parts: int = 1, train: bool = True,
        double_backward: bool = False, all_outputs: bool = False,
        params: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor | DOutput:  # fmt: skip
        if self.augment:
            images = diff_augment(images, self.augment, self.generator)
        if self.ada is not None:
            images = self.ada(images, self.generator)
        if self.noise_sigma > 0:
            noise = torch.randn(images.shape, generator=self.generator, device=images.device)
            images = images + (self.noise_sigma * noise).to(images.dtype)
        d = (self.d_train_eager if double_backward else self.d_train) if train else self.D
        if params is not None:  # the bare D with these parameters instead of its own (unrolled GAN)
            d = partial(_call_with, self.D, params)
        if not all_outputs and self.logits_of is None:
            return d(images, labels, parts=parts).float()
        out = d(images, labels, parts=parts, all_outputs=True)
        out = DOutput(*(t if t is None else t.float() for t in out))
        if self.logits_of is not None:
            out = out._replace(logits=self.logits_of(out))
        return out if all_outputs else out.logits


def _call_with(module: nn.Module, params: dict[str, torch.Tensor], *args, **kwargs):
    return torch.func.functional_call(module, params, args, kwargs)


def split_scores(sets: list[tuple[torch.Tensor, torch.Tensor]], out: torch.Tensor | DOutput) -> list[DScores]:
    """D's view of each (images, labels) set of one D call on their concatenation, in order: `out` is
    its logits, or its DOutput (features and class logits too)."""
    out = out if isinstance(out, DOutput) else DOutput(out, None, None)
    if len(sets) == 1:
        return [DScores(*sets[0], *out)]
    sizes = [len(images) for images, _ in sets]
    split = [[None] * len(sets) if t is None else t.split(sizes) for t in out]
    return [DScores(images, labels, *parts) for (images, labels), *parts in zip(sets, *split)]
