"""The energy-based losses: D's output is an energy, low on reals (an auto-encoder D's reconstruction
error: models/ebgan.py, models/began.py), and every loss is a mean over the (micro-)batch.

EBGAN (Zhao, Mathieu & LeCun 2017, eq. 1 and 2), with margin m (`loss.ebgan_margin`):

    L_D = D(x) + [m - D(G(z))]^+        L_G = D(G(z))

D pushes the energy of fakes up only while it is below m: past the margin a fake adds nothing to
L_D, nor any gradient. The pull-away term on G is a regularizer (objective/pull_away.py).

BEGAN (Berthelot, Schumm & Metz 2017, eq. 4), with L the energy (its auto-encoder's L1 error):

    L_D = L(x) - k_t L(G(z))            L_G = L(G(z))
    k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z))), 0, 1)

k_t, the proportional control that keeps E[L(G(z))] = gamma E[L(x)] (section 3.4), is state: every
micro-batch of a D step uses the same k_t, on every rank; after the step, k moves by the step's mean
L(x) and L(G(z)) over every micro-batch and every rank, as the reference computes it from the
losses of the batch D was trained on (carpedm20/BEGAN-tensorflow trainer.py, k_update), so the result
does not depend on the split into micro-batches or ranks. A step the non-finite guard skipped leaves
k as it was, and k is checkpoint state: a resumed run continues with it. The paper's convergence
measure M_global = L(x) + |gamma L(x) - L(G(z))| (section 3.4.1), averaged over the D steps between
two log points, is logged beside k_t (`Objective.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from .adversarial import AdversarialLoss, LossState

# The families whose D outputs an energy (the losses here need one, and their D suits no other loss).
ENERGY_MODELS = ("ebgan", "began")


def ebgan_d(real_energy: torch.Tensor, fake_energy: torch.Tensor, margin: float) -> torch.Tensor:
    """L_D = E[D(x)] + E[max(0, m - D(G(z)))]   (eq. 1)."""
    return real_energy.mean() + F.relu(margin - fake_energy).mean()


def energy_g(fake_energy: torch.Tensor, real_energy: torch.Tensor | None = None) -> torch.Tensor:
    """L_G = E[D(G(z))]: EBGAN's eq. 2 and BEGAN's L_G alike."""
    return fake_energy.mean()


def began_d(real_energy: torch.Tensor, fake_energy: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """L_D = E[L(x)] - k_t E[L(G(z))]   (eq. 4)."""
    return real_energy.mean() - k * fake_energy.mean()


def began_k_update(
    k: torch.Tensor, real_mean: torch.Tensor, fake_mean: torch.Tensor, gamma: float, lambda_k: float
) -> torch.Tensor:
    """k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z))), 0, 1)   (eq. 4)."""
    return (k + lambda_k * (gamma * real_mean - fake_mean)).clamp(0.0, 1.0)


def convergence_measure(real_mean: torch.Tensor, fake_mean: torch.Tensor, gamma: float) -> torch.Tensor:
    """M_global = L(x) + |gamma L(x) - L(G(z))|   (section 3.4.1)."""
    return real_mean + (gamma * real_mean - fake_mean).abs()


class Equilibrium(LossState):
    """BEGAN's k_t and its update (see the module docstring). k is a 0-d float32 tensor on the run's
    device: D's loss reads it without a host sync."""

    def __init__(
        self,
        gamma: float,
        lambda_k: float,
        k0: float,
        device: torch.device | str = "cpu",
        all_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    ):
        self.gamma, self.lambda_k, self.all_mean = gamma, lambda_k, all_mean
        self.k = torch.tensor(k0, dtype=torch.float32, device=device)
        self._observed: list[torch.Tensor] = []  # (L(x), L(G(z))) of each micro-batch of this D step
        self._step: torch.Tensor | None = None  # the D step's (L(x), L(G(z))), until it is taken
        self._measure_sum = torch.zeros((), dtype=torch.float32, device=device)  # M since the last log
        self._measure_steps = 0

    def d(self, real_energy: torch.Tensor, fake_energy: torch.Tensor) -> torch.Tensor:
        return began_d(real_energy, fake_energy, self.k)

    def observe(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> None:
        self._observed.append(
            torch.stack([real_logits.detach().float().mean(), fake_logits.detach().float().mean()])
        )

    def after_d_backward(self) -> None:
        # Set aside here, on every step: a skipped step's values are then dropped, not carried over.
        self._step = torch.stack(self._observed).mean(dim=0) if self._observed else None
        self._observed = []

    def after_d_step(self) -> None:
        if self._step is None:
            return
        real_mean, fake_mean = self.all_mean(self._step)  # every rank takes the step alike
        self._step = None
        measure = convergence_measure(real_mean, fake_mean, self.gamma)
        self._measure_sum += measure
        self._measure_steps += 1
        self.k = began_k_update(self.k, real_mean, fake_mean, self.gamma, self.lambda_k)

    def metrics(self) -> dict[str, float]:
        """k_t now, and M_global averaged over the D steps since the last log point."""
        steps = max(self._measure_steps, 1)
        out = {"began_k": self.k.item(), "began_m_global": (self._measure_sum / steps).item()}
        self._measure_sum.zero_()
        self._measure_steps = 0
        return out

    def state_dict(self) -> dict:
        return {"began_k": self.k.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        if "began_k" in state:  # a run that switches to BEGAN at resume starts from loss.began_k0
            self.k = state["began_k"].to(device=self.k.device, dtype=torch.float32).clone()


def build_energy_loss(
    section,
    device: torch.device | str = "cpu",
    all_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> AdversarialLoss:
    """`loss.name` ebgan or began, with its parameters from the `loss` section."""
    if section.name == "ebgan":
        return AdversarialLoss("ebgan", partial(ebgan_d, margin=section.ebgan_margin), energy_g)
    if section.name == "began":
        state = Equilibrium(section.began_gamma, section.began_lambda_k, section.began_k0, device, all_mean)
        return AdversarialLoss("began", state.d, energy_g, state=state)
    raise ValueError(f"unknown energy-based loss {section.name!r}")
