"""LeCam regularization (Tseng et al. 2021, "Regularizing Generative Adversarial Networks under Limited
Data", eq. 3), on D:

    R_LC = E_x[ ||D(x) - alpha_F||^2 ] + E_z[ ||D(G(z)) - alpha_R||^2 ]

alpha_R and alpha_F are exponential moving averages of D's mean output on reals and on fakes (the
anchors). As in the authors' code (google/lecam-gan), each side is penalized only where it passes the
other side's anchor: relu(D(x) - alpha_F)^2 and relu(alpha_R - D(G(z)))^2. The anchors are
zero-debiased (their TensorFlow code's `zero_debias=True`): after n updates, alpha = EMA / (1 - decay^n),
a weighted mean of the outputs seen so far.

The anchors move once per D step, after its backward, by the step's mean over every micro-batch and
every rank; the penalty of a step uses the anchors of the steps before it (the authors fold the current
batch in first: with decay 0.99 that is 1% of one batch's mean). So every rank holds the same anchors,
the result does not depend on the split into micro-batches or ranks, and the anchors are checkpoint
state: a resumed run continues with them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import ConfigError
from .regularizer import Regularizer


def lecam_penalty(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, anchor_real: torch.Tensor, anchor_fake: torch.Tensor
) -> torch.Tensor:
    """R_LC without its weight: mean relu(D(x) - alpha_F)^2 + mean relu(alpha_R - D(G(z)))^2."""
    return (real_logits - anchor_fake).relu().square().mean() + (
        anchor_real - fake_logits
    ).relu().square().mean()


class LeCam(Regularizer):
    """Part of every D step: the weighted penalty against the anchors, which then move (see above)."""

    network, title = "d", "LeCam"

    def __init__(
        self,
        weight: float,
        decay: float,
        device: torch.device,
        all_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    ):
        self.weight, self.decay, self.all_mean = weight, decay, all_mean
        self.ema = torch.zeros(2, device=device)  # (real, fake), before debiasing
        self.updates = 0
        self._step_means: list[torch.Tensor] = []  # (real, fake) mean output of each micro-batch

    @classmethod
    def build(cls, section, networks):
        if section.weight <= 0:
            return None
        return cls(section.weight, section.decay, networks.device, networks.all_mean)

    @classmethod
    def check(cls, key, section, cfg):
        if not section.decay < 1:
            raise ConfigError(f"{key}.decay={section.decay} must be below 1 (the anchors' moving average)")

    def anchors(self) -> torch.Tensor | None:
        """(alpha_R, alpha_F), or None before the first D step."""
        if self.updates == 0:
            return None
        return self.ema / (1.0 - self.decay**self.updates)

    def d_penalty(self, real, fake, extra):
        real, fake = real.logits.float(), fake.logits.float()
        self._step_means.append(torch.stack([real.detach().mean(), fake.detach().mean()]))
        anchors = self.anchors()
        if anchors is None:
            return None
        return self.weight * lecam_penalty(real, fake, anchors[0], anchors[1])

    def after_backward(self) -> None:
        if not self._step_means:
            return
        step_mean = self.all_mean(torch.stack(self._step_means).mean(dim=0))
        self._step_means = []
        self.ema.mul_(self.decay).add_(step_mean, alpha=1.0 - self.decay)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"lecam_ema": self.ema.detach().cpu(), "lecam_updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if "lecam_ema" in state:  # a run that turns LeCam on at resume starts with no anchors
            self.ema.copy_(state["lecam_ema"])
            self.updates = int(state["lecam_updates"])
