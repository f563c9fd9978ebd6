"""Orthogonal regularization of G (Brock et al. 2019, BigGAN section 3.1, eq. 3):

    R_beta(W) = beta * || W W^T (.) (1 - I) ||_F^2

W's rows being the filters: only the off-diagonal Gram entries are penalized, so filter norms stay free.
It acts on G's weight matrices and kernels, not on the shared class embedding (as in BigGAN).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .regularizer import Regularizer


def _as_filter_rows(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], -1)


def orthogonal_penalty(weight: torch.Tensor, strength: float) -> torch.Tensor:
    """R_beta(W) for one weight."""
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
    """Add the regularizer's gradient to each parameter's .grad (call after backward)."""
    for p in params:
        if p.grad is not None:
            p.grad.add_(orthogonal_penalty_grad(p.detach().float(), strength).to(p.grad.dtype))


class Orthogonal(Regularizer):
    """Part of every G step. Where the backend leaves p.grad whole after the backward (DDP, Accelerate,
    one process), the closed-form gradient is added to it; an engine that owns the gradients
    (DeepSpeed ZeRO) gets the penalty in the loss of the step's last micro-batch instead."""

    network, title = "g", "orthogonal"

    def __init__(self, strength: float, G: nn.Module, grad_hooks: bool):
        self.strength = strength
        self.params = ortho_parameters(G)
        self.grad_hooks = grad_hooks

    @classmethod
    def build(cls, section, networks):
        return cls(section.strength, networks.G, networks.grad_hooks) if section.strength > 0 else None

    def g_penalty(self, fake, real, last_micro_batch: bool) -> torch.Tensor | None:
        if self.grad_hooks or not last_micro_batch:
            return None
        return torch.stack([orthogonal_penalty(p.float(), self.strength) for p in self.params]).sum()

    def after_backward(self) -> None:
        if self.grad_hooks:
            add_orthogonal_grad_(self.params, self.strength)
