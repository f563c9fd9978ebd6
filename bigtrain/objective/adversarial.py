"""Adversarial losses, each beside its equation. D(.) denotes the discriminator's logits; every loss
is a mean over the (micro-)batch.

The relativistic average losses (Jolicoeur-Martineau 2018) compare each logit with the mean logit of
the other set: D~(x) = D(x) - E[D(G(z))] on reals, D~(G(z)) = D(G(z)) - E[D(x)] on fakes. Their G loss
needs D's logits on reals too (`needs_reals`); the trainer scores the D step's reals in the G step.

The energy-based losses (EBGAN, BEGAN: bigtrain/objective/energy.py) read D's output as an energy, low
on reals, from an auto-encoder D (model.name ebgan or began). A loss may hold state across steps
(BEGAN's k_t): its `LossState` sees D's main pass of every micro-batch and the end of every D step,
reports metrics and is checkpoint state; the other losses' state does nothing.

f-GAN's divergences (Nowozin et al. 2016; `loss.name: fgan`, `loss.divergence`) are in
bigtrain/objective/fgan.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F


def _bce_real(logits: torch.Tensor, target: float) -> torch.Tensor:
    """-[t log sigmoid(l) + (1 - t) log(1 - sigmoid(l))]: the logistic loss toward target t (1: real)."""
    if target == 1.0:
        return F.softplus(-logits)  # the exact form of before: recipes without smoothing keep their bits
    return target * F.softplus(-logits) + (1.0 - target) * F.softplus(logits)


def hinge_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]   (Lim & Ye 2017; BigGAN's default)."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g(fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None) -> torch.Tensor:
    """L_G = -E[D(G(z))]."""
    return -fake_logits.mean()


def nonsat_d(real_logits: torch.Tensor, fake_logits: torch.Tensor, real_label: float = 1.0) -> torch.Tensor:
    """L_D = E[softplus(-D(x))] + E[softplus(D(G(z)))]   (Goodfellow et al. 2014, logistic). With one-sided
    label smoothing (Salimans et al. 2016) the reals' target is `real_label` (e.g. 0.9), the fakes' stays 0."""
    return _bce_real(real_logits, real_label).mean() + F.softplus(fake_logits).mean()


def nonsat_g(fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None) -> torch.Tensor:
    """L_G = E[softplus(-D(G(z)))] = -E[log sigmoid(D(G(z)))]   (the non-saturating generator loss)."""
    return F.softplus(-fake_logits).mean()


def minimax_g(fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None) -> torch.Tensor:
    """L_G = E[log(1 - sigmoid(D(G(z))))] = -E[softplus(D(G(z)))]   (Goodfellow et al. 2014's minimax game,
    saturating: its gradient vanishes where D rejects the fakes confidently)."""
    return -F.softplus(fake_logits).mean()


def lsgan_d(real_logits: torch.Tensor, fake_logits: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """L_D = 1/2 E[(D(x) - b)^2] + 1/2 E[(D(G(z)) - a)^2]   (Mao et al. 2017, eq. 2: fakes' target a,
    reals' b)."""
    return 0.5 * (real_logits - b).square().mean() + 0.5 * (fake_logits - a).square().mean()


def lsgan_g(
    fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None, c: float = 1.0
) -> torch.Tensor:
    """L_G = 1/2 E[(D(G(z)) - c)^2]   (c: the value G wants D to believe for its fakes)."""
    return 0.5 * (fake_logits - c).square().mean()


def wgan_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = E[D(G(z))] - E[D(x)]   (Arjovsky et al. 2017); Lipschitz through a regularizer such as
    `regularize.gradient_penalty`."""
    return fake_logits.mean() - real_logits.mean()


def wgan_g(fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None) -> torch.Tensor:
    """L_G = -E[D(G(z))]."""
    return -fake_logits.mean()


def _relativistic(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(D~(x), D~(G(z))) = (D(x) - E[D(G(z))], D(G(z)) - E[D(x)])."""
    return real_logits - fake_logits.mean(), fake_logits - real_logits.mean()


def rasgan_d(real_logits: torch.Tensor, fake_logits: torch.Tensor, real_label: float = 1.0) -> torch.Tensor:
    """RaSGAN: L_D = -E[log sigmoid(D~(x))] - E[log(1 - sigmoid(D~(G(z))))]."""
    real, fake = _relativistic(real_logits, fake_logits)
    return _bce_real(real, real_label).mean() + F.softplus(fake).mean()


def rasgan_g(fake_logits: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """RaSGAN: L_G = -E[log sigmoid(D~(G(z)))] - E[log(1 - sigmoid(D~(x)))]   (the roles swapped)."""
    real, fake = _relativistic(real_logits, fake_logits)
    return F.softplus(-fake).mean() + F.softplus(real).mean()


def ralsgan_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """RaLSGAN: L_D = E[(D~(x) - 1)^2] + E[(D~(G(z)) + 1)^2]."""
    real, fake = _relativistic(real_logits, fake_logits)
    return (real - 1.0).square().mean() + (fake + 1.0).square().mean()


def ralsgan_g(fake_logits: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """RaLSGAN: L_G = E[(D~(G(z)) - 1)^2] + E[(D~(x) + 1)^2]."""
    real, fake = _relativistic(real_logits, fake_logits)
    return (fake - 1.0).square().mean() + (real + 1.0).square().mean()


def rahinge_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """RaHinge: L_D = E[max(0, 1 - D~(x))] + E[max(0, 1 + D~(G(z)))]."""
    real, fake = _relativistic(real_logits, fake_logits)
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def rahinge_g(fake_logits: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
    """RaHinge: L_G = E[max(0, 1 - D~(G(z)))] + E[max(0, 1 + D~(x))]."""
    real, fake = _relativistic(real_logits, fake_logits)
    return F.relu(1.0 - fake).mean() + F.relu(1.0 + real).mean()


class LossState:
    """A loss's state across steps, and its hooks; this base, every stateless loss's, does nothing.

    The objective calls `observe` with D's outputs on each micro-batch of D's main pass, then
    `after_d_backward` once the step's backward is done (on every rank, whether or not the step is then
    taken) and `after_d_step` after D's optimizer step (not after one the non-finite guard skipped)."""

    def observe(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> None:
        """D's main pass of a micro-batch scored these reals and fakes."""

    def after_d_backward(self) -> None:
        """Every micro-batch of the D step is observed and backpropagated."""

    def after_d_step(self) -> None:
        """D's optimizer step was taken."""

    def metrics(self) -> dict[str, float]:
        """Figures for the trainer's log point (a host sync here is fine: it runs once per log)."""
        return {}

    def state_dict(self) -> dict:
        """Top-level checkpoint keys."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass(frozen=True)
class AdversarialLoss:
    """D's loss from the logits of reals and fakes, G's from the logits of its fakes (and of reals, for a
    loss that `needs_reals`), and the loss's state across steps (see LossState)."""

    name: str
    d: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    g: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
    needs_reals: bool = False
    state: LossState = field(default_factory=LossState)


# The losses with a target for reals, where one-sided label smoothing (loss.real_label) applies.
SMOOTHABLE = ("nonsat", "minimax", "rasgan")
# The losses that read D's output as an energy (an auto-encoder D's reconstruction error).
ENERGY_LOSSES = ("ebgan", "began")
LOGIT_LOSSES = ("hinge", "nonsat", "minimax", "lsgan", "wgan", "rasgan", "ralsgan", "rahinge", "fgan")
ADVERSARIAL_LOSSES = (*LOGIT_LOSSES, *ENERGY_LOSSES)
MeanOverRanks = Callable[[torch.Tensor], torch.Tensor]


def build_loss(
    section, device: torch.device | str = "cpu", all_mean: MeanOverRanks = lambda t: t
) -> AdversarialLoss:
    """The loss `loss.name` names, with its parameters from the `loss` section. A loss with state keeps
    it on `device`, averaged over ranks with `all_mean`."""
    name, t = section.name, section.real_label
    if name in ENERGY_LOSSES:
        from .energy import build_energy_loss  # energy.py builds on LossState and AdversarialLoss

        return build_energy_loss(section, device, all_mean)
    if name == "fgan":  # f-GAN's divergences: bigtrain/objective/fgan.py (built on AdversarialLoss)
        from .fgan import build_fgan_loss

        return build_fgan_loss(section)
    if name == "hinge":
        return AdversarialLoss(name, hinge_d, hinge_g)
    if name == "nonsat":
        return AdversarialLoss(name, partial(nonsat_d, real_label=t), nonsat_g)
    if name == "minimax":
        return AdversarialLoss(name, partial(nonsat_d, real_label=t), minimax_g)
    if name == "lsgan":
        return AdversarialLoss(name, partial(lsgan_d, a=section.lsgan_a, b=section.lsgan_b),
                               partial(lsgan_g, c=section.lsgan_c))  # fmt: skip
    if name == "wgan":
        return AdversarialLoss(name, wgan_d, wgan_g)
    if name == "rasgan":
        return AdversarialLoss(name, partial(rasgan_d, real_label=t), rasgan_g, needs_reals=True)
    if name == "ralsgan":
        return AdversarialLoss(name, ralsgan_d, ralsgan_g, needs_reals=True)
    if name == "rahinge":
        return AdversarialLoss(name, rahinge_d, rahinge_g, needs_reals=True)
    raise ValueError(f"unknown adversarial loss {name!r}")
