"""Unrolled GAN (Metz et al. 2017, "Unrolled Generative Adversarial Networks", eqs. 5-7): G's loss is
computed with D's parameters after K gradient steps of D on the current batch, and differentiated through
those steps, so G's gradient includes how D would respond to it:

    theta_D^0 = theta_D,   theta_D^{k+1} = theta_D^k - eta dL_D(theta_G, theta_D^k) / dtheta_D^k    (eq. 6)
    f_K(theta_G, theta_D) = f(theta_G, theta_D^K(theta_G, theta_D))                                (eq. 5)
    dL_G/dtheta_G = df_K/dtheta_G, including dtheta_D^K/dtheta_G                                    (eq. 7)

L_D is the configured adversarial D loss (`loss.name`; D's regularizers stay out of the unroll) on the
last D step's reals and the G step's fakes, scored by D as the D step scores them (augmentation,
instance noise, the two sets kept apart by D's minibatch statistics), each step with fresh augmentation
draws. D's own parameters never change: the unroll runs on copies through `torch.func.functional_call`
on the bare D module, D's buffers (spectral norm's u, v) as they are (the G step holds them frozen).
With `accum` > 1 each micro-batch unrolls on its own reals and fakes.

The unroll is plain gradient descent with step size `lr` (eq. 6 as written); the authors' code
(poolio/unrolled_gan) unrolled D's Adam update, moments included. The second-order term of eq. 7 is
kept (the gradients are built with create_graph=True): K extra D forward and double-backward passes
per G micro-batch.

Every backend and `train.compile` work with it: the G step scores with the bare D module (DDP's and
DeepSpeed's D wrappers, and the compiled D, serve the D step only), and DeepSpeed's ZeRO stages 1 and 2
(the only ones bigtrain accepts) keep D's parameters whole; the double backward runs through the eager D,
G's part of the graph (compiled or not) is differentiated once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..config import ConfigError
from .regularizer import Regularizer

Params = dict[str, torch.Tensor]


def d_parameters(D: nn.Module, trainable: set[str] | None = None) -> Params:
    """theta_D^0: D's parameters as leaves of their own (D's stay untouched); those named in `trainable`
    (None: all) require grad and move in the unroll, the others (FreezeD's blocks) stay as they are."""
    return {
        name: p.detach().requires_grad_(trainable is None or name in trainable)
        for name, p in D.named_parameters()
    }


def unroll(
    score: Callable[[torch.Tensor, torch.Tensor, int, Params], torch.Tensor],
    d_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    params: Params,
    reals: tuple[torch.Tensor, torch.Tensor],
    fakes: tuple[torch.Tensor, torch.Tensor],
    steps: int,
    lr: float,
) -> Params:
    """theta_D^K of eq. 6: `steps` gradient steps of `d_loss(real_logits, fake_logits)` from `params`,
    each differentiable in the fakes and the starting parameters. `score(images, labels, parts, params)`:
    D's logits of images with the given parameters; reals and fakes: (images, labels)."""
    (x, y), (fake, y_fake) = reals, fakes
    images, labels = torch.cat([x, fake.to(x.dtype)]), torch.cat([y, y_fake])
    names = [n for n, p in params.items() if p.requires_grad]  # not FreezeD's frozen blocks
    for _ in range(steps):
        real_logits, fake_logits = score(images, labels, 2, params).split([len(x), len(fake)])
        grads = torch.autograd.grad(
            d_loss(real_logits, fake_logits), [params[n] for n in names], create_graph=True, allow_unused=True
        )  # allow_unused: parameters this batch does not reach (ProGAN's blocks not yet grown)
        params = {n: params[n] if g is None else params[n] - lr * g for n, g in zip(names, grads)}
    return params


class Unrolled(Regularizer):
    """Part of every G step: the D parameters G's loss is computed with (see above)."""

    network, title = "g", "unrolled D"

    def __init__(self, D: nn.Module, steps: int, lr: float):
        self.D, self.steps, self.lr = D, steps, lr
        # What D's optimizer trains, read when built (the G step turns all of D's requires_grad off).
        self.trainable = {name for name, p in D.named_parameters() if p.requires_grad}

    @classmethod
    def build(cls, section, networks):
        return cls(networks.D, section.steps, section.lr) if section.steps > 0 else None

    @classmethod
    def check(cls, key, section, cfg):
        if section.steps > 0 and not section.lr > 0:
            raise ConfigError(f"{key}.lr={section.lr} must be > 0 with {key}.steps={section.steps}")

    def d_params_for_g(self, score, d_loss, reals, fakes):
        return unroll(score, d_loss, d_parameters(self.D, self.trainable), reals, fakes, self.steps, self.lr)
