"""Virtual batch normalization in G (Salimans et al. 2016, "Improved Techniques for Training GANs",
section 3.4): `model.vbn` = N > 0 replaces every BatchNorm of G by a VirtualBatchNorm and makes G
forward a reference batch of N examples, chosen once at the start of training, beside every batch.

In each normalized layer, with a(.) the layer's input, per channel:

    reference batch R (its own statistics only, as plain BN):
        mu_R = mean of a over R and the spatial positions,   s_R = mean of a^2 over the same
    an example x (its own spatial statistics, mixed with R's):
        mu_x = mean of a(x) over its spatial positions,      s_x = mean of a(x)^2 over the same
        mu = 1/(N+1) mu_x + N/(N+1) mu_R,                    s = 1/(N+1) s_x + N/(N+1) s_R
        VBN(x) = gamma (a(x) - mu) / sqrt(s - mu^2 + eps) + beta

so an example is normalized as one more member of the reference batch, and its output does not depend
on the other examples of its batch. This is openai/improved-gan's `VBN` (imagenet/model.py): statistics
over the batch and the spatial axes for the reference, over the spatial axes for an example, the two
combined with weights N/(N+1) and 1/(N+1), the variance as E[a^2] - E[a]^2. On a (B, F) input (a BN over
features) an example's statistics are its own values. gamma and beta are the replaced BN's own affine
parameters (or, where the family conditions them on the class, its conditional gain and bias, which act
after the normalization as before) and eps is the family's BN epsilon (the reference code's: 1e-5).
The reference batch's statistics are recomputed at every call from its activations under the current
weights, and G's gradient flows through them, as in the reference code's graph.

The reference batch: N latents z ~ N(0, I) (with InfoGAN's latent codes from their prior after them)
and, for a conditional G, N labels drawn uniformly, drawn once when G is built (from the global generator the trainer seeds with train.seed, after the weights, so
the weights are those of VBN off) and kept as buffers of G (`vbn_reference.z`, `vbn_reference.y`): in
every checkpoint, copied to G_ema, and the same on every rank. A forward hook concatenates them before
the batch's z and labels of every call of G (training's D and G steps, the regularizers' passes, G_ema's
evaluations and `bigtrain sample`) and returns the batch's rows only: G_ema forwards the reference batch
through its own weights. VBN has no running statistics and no train/eval difference: sampling needs no
standing statistics. Cost: every G call forwards N more examples (the paper: "computationally expensive
because it requires running forward propagation on two minibatches of data, so we use it only in the
generator network").

Families whose G has no BatchNorm (ProGAN's pixel norm, StyleGAN2's modulation, cGAN, BEGAN) refuse the
switch with a ConfigError.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import ConfigError

KEY = "model.vbn"


class VirtualBatchNorm(nn.Module):
    """One BatchNorm of G made virtual. Its input's first `reference` rows are the reference batch's
    activations (G's forward hook puts them there), the rest the batch's examples; see the module
    docstring for the statistics. `weight`, `bias`: the replaced BN's affine parameters, or None."""

    def __init__(
        self, num_features: int, reference: int, eps: float = 1e-5, weight: nn.Parameter | None = None,
        bias: nn.Parameter | None = None,
    ):  # fmt: skip
        super().__init__()
        self.num_features, self.reference, self.eps = num_features, reference, eps
        self.weight, self.bias = weight, bias

    @classmethod
    def replacing(cls, bn: _BatchNorm, reference: int) -> VirtualBatchNorm:
        """The VBN of a BatchNorm layer: its features, its eps, its very affine parameters."""
        return cls(bn.num_features, reference, bn.eps, bn.weight, bn.bias)

    def extra_repr(self) -> str:
        return f"{self.num_features}, reference={self.reference}, eps={self.eps}, affine={self.weight is not None}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.reference
        if x.shape[0] <= n:
            raise ValueError(
                f"VirtualBatchNorm got {x.shape[0]} rows: the {n} of the reference batch and at least one "
                "example are expected (call G itself, whose hook adds the reference batch)"
            )
        spatial = tuple(range(2, x.ndim))
        a = x.float()  # statistics in fp32, also under autocast
        ref, live = a[:n], a[n:]
        ref_mean = ref.mean((0, *spatial), keepdim=True)
        ref_sq = ref.square().mean((0, *spatial), keepdim=True)
        if spatial:
            own_mean, own_sq = live.mean(spatial, keepdim=True), live.square().mean(spatial, keepdim=True)
        else:  # (B, F): an example's statistics are its own values
            own_mean, own_sq = live, live.square()
        new = 1.0 / (n + 1.0)  # the example's weight; the reference batch's is N / (N + 1)
        mean = new * own_mean + (1.0 - new) * ref_mean
        sq = new * own_sq + (1.0 - new) * ref_sq
        out = torch.cat([
            (ref - ref_mean) * torch.rsqrt((ref_sq - ref_mean.square()).clamp_min(0.0) + self.eps),
            (live - mean) * torch.rsqrt((sq - mean.square()).clamp_min(0.0) + self.eps),
        ])  # fmt: skip
        if self.weight is not None:
            shape = (1, -1) + (1,) * len(spatial)
            out = out * self.weight.float().view(shape) + self.bias.float().view(shape)
        return out.to(x.dtype)


class VirtualBatchReference(nn.Module):
    """The reference batch's inputs: N latents and N labels, buffers of G (in its state dict)."""

    def __init__(self, z: torch.Tensor, y: torch.Tensor):
        super().__init__()
        self.register_buffer("z", z)
        self.register_buffer("y", y)


def _with_reference(G: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """G's forward pre-hook: the reference batch's z and labels before the batch's (G(z, y, **kwargs))."""
    if not args:
        raise TypeError(f"{type(G).__name__} with {KEY} takes its latents and labels by position: G(z, y)")
    ref = G.vbn_reference
    z, *rest = args
    batch = z.shape[0]
    for name, value in kwargs.items():  # a per-example input has no value for the reference batch
        if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch:
            raise ConfigError(f"{KEY}: G's input {name!r} is per example, and the reference batch has none")
    z = torch.cat([ref.z.to(z.dtype), z])
    if rest and rest[0] is not None:
        rest[0] = torch.cat([ref.y.to(rest[0].dtype), rest[0]])
    return (z, *rest), kwargs


def _without_reference(G: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
    """G's forward hook: the batch's images only."""
    return output[G.vbn_reference.z.shape[0] :]


def use_virtual_batch_norm(G: nn.Module, m, num_classes: int) -> nn.Module:
    """G (built for model config `m`) with every BatchNorm replaced by a VirtualBatchNorm over a
    reference batch of `m.vbn` examples, drawn now from the global generator; changed in place and
    returned. A ConfigError names the key when G has no BatchNorm."""
    n = m.vbn
    norms = [(name, module) for name, module in G.named_modules() if isinstance(module, _BatchNorm)]
    if not norms:
        raise ConfigError(
            f"{KEY}={n}: {m.name}'s G has no BatchNorm to make virtual (VBN is for the families that "
            "normalize G with BatchNorm: biggan, dcgan, sngan, sagan, ebgan)"
        )
    for name, bn in norms:
        parent, _, leaf = name.rpartition(".")
        setattr(G.get_submodule(parent), leaf, VirtualBatchNorm.replacing(bn, n))
    z = torch.randn(n, m.z_dim)
    y = torch.randint(0, max(num_classes, 1), (n,))
    if G.codes is not None:  # InfoGAN's latent codes join z after the noise (models/codes.py)
        z = torch.cat([z, G.codes.draw(n, None, "cpu")], dim=1)
    G.vbn_reference = VirtualBatchReference(z, y)
    G.register_forward_pre_hook(_with_reference, with_kwargs=True)
    G.register_forward_hook(_without_reference, with_kwargs=True)
    return G


def check_config(cfg) -> None:
    """model.vbn's own rules (called by `bigtrain.config.validate`); whether the family's G has
    BatchNorm is known when it is built."""
    n = cfg.model.vbn
    if n < 0:  # the schema has made it an integer
        raise ConfigError(f"{KEY}={n} must be the reference batch's size, >= 1 (0: off)")
    if n and cfg.dist.sync_bn:
        raise ConfigError(
            f"{KEY}={n} and dist.sync_bn=true: VBN's statistics are each example's and the reference "
            "batch's, nothing to synchronize across ranks; set dist.sync_bn=false"
        )
