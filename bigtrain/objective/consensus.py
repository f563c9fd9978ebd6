"""Consensus optimization (Mescheder, Nowozin & Geiger 2017, "The Numerics of GANs", Algorithm 1; the
authors' code: LMescheder/TheNumericsOfGANs, `ConsensusOptimizer`).

The paper's players each maximize their own utility (G: f, D: g); its vector field v holds both
players' gradients of their utilities, and consensus optimization follows w = v - gamma grad L with

    L = 1/2 ||v||^2                                          (both players' gradients in one vector)

i.e. each player ascends its own utility minus gamma L. In bigtrain's convention each player descends
its loss (L_G = -f, L_D = -g), so v = (grad_G L_G, grad_D L_D) (the sign does not change L) and each
network's gradient becomes

    grad_G L_G + gamma grad_G L        and        grad_D L_D + gamma grad_D L,

grad L = v'^T v computed by double backward through both losses (`consensus_gradients`; the
authors' `g + alpha * Jg`). The paper's recipe: RMSProp (`optim.name: rmsprop`), lr 1e-4, gamma 10.

In the trainer (`Consensus`, built from `regularize.consensus.gamma`; 0: off) the paper's simultaneous
update becomes bigtrain's alternating one: D's `n_disc_steps` steps, then G's, each network's main step
adding gamma grad L with respect to its own parameters, L evaluated where the parameters are at that
step (after the D steps have moved D, in G's step). With both players moved at once the correction of
both comes from the same point; here, as in the loop's plain gradients, G's comes after D's update.
Each micro-batch of a main step has a side pass (`Regularizer.side_pass`) on that micro-batch's reals
and latents (the main pass's): G(z) (fresh fakes: replayed ones carry no gradient to G) and D's view
of reals and fakes (augmentation included) with
gradients to both networks, on leaf copies of their parameters through `torch.func.functional_call`
(the networks, their distributed wrappers and their frozen flags untouched), L_D and L_G of
`loss.name` (regularizer penalties are not part of v), v with create_graph, then gamma grad L for this
network. SN power iterations and BN running statistics do not advance in it (`frozen_state`; BN still
normalizes with the micro-batch's statistics), and StyleGAN2's w_avg is not updated.

Accumulation and ranks: L is the micro-batch's (its v from the micro-batch's losses); the gradient
added is the mean of gamma grad L over the step's micro-batches and all ranks (one all-reduce after the
backward), so ranks stay identical and 1 process with accumulation A x W computes what W processes with
A do. With accumulation, the mean of ||v_i||^2 over micro-batches is not ||mean v_i||^2 of the whole
batch (it adds v's variance over micro-batches): L is that of the micro-batch size.

Where it cannot run: DeepSpeed's ZeRO reduces gradients into its own buffers during the backward, so
the closed-form gradient cannot be added to them. `train.compile` works: the side pass calls the eager,
bare modules (a double backward, which AOTAutograd has not).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import ConfigError
from ..models.layers import frozen_state
from .regularizer import Regularizer

Tensors = Sequence[torch.Tensor]


def _grads(loss: torch.Tensor, params: Tensors, create_graph: bool) -> list[torch.Tensor]:
    """d loss / d params, zeros where a parameter does not reach the loss (ProGAN's blocks not yet grown)."""
    grads = torch.autograd.grad(
        loss, list(params), retain_graph=True, create_graph=create_graph, allow_unused=True
    )
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def consensus_regularizer(v: Tensors) -> torch.Tensor:
    """L = 1/2 ||v||^2 over every tensor of v (both players' gradients), at least in float32."""
    squares = [g.to(torch.promote_types(g.dtype, torch.float32)).square().sum() for g in v]
    return 0.5 * torch.stack(squares).sum()


def consensus_term(
    loss_g: torch.Tensor, loss_d: torch.Tensor, params_g: Tensors, params_d: Tensors, wrt: Tensors
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(grad L with respect to `wrt`, L): L = 1/2 ||(grad_G loss_g, grad_D loss_d)||^2, the gradients
    built with create_graph so that L is differentiated through them (double backward)."""
    v = _grads(loss_g, params_g, create_graph=True) + _grads(loss_d, params_d, create_graph=True)
    value = consensus_regularizer(v)
    grads = torch.autograd.grad(value, list(wrt), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(wrt, grads)], value.detach()


def consensus_gradients(
    loss_g: torch.Tensor, loss_d: torch.Tensor, params_g: Tensors, params_d: Tensors, gamma: float
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each player's consensus-corrected gradient, (G's, D's): grad L_G + gamma grad_G L and
    grad L_D + gamma grad_D L (Algorithm 1 in the descent convention). gamma 0: the plain gradients,
    as torch.autograd.grad gives them (no second-order graph is built)."""
    if gamma == 0:
        return _grads(loss_g, params_g, create_graph=False), _grads(loss_d, params_d, create_graph=False)
    v_g = _grads(loss_g, params_g, create_graph=True)
    v_d = _grads(loss_d, params_d, create_graph=True)
    params = [*params_g, *params_d]
    grads = torch.autograd.grad(consensus_regularizer(v_g + v_d), params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    corrected = [v.detach() + gamma * g for v, g in zip(v_g + v_d, grads)]
    return corrected[: len(v_g)], corrected[len(v_g) :]


def _leaves(module: nn.Module, trainable: set[str]) -> dict[str, torch.Tensor]:
    """The module's parameters as leaves of their own (the module untouched); the trainable ones (its
    player's parameters) require grad, the others (FreezeD's blocks) stay constants."""
    return {name: p.detach().requires_grad_(name in trainable) for name, p in module.named_parameters()}


class Consensus(Regularizer):
    """gamma grad L added to one network's gradient after its main step's backward (see above). Built
    from `regularize.consensus.gamma` for both networks."""

    def __init__(self, network: str, gamma: float, G: nn.Module, D: nn.Module, accum: int, all_mean):
        self.network, self.title = network, f"consensus optimization of {network.upper()}"
        self.gamma, self.G, self.D, self.accum, self.all_mean = gamma, G, D, accum, all_mean
        # The players' parameters: what each optimizer trains (FreezeD's blocks are not), read when built
        # (G's step turns D's requires_grad off).
        self.g_names = [n for n, p in G.named_parameters() if p.requires_grad]
        self.d_names = [n for n, p in D.named_parameters() if p.requires_grad]
        module = G if network == "g" else D
        names = self.g_names if network == "g" else self.d_names
        self.params = [dict(module.named_parameters())[n] for n in names]  # where the term is added
        self.sum: list[torch.Tensor] | None = None  # gamma grad L summed over the step's micro-batches
        self.value = torch.zeros((), device=self.params[0].device)  # L of the last step's micro-batches
        self.value_sum = torch.zeros((), device=self.params[0].device)  # L summed since the last log
        self.steps = 0

    @classmethod
    def build(cls, section, networks):
        if section.gamma <= 0:
            return None
        n = networks
        return [cls(which, section.gamma, n.G, n.D, n.accum, n.all_mean) for which in ("d", "g")]

    @classmethod
    def check(cls, key, section, cfg):
        if section.gamma > 0 and cfg.dist.backend == "deepspeed":
            raise ConfigError(
                f"{key}.gamma with dist.backend=deepspeed: ZeRO reduces the gradients into its own "
                "buffers during the backward, where consensus optimization cannot add its term; use "
                "dist.backend=ddp or accelerate"
            )

    def side_pass(self, tools, loss, reals, g_inputs, last_micro_batch):
        (x, y), (z, y_fake, kwargs) = reals, g_inputs
        g_params, d_params = _leaves(self.G, set(self.g_names)), _leaves(self.D, set(self.d_names))
        kwargs = {**kwargs, **self.G.pass_kwargs(False)}  # no state update (StyleGAN2's w_avg)
        with frozen_state(self.G, batchnorm=True), frozen_state(self.D):
            fake = torch.func.functional_call(self.G, g_params, (z, y_fake), kwargs)
            logits = tools.d(
                torch.cat([x, fake.to(x.dtype)]), torch.cat([y, y_fake]), 2, train=False, params=d_params
            )
        real_logits, fake_logits = logits.split([len(x), len(fake)])
        loss_d = loss.d(real_logits, fake_logits)
        loss_g = loss.g(fake_logits, real_logits if loss.needs_reals else None)
        players = [g_params[n] for n in self.g_names], [d_params[n] for n in self.d_names]
        grads, value = consensus_term(loss_g, loss_d, *players, players[self.network == "d"])
        scale = self.gamma / self.accum
        if self.sum is None:
            self.sum = [scale * g for g in grads]
            self.value = value / self.accum
        else:
            for s, g in zip(self.sum, grads):
                s.add_(g, alpha=scale)
            self.value = self.value + value / self.accum
        if not last_micro_batch:
            return None
        return torch.stack([s.sum() for s in self.sum]).sum()  # non-finite: the trainer skips the step

    @torch.no_grad()
    def after_backward(self) -> None:
        if self.sum is None:
            return
        # The means over ranks of the term and of L: one all-reduce per step.
        flat = self.all_mean(torch.cat([*(s.reshape(-1) for s in self.sum), self.value.reshape(1)]))
        *terms, value = flat.split([*(s.numel() for s in self.sum), 1])
        for p, term in zip(self.params, terms):
            if p.grad is not None:  # None: no loss of this step reaches it (ProGAN's blocks not yet grown)
                p.grad.add_(term.view_as(p).to(p.dtype))
        self.value_sum += value[0]
        self.steps += 1
        self.sum = None

    def metrics(self) -> dict[str, float]:
        """L = 1/2 ||v||^2 in this network's steps, averaged over the steps since the last log."""
        if not self.steps:
            return {}
        figure = {f"consensus_L_{self.network}": float(self.value_sum / self.steps)}
        self.value_sum.zero_()
        self.steps = 0
        return figure
