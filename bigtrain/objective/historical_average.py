"""Historical averaging (Salimans et al. 2016, "Improved Techniques for Training GANs", section 3.3): each
network's loss gets the term

    lambda || theta - (1/t) sum_{i=1}^{t} theta[i] ||^2

where theta[i] is the network's parameter vector after its i-th step (theta[1]: as built). The running
average lives beside the network (one copy of its parameters) and in checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from .regularizer import Regularizer


class HistoricalAverage(Regularizer):
    """On one network: its penalty in every main step, the average moved after every step."""

    def __init__(self, network: str, weight: float, module: nn.Module):
        self.network, self.title = network, f"historical averaging of {network.upper()}"
        self.weight, self.module = weight, module
        self.average = {name: p.detach().clone() for name, p in module.named_parameters()}
        self.count = 1  # the parameters as built are theta[1]

    @classmethod
    def build(cls, section, networks):
        pairs = (("g", section.g, networks.G), ("d", section.d, networks.D))
        return [cls(network, weight, module) for network, weight, module in pairs if weight > 0]

    def penalty(self) -> torch.Tensor:
        squares = [
            (p.float() - self.average[name].float()).square().sum()
            for name, p in self.module.named_parameters()
        ]
        return self.weight * torch.stack(squares).sum()

    def d_penalty(self, real, fake, extra):
        return self.penalty()  # per micro-batch: D's loss is divided by the accumulation

    def g_penalty(self, fake, real, last_micro_batch: bool) -> torch.Tensor | None:
        return self.penalty() if last_micro_batch else None  # G's penalties are added once per step

    @torch.no_grad()
    def after_step(self) -> None:
        self.count += 1
        for name, p in self.module.named_parameters():
            self.average[name].lerp_(p.detach(), 1.0 / self.count)

    def state_dict(self) -> dict:
        key = f"historical_average_{self.network}"
        return {key: {n: a.cpu() for n, a in self.average.items()}, f"{key}_count": self.count}

    def load_state_dict(self, state: dict) -> None:
        key = f"historical_average_{self.network}"
        if key in state:  # a run that turns it on at resume starts its average there
            for name, average in state[key].items():
                self.average[name].copy_(average)
            self.count = int(state[f"{key}_count"])
