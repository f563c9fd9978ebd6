"""Feature matching (Salimans et al. 2016, "Improved Techniques for Training GANs", section 3.1): G
matches the statistics of D's intermediate features f on reals instead of maximizing D's output,

    L_FM = || E_x f(x) - E_z f(G(z)) ||_2^2

with f D's penultimate activation, the per-image features its output layer reads (declared by D: see
models.roles.DOutput). The expectations are means over a micro-batch: the fakes of G's micro-batch and,
without gradient, the reals of the matching micro-batch of the last D step, scored by the current D.
The norm is the paper's squared L2 norm, a sum over the F features (the authors' code takes the mean
over them: the same loss at weight / F).

The paper replaces G's loss with L_FM (`replace`); by default weight x L_FM is added to the adversarial
G loss, the form most code bases use.
"""

from __future__ import annotations

import torch

from ..config import ConfigError
from .regularizer import DScores, Regularizer


def feature_matching_loss(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """|| mean f(x) - mean f(G(z)) ||^2 over (B, F) features; no gradient reaches the reals' side."""
    return (real_features.detach().float().mean(dim=0) - fake_features.float().mean(dim=0)).square().sum()


class FeatureMatching(Regularizer):
    """Part of every G step: weight x L_FM on D's features of the step's fakes and the D step's reals."""

    network, title = "g", "feature matching"
    d_outputs, needs_reals = True, True

    def __init__(self, weight: float, replace: bool, accum: int = 1):
        self.weight, self.replaces_g_loss, self.accum = weight, replace, accum

    @classmethod
    def build(cls, section, networks):
        return cls(section.weight, section.replace, networks.accum) if section.weight > 0 else None

    @classmethod
    def check(cls, key, section, cfg):
        if section.replace and not section.weight > 0:
            raise ConfigError(
                f"{key}.replace=true leaves G feature matching alone: it needs {key}.weight > 0"
            )

    def g_penalty(self, fake: DScores, real: DScores | None, last_micro_batch: bool) -> torch.Tensor:
        # A mean over the micro-batch, as the adversarial G loss: divided by the accumulation here (the
        # trainer does not divide G's penalties).
        return self.weight * feature_matching_loss(real.features, fake.features) / self.accum
