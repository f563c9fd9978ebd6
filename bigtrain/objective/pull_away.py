"""EBGAN's pull-away term (Zhao, Mathieu & LeCun 2017, section 2.4, "repelling regularizer"), on G:

    f_PT(S) = 1 / (N (N - 1)) sum_i sum_{j != i} ( S_i^T S_j / (||S_i|| ||S_j||) )^2

over the N fakes of a batch, S_i D's representation of fake i (the auto-encoder's code, which EBGAN's
D declares as its features: models/ebgan.py). The squared cosine similarity, averaged over the ordered
pairs of distinct fakes, is 1 when the codes are parallel and 0 when they are orthogonal, whatever
their norms: G is pushed to spread its samples over directions of the code, against mode collapse.
EBGAN-PT trains G on L_G + lambda_PT f_PT (the paper: lambda_PT = 0.1), `regularize.pull_away.weight`.

The pairs are those within each micro-batch (with train.accum or several ranks, N is the micro-batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .regularizer import DScores, Regularizer


def pull_away_term(codes: torch.Tensor) -> torch.Tensor:
    """f_PT of (N, F) codes: the mean squared cosine similarity over the N (N - 1) ordered pairs i != j
    (0 for N < 2: no pairs). A zero code counts as orthogonal to every other."""
    n = codes.shape[0]
    if n < 2:
        return codes.sum() * 0.0
    s = F.normalize(codes.float().flatten(1), dim=1)
    cosine = s @ s.t()
    off_diagonal = cosine.square().sum() - cosine.diagonal().square().sum()
    return off_diagonal / (n * (n - 1))


class PullAway(Regularizer):
    """Part of every G step: weight x f_PT of D's features of the step's fakes."""

    network, title = "g", "pull-away term"
    d_outputs = True

    def __init__(self, weight: float, accum: int = 1):
        self.weight, self.accum = weight, accum

    @classmethod
    def build(cls, section, networks):
        return cls(section.weight, networks.accum) if section.weight > 0 else None

    def g_penalty(self, fake: DScores, real: DScores | None, last_micro_batch: bool) -> torch.Tensor:
        # A mean over the micro-batch, as the adversarial G loss: divided by the accumulation here (the
        # trainer does not divide G's penalties).
        return self.weight * pull_away_term(fake.features) / self.accum
