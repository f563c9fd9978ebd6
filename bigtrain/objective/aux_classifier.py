"""AC-GAN's auxiliary classifier (Odena et al. 2017, "Conditional Image Synthesis with Auxiliary
Classifier GANs", eqs. 1-2). D also predicts the class c of every image it sees, through a class head on
its penultimate features (`model.aux_classifier`; declared by D: see models.roles.DOutput):

    L_S = E[log P(S = real | X_real)] + E[log P(S = fake | X_fake)]
    L_C = E[log P(C = c | X_real)] + E[log P(C = c | X_fake)]

D maximizes L_S + L_C and G maximizes L_C - L_S. Here L_S is the adversarial loss (`loss.name`) and
-L_C a cross-entropy, so D's loss gains weight x (CE(reals, their labels) + CE(fakes, the labels G was
given)) and G's loss weight x CE(its fakes, their labels). The classifier sits beside the projection
that BigGAN's and StyleGAN2's conditional D already have; it needs a conditional dataset.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import ConfigError
from .regularizer import DScores, Regularizer


def class_loss(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-E[log P(C = c | X)]: the mean cross-entropy of (B, C) class logits against (B,) labels."""
    return F.cross_entropy(class_logits.float(), labels)


class AuxClassifier(Regularizer):
    """One on each network, part of every main step: D's loss adds the classifier's cross-entropy on
    reals and fakes, G's on its fakes."""

    d_outputs = True

    def __init__(self, network: str, weight: float, accum: int = 1):
        self.network, self.title = network, f"auxiliary classifier ({network.upper()})"
        self.weight, self.accum = weight, accum

    @classmethod
    def build(cls, section, networks):
        if section.weight <= 0:
            return None
        if networks.num_classes <= 1:
            raise ConfigError(
                f"regularize.aux_classifier.weight={section.weight} classifies the labels of a conditional "
                f"dataset, and this run has {networks.num_classes} class (see data.path and model.num_classes)"
            )
        return [cls("d", section.weight), cls("g", section.weight, networks.accum)]

    @classmethod
    def check(cls, key, section, cfg):
        head = cfg.model.aux_classifier
        if section.weight and not head:
            raise ConfigError(
                f"{key}.weight={section.weight} trains D's class head, which model.aux_classifier=true adds"
            )
        if head and not section.weight and not cfg.regularize.semi_supervised.weight:
            raise ConfigError(
                f"model.aux_classifier=true adds a class head to D that only {key}.weight trains (AC-GAN; "
                "or regularize.semi_supervised.weight): set one > 0 (AC-GAN: 1) or leave the head off"
            )
        if section.weight and cfg.model.num_classes == 1:
            raise ConfigError(
                f"{key}.weight={section.weight} classifies the labels of a conditional dataset, and "
                "model.num_classes=1 makes the run unconditional"
            )

    def d_penalty(self, real: DScores, fake: DScores, extra: DScores | None) -> torch.Tensor:
        return self.weight * (class_loss(real.classes, real.labels) + class_loss(fake.classes, fake.labels))

    def g_penalty(self, fake: DScores, real: DScores | None, last_micro_batch: bool) -> torch.Tensor:
        # A mean over the micro-batch: divided by the accumulation here (the trainer divides D's loss,
        # not G's penalties).
        return self.weight * class_loss(fake.classes, fake.labels) / self.accum
