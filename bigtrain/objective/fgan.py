"""f-GAN (Nowozin, Cseke & Tomioka 2016, "f-GAN: Training Generative Neural Samplers using Variational
Divergence Minimization"): `loss.name: fgan`, `loss.divergence` one of `DIVERGENCES`.

An f-divergence D_f(P || Q) = E_Q[f(p(x) / q(x))] (eq. 1, f convex, f(1) = 0) is bounded below by
any T through the Fenchel conjugate f*(t) = sup_u {u t - f(u)} (eqs. 2-3):

    D_f(P || Q) >= E_P[T(x)] - E_Q[f*(T(x))],  with equality at T(x) = f'(p(x) / q(x))  (eq. 4)

D's raw output V (its logit) goes through the divergence's output activation, T = g_f(V), which maps
R into dom f* (Table 2), and the objective of section 2.3 (eqs. 5-6) is

    F(theta, omega) = E_P[g_f(V(x))] + E_Q[-f*(g_f(V(G(z))))]

D maximizes F: its loss is -F. For G, Algorithm 1 (the single-step gradient method, section 3)
descends F in G's parameters: G minimizes -E_Q[f*(g_f(V(G(z))))], the saturating form, which for the GAN
row is Goodfellow et al.'s minimax E_Q[log(1 - D(G(z)))]. Section 3, "Practical considerations", replaces
it as Goodfellow et al. did for GAN: G maximizes E_Q[g_f(V(G(z)))], which keeps the stationary point
(the same argument as theirs) and which the authors "found useful also for other divergences"; for the
GAN row it is the non-saturating loss E_Q[-log D(G(z))]. That is what is implemented, for every divergence:

    L_D = -E_P[g_f(V(x))] + E_Q[f*(g_f(V(G(z))))],      L_G = -E_Q[g_f(V(G(z)))]

The rows (Tables 1, 2 and 6; dom f* in brackets; f'(1), the threshold of T between real and fake):

    divergence       f(u)                            g_f(v)                f*(t)                        f'(1)
    total_variation  1/2 |u - 1|                     1/2 tanh(v)           t  [|t| <= 1/2]              0
    kl               u log u                         v                     exp(t - 1)                   1
    reverse_kl       -log u                          -exp(-v)              -1 - log(-t)  [t < 0]        -1
    pearson          (u - 1)^2                       v                     t^2 / 4 + t                  0
    neyman           (1 - u)^2 / u                   1 - exp(-v)           2 - 2 sqrt(1 - t)  [t < 1]   0
    hellinger        (sqrt(u) - 1)^2                 1 - exp(-v)           t / (1 - t)  [t < 1]         0
    jeffrey          (u - 1) log u                   v                     W(e^(1-t)) + 1 / W(e^(1-t))  0
                                                                           + t - 2
    js               -(u + 1) log((1 + u) / 2)       log 2                 -log(2 - exp(t))             0
                     + u log u                       - log(1 + exp(-v))    [t < log 2]
    gan              u log u - (u + 1) log(u + 1)    -log(1 + exp(-v))     -log(1 - exp(t))  [t < 0]    -log 2

`hellinger` is the squared Hellinger distance E[(sqrt p - sqrt q)^2]. `js`'s f gives E_Q[f(p/q)] =
2 JSD(P, Q) (Table 1 writes the divergence with a factor 1/2 that its f does not carry); `gan`'s gives
2 JSD(P, Q) - log 4, Goodfellow et al.'s criterion. W is Lambert's W function: W(e^x) is the Wright
omega function, computed by `wright_omega`.

Numerics: the loss evaluates f*(g_f(v)) in one closed form per row (`Divergence.conjugate_of_activation`),
never t = g_f(v) first: for v beyond ~17, 1 - exp(-v) rounds to 1 in float32 (f*(1) is infinite for
Neyman and Hellinger) and log 2 - softplus(-v) to log 2 (JS). The closed forms are softplus and
logsigmoid (JS, GAN), expm1 (Hellinger), exp(-v / 2) (Neyman), v - 1 (reverse KL), finite with finite
gradients for every float32 v in [-30, 30]. Beyond that some rows grow exponentially by their nature
(KL's f* = exp(v - 1), Hellinger's exp(v) - 1, reverse KL's and Neyman's g_f with exp(-v)) and overflow
past |v| ~ 88 in float32, as their divergences allow (the non-finite guard then skips the step); Jeffrey's
f* ~ exp(v - 1) stops at 1 / (the smallest normal float32) = 8.5e37 there, W(e^x) at that float.

The loss's figure, logged as `fgan_bound`: F on each micro-batch of D's main pass, averaged since the
last log point (this rank's), the variational lower bound on D_f(P || Q) that D is maximizing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F

from .adversarial import AdversarialLoss, LossState

LOG2 = math.log(2.0)


class _WrightOmega(torch.autograd.Function):
    """omega(x) = W(e^x), the solution w > 0 of w + log w = x. Forward: Newton's iteration on
    h(w) = w + log w - x from softplus(x) (x <= 1) or x - log x (x > 1). h is increasing and concave
    in w, so after the first step the iterates approach the root from below and stay positive; five
    steps reach the dtype's precision for x in [-80, 1e4]. Backward: omega'(x) = omega / (1 + omega),
    from the output (differentiable again: higher derivatives follow through the same function)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        w = torch.where(x > 1, x - torch.log(x.clamp(min=1)), F.softplus(x))
        w = w.clamp(min=torch.finfo(x.dtype).tiny)  # softplus of x < -87 underflows in float32
        for _ in range(5):
            w = w - (w + torch.log(w) - x) / (1 + 1 / w)
            w = w.clamp(min=torch.finfo(x.dtype).tiny)
        ctx.save_for_backward(w)
        return w

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (w,) = ctx.saved_tensors
        return grad * w / (1 + w)


def wright_omega(x: torch.Tensor) -> torch.Tensor:
    """W(e^x) (Lambert W of e^x), elementwise, differentiable (see _WrightOmega)."""
    return _WrightOmega.apply(x)


def _jeffrey_conjugate(t: torch.Tensor) -> torch.Tensor:
    """f*(t) = W(e^(1-t)) + 1 / W(e^(1-t)) + t - 2 (Table 6); its derivative is 1 / W(e^(1-t))."""
    w = wright_omega(1.0 - t)
    return w + 1.0 / w + t - 2.0


@dataclass(frozen=True)
class Divergence:
    """One row of Tables 1, 2 and 6: the generator f and its derivative (for u > 0), the output
    activation g_f, the conjugate f* on its domain, f*(g_f(v)) in a numerically safe closed form, the
    domain's test, and f'(1)."""

    name: str
    f: Callable[[torch.Tensor], torch.Tensor]
    f_prime: Callable[[torch.Tensor], torch.Tensor]
    activation: Callable[[torch.Tensor], torch.Tensor]
    conjugate: Callable[[torch.Tensor], torch.Tensor]
    conjugate_of_activation: Callable[[torch.Tensor], torch.Tensor]
    in_domain: Callable[[torch.Tensor], torch.Tensor]
    f_prime_at_1: float


def _xlogx(u: torch.Tensor) -> torch.Tensor:
    return torch.special.xlogy(u, u)


def _everywhere(t: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(t, dtype=torch.bool)


DIVERGENCES: dict[str, Divergence] = {
    d.name: d
    for d in (
        Divergence(
            "total_variation",
            f=lambda u: 0.5 * (u - 1).abs(),
            f_prime=lambda u: 0.5 * torch.sign(u - 1),
            activation=lambda v: 0.5 * torch.tanh(v),
            conjugate=lambda t: t,
            conjugate_of_activation=lambda v: 0.5 * torch.tanh(v),
            in_domain=lambda t: t.abs() <= 0.5,
            f_prime_at_1=0.0,
        ),
        Divergence(
            "kl",
            f=_xlogx,
            f_prime=lambda u: 1 + torch.log(u),
            activation=lambda v: v,
            conjugate=lambda t: torch.exp(t - 1),
            conjugate_of_activation=lambda v: torch.exp(v - 1),
            in_domain=_everywhere,
            f_prime_at_1=1.0,
        ),
        Divergence(
            "reverse_kl",
            f=lambda u: -torch.log(u),
            f_prime=lambda u: -1 / u,
            activation=lambda v: -torch.exp(-v),
            conjugate=lambda t: -1 - torch.log(-t),
            conjugate_of_activation=lambda v: v - 1,  # -1 - log(exp(-v))
            in_domain=lambda t: t < 0,
            f_prime_at_1=-1.0,
        ),
        Divergence(
            "pearson",
            f=lambda u: (u - 1).square(),
            f_prime=lambda u: 2 * (u - 1),
            activation=lambda v: v,
            conjugate=lambda t: 0.25 * t.square() + t,
            conjugate_of_activation=lambda v: 0.25 * v.square() + v,
            in_domain=_everywhere,
            f_prime_at_1=0.0,
        ),
        Divergence(
            "neyman",
            f=lambda u: (1 - u).square() / u,
            f_prime=lambda u: 1 - 1 / u.square(),
            activation=lambda v: -torch.expm1(-v),
            conjugate=lambda t: 2 - 2 * torch.sqrt(1 - t),
            conjugate_of_activation=lambda v: 2 - 2 * torch.exp(-0.5 * v),  # sqrt(1 - t) = exp(-v / 2)
            in_domain=lambda t: t < 1,
            f_prime_at_1=0.0,
        ),
        Divergence(
            "hellinger",
            f=lambda u: (torch.sqrt(u) - 1).square(),
            f_prime=lambda u: 1 - 1 / torch.sqrt(u),
            activation=lambda v: -torch.expm1(-v),
            conjugate=lambda t: t / (1 - t),
            conjugate_of_activation=torch.expm1,  # (1 - e^-v) / e^-v
            in_domain=lambda t: t < 1,
            f_prime_at_1=0.0,
        ),
        Divergence(
            "jeffrey",
            f=lambda u: (u - 1) * torch.log(u),
            f_prime=lambda u: 1 + torch.log(u) - 1 / u,
            activation=lambda v: v,
            conjugate=_jeffrey_conjugate,
            conjugate_of_activation=_jeffrey_conjugate,
            in_domain=_everywhere,
            f_prime_at_1=0.0,
        ),
        Divergence(
            "js",
            f=lambda u: -(u + 1) * torch.log((1 + u) / 2) + _xlogx(u),
            f_prime=lambda u: torch.log(2 * u / (1 + u)),
            activation=lambda v: LOG2 - F.softplus(-v),
            conjugate=lambda t: -torch.log(2 - torch.exp(t)),
            conjugate_of_activation=lambda v: F.softplus(v) - LOG2,  # -log(2 - 2 sigmoid(v))
            in_domain=lambda t: t < LOG2,
            f_prime_at_1=0.0,
        ),
        Divergence(
            "gan",
            f=lambda u: _xlogx(u) - (u + 1) * torch.log(u + 1),
            f_prime=lambda u: torch.log(u / (u + 1)),
            activation=F.logsigmoid,  # -log(1 + exp(-v))
            conjugate=lambda t: -torch.log(-torch.expm1(t)),
            conjugate_of_activation=F.softplus,  # -log(1 - sigmoid(v))
            in_domain=lambda t: t < 0,
            f_prime_at_1=-LOG2,
        ),
    )
}


def fgan_bound(real_logits: torch.Tensor, fake_logits: torch.Tensor, divergence: Divergence) -> torch.Tensor:
    """F = E_P[g_f(V(x))] - E_Q[f*(g_f(V(G(z))))]   (eq. 6): the lower bound on D_f(P || Q)."""
    return divergence.activation(real_logits).mean() - divergence.conjugate_of_activation(fake_logits).mean()


def fgan_d(real_logits: torch.Tensor, fake_logits: torch.Tensor, divergence: Divergence) -> torch.Tensor:
    """L_D = -F: D maximizes the variational bound."""
    return -fgan_bound(real_logits, fake_logits, divergence)


def fgan_g(
    fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None, *, divergence: Divergence
) -> torch.Tensor:
    """L_G = -E_Q[g_f(V(G(z)))]   (section 3, "Practical considerations": G maximizes D's output)."""
    return -divergence.activation(fake_logits).mean()


class BoundMeter(LossState):
    """F of each micro-batch of D's main pass, averaged over the D steps' micro-batches since the last
    log point (`fgan_bound`); no checkpoint state (a figure, not a state of training)."""

    def __init__(self, divergence: Divergence):
        self.divergence = divergence
        self._sum: torch.Tensor | None = None
        self._count = 0

    def observe(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> None:
        bound = fgan_bound(real_logits.detach().float(), fake_logits.detach().float(), self.divergence)
        self._sum = bound if self._sum is None else self._sum + bound
        self._count += 1

    def metrics(self) -> dict[str, float]:
        if self._sum is None:
            return {}
        out = {"fgan_bound": (self._sum / self._count).item()}
        self._sum, self._count = None, 0
        return out


def build_fgan_loss(section) -> AdversarialLoss:
    """`loss.name: fgan` with `loss.divergence`."""
    divergence = DIVERGENCES[section.divergence]
    return AdversarialLoss(
        "fgan",
        partial(fgan_d, divergence=divergence),
        partial(fgan_g, divergence=divergence),
        state=BoundMeter(divergence),
    )
