"""Mode-regularized GAN (Che et al. 2017, "Mode Regularized Generative Adversarial Networks", sections
3.1-3.2). An encoder E: x -> z learns with G so that G o E maps the data back onto itself, and G's loss
gains two regularizers on the reconstructions G(E(x)) of real x:

    T_G = -E_z[log D(G(z))] + E_x[lambda_1 d(x, G o E(x)) + lambda_2 log D(G o E(x))]
    T_E =                      E_x[lambda_1 d(x, G o E(x)) + lambda_2 log D(G o E(x))]

the geometric (metric) regularizer, with d the pixel-wise L2 distance, ties every real x to a sample of
G close to it, so G cannot drop the mode x lies in; the mode regularizer asks D's opinion of that sample.

The mode term's sign. D(.) is the probability D assigns to "real". Read as printed, minimizing
+lambda_2 log D(G o E(x)) would teach G and E to make reconstructions that D rejects, against what
section 3.2 gives the term for: G o E(x) of a real x in a mode G misses lies near that mode, and the term
moves it to where D rates it real, which spreads G's mass into the mode (third-party code that takes the
printed sign literally, wiseodd/generative-models and kozistr/Awesome-GANs, lowers D(G o E(x)) instead).
Here the term has the role of G's non-saturating loss -log D(G(z)) in the same T_G: lambda_2 x
-log D(G o E(x)) = lambda_2 x softplus(-l), with l D's output read as a logit, D = sigmoid(l) (the
minimax and non-saturating losses' reading; hinge and WGAN critics read the same way, higher is more
real; the energy losses, low on reals, are refused).

d(x, x') is the mean over the C x H x W pixel values of (x - x')^2: the squared L2 distance in pixel
space divided by the number of values, so lambda_1 keeps its meaning across resolutions (the sum's
lambda_1 is this one / CHW). Both terms are means over the micro-batch, divided by the accumulation.

G and E minimize the same regularizer each with its own optimizer, from the one backward of G's step
(simultaneous updates; the paper's T_G and T_E share it): E feeds only G(E(x)), so it gets no gradient
from the adversarial term on G(z), and D is frozen in G's step, so it gets none from these terms. E is
bigtrain.models.encoder.Encoder, trained by Adam (lr `regularize.mode_regularized.lr`, DCGAN's betas
0.5, 0.999; a fixed step size, which optim.lr_decay and ProGAN's phases leave alone, and moments
kept across phases) after every G step that was not skipped; under several ranks its gradients are averaged
over them first, so every rank holds the same E. G's pass on E(x) pauses G's state (BN running
statistics, SN power iterations, StyleGAN2's w_avg) and D sees G(E(x)) through the same augmentation
as the fakes. E's weights and Adam state are checkpoint state; the figures logged are the mean d
(`mrgan_geometric`) and the mean -log D(G o E(x)) (`mrgan_mode`, where lambda_2 > 0) since the last
log point. The paper's two-step "manifold-diffusion" GAN (MDGAN, section 3.3), with a second D on
G o E(x), is not built. With InfoGAN's latent codes on, E's z also holds them (G reads them in z's
last columns).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..models.encoder import Encoder
from ..models.layers import frozen_state
from .adversarial import ENERGY_LOSSES
from .regularizer import Regularizer

E_BETAS = (0.5, 0.999)  # DCGAN's Adam betas


def geometric_distance(reals: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of d(x, G o E(x)): the mean squared difference over the pixel values."""
    return (reconstructions.float() - reals.float()).square().mean()


def mode_term(logits: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -log D(G o E(x)) = softplus(-l): low where D rates the reconstructions real."""
    return F.softplus(-logits.float()).mean()


class ModeRegularized(Regularizer):
    """Part of every G step: the geometric and mode regularizers on G(E(x)) of the D step's reals, which
    train G and the encoder E (see the module docstring)."""

    network, title = "g", "mode regularizer"

    def __init__(
        self,
        geometric: float,
        mode: float,
        encoder: nn.Module,
        lr: float,
        G: nn.Module,
        all_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
        accum: int = 1,
    ):
        self.geometric, self.mode, self.E, self.G = geometric, mode, encoder, G
        self.all_mean, self.accum = all_mean, accum
        self.opt = torch.optim.Adam(encoder.parameters(), lr, betas=E_BETAS)
        device = next(encoder.parameters()).device
        self._sums = torch.zeros(2, device=device)  # (d, -log D) since the last log point
        self._passes = 0
        self._new_step = True  # the next pass is the first micro-batch of a G step

    @classmethod
    def build(cls, section, networks):
        if section.geometric <= 0 and section.mode <= 0:
            return None
        codes = getattr(networks.G, "codes", None)  # InfoGAN's codes: G's z holds them in its last columns
        z_width = networks.z_dim + (codes.dim if codes is not None else 0)
        encoder = Encoder(networks.resolution, z_width, section.encoder_width).to(networks.device)
        return cls(
            section.geometric,
            section.mode,
            encoder,
            section.lr,
            networks.G,
            networks.all_mean,
            networks.accum,
        )

    @classmethod
    def check(cls, key, section, cfg):
        on = section.geometric > 0 or section.mode > 0
        if on and not section.lr > 0:
            raise ConfigError(f"{key}.lr={section.lr} must be > 0: it is the encoder's Adam step size")
        if section.mode > 0 and cfg.loss.name in ENERGY_LOSSES:
            raise ConfigError(
                f"{key}.mode={section.mode} reads D's output as a logit (-log D(G(E(x))), higher is more real), "
                f"and loss.name={cfg.loss.name}'s D outputs an energy, low on reals: use {key}.geometric alone"
            )

    def g_pass_penalty(self, tools, reals, last_micro_batch):
        x, y = reals
        if self._new_step:  # E's gradients of a step that the non-finite guard skipped are dropped too
            self.opt.zero_grad(set_to_none=True)
            self._new_step = False
        z = self.E(x)
        kwargs = {**self.G.pass_kwargs(False), **self.G.pass_noise(x.shape[0], tools.generator, x.device)}
        with frozen_state(self.G, batchnorm=True):  # G's state advances once per step, in its main pass
            reconstructions = tools.g(z, y, **kwargs)
        distance = geometric_distance(x, reconstructions)
        penalty = self.geometric * distance
        mode = torch.zeros_like(distance)
        if self.mode > 0:
            mode = mode_term(tools.d(reconstructions, y, train=False))
            penalty = penalty + self.mode * mode
        self._sums += torch.stack([distance.detach(), mode.detach()])
        self._passes += 1
        return penalty / self.accum

    def after_backward(self) -> None:
        self._new_step = True
        params = [p for p in self.E.parameters() if p.grad is not None]
        if not params:
            return
        flat = self.all_mean(torch.cat([p.grad.reshape(-1) for p in params]))  # one collective
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(g.view_as(p.grad))

    def after_step(self) -> None:
        self.opt.step()

    def metrics(self) -> dict[str, float]:
        if not self._passes:
            return {}
        distance, mode = (self._sums / self._passes).tolist()
        self._sums.zero_()
        self._passes = 0
        return {"mrgan_geometric": distance, **({"mrgan_mode": mode} if self.mode > 0 else {})}

    def state_dict(self) -> dict:
        return {
            "mrgan_encoder": {k: v.detach().cpu() for k, v in self.E.state_dict().items()},
            "mrgan_encoder_optim": self.opt.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if "mrgan_encoder" in state:  # a run that turns it on at resume starts with a fresh encoder
            self.E.load_state_dict(state["mrgan_encoder"])
            self.opt.load_state_dict(state["mrgan_encoder_optim"])
