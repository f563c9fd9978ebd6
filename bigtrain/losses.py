"""Adversarial losses and regularizers, each beside its equation.

D(.) denotes the discriminator's logits; all losses are means over the batch.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn


def hinge_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]   (Lim & Ye 2017; BigGAN's default)."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_g(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_G = -E[D(G(z))]."""
    return -fake_logits.mean()


def nonsat_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = E[softplus(-D(x))] + E[softplus(D(G(z)))]   (Goodfellow et al. 2014, logistic)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def nonsat_g(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_G = E[softplus(-D(G(z)))]   (the non-saturating generator loss)."""
    return F.softplus(-fake_logits).mean()


def wgan_d(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """L_D = E[D(G(z))] - E[D(x)]   (Arjovsky et al. 2017); the trainer adds the gradient penalty and
    the drift term of `wgan_gp_terms`."""
    return fake_logits.mean() - real_logits.mean()


def wgan_g(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_G = -E[D(G(z))]."""
    return -fake_logits.mean()


def wgan_gp_terms(
    interp_logits: torch.Tensor,
    interp: torch.Tensor,
    real_logits: torch.Tensor,
    gp_weight: float,
    drift: float,
) -> torch.Tensor:
    """lambda E[(||grad_x^ D(x^)|| - 1)^2] (Gulrajani et al. 2017) + eps_drift E[D(x)^2] (ProGAN, A.1), with
    x^ a random interpolate of real and fake. `interp` must require grad and feed `interp_logits`."""
    (grad,) = torch.autograd.grad(interp_logits.sum(), interp, create_graph=True)
    penalty = (grad.flatten(1).norm(dim=1) - 1.0).pow(2).mean()
    return gp_weight * penalty + drift * real_logits.pow(2).mean()


LOSSES = {"hinge": (hinge_d, hinge_g), "nonsat": (nonsat_d, nonsat_g), "wgan-gp": (wgan_d, wgan_g)}


def _as_filter_rows(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], -1)


def orthogonal_penalty(weight: torch.Tensor, strength: float) -> torch.Tensor:
    """R_beta(W) = beta * || W W^T (.) (1 - I) ||_F^2, W's rows being the filters (BigGAN eq. 3).

    Only the off-diagonal Gram entries are penalized, so filter norms stay free.
    """
    w = _as_filter_rows(weight)
    gram = w @ w.t()
    off_diagonal = gram * (1.0 - torch.eye(w.shape[0], device=w.device, dtype=w.dtype))
    return strength * off_diagonal.pow(2).sum()


def orthogonal_penalty_grad(weight: torch.Tensor, strength: float) -> torch.Tensor:
    """d R_beta / dW = 4 beta (W W^T (.) (1 - I)) W, in closed form: no autograd graph is needed."""
    w = _as_filter_rows(weight)
    gram = w @ w.t()
    gram.fill_diagonal_(0.0)
    return (4.0 * strength * (gram @ w)).reshape(weight.shape)


def ortho_parameters(generator: nn.Module) -> list[nn.Parameter]:
    """G's weight matrices and kernels, excluding the shared class embedding (as in BigGAN)."""
    shared = getattr(generator, "shared", None)
    skip = {id(p) for p in shared.parameters()} if shared is not None else set()
    return [p for p in generator.parameters() if p.ndim >= 2 and id(p) not in skip]


@torch.no_grad()
def add_orthogonal_grad_(params: Iterable[nn.Parameter], strength: float) -> None:
    """Add the orthogonal regularizer's gradient to each parameter's .grad (call after backward)."""
    for p in params:
        if p.grad is not None:
            p.grad.add_(orthogonal_penalty_grad(p.detach().float(), strength).to(p.grad.dtype))


def r1_penalty(real_logits: torch.Tensor, reals: torch.Tensor, gamma: float) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): (gamma / 2) E[||grad_x D(x)||^2] on reals, which must require grad.
    The graph is kept (create_graph) so the penalty trains D."""
    (grad,) = torch.autograd.grad(real_logits.sum(), reals, create_graph=True)
    return grad.float().square().sum(dim=(1, 2, 3)).mean() * (gamma / 2)


def path_lengths(images: torch.Tensor, ws: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """StyleGAN2 eq. 4's ||J_w^T y||_2 per sample, y ~ N(0, I) / sqrt(pixels) (the `noise` given):
    the gradient of <g(w), y> with respect to w, its squared norm summed over w's features and averaged
    over the synthesis layers. Only the first len(noise) images count; the graph is kept."""
    n = noise.shape[0]
    (grad,) = torch.autograd.grad((images[:n] * noise).sum(), ws, create_graph=True)
    return grad[:n].float().square().sum(dim=2).mean(dim=1).sqrt()
