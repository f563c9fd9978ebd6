"""Building blocks shared by the models: spectral-normalized layers, conditional BatchNorm, attention,
equalized-learning-rate layers and the feature-map rule of ProGAN and StyleGAN2."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.parametrizations import _SpectralNorm, spectral_norm


def assert_shape(tensor: torch.Tensor, shape: tuple, what: str) -> None:
    """Fail at the block that got a wrong shape, with both shapes (None matches any size)."""
    if tensor.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, tensor.shape)):
        raise ValueError(f"{what}: expected shape {tuple(shape)}, got {tuple(tensor.shape)}")


SQRT2 = math.sqrt(2.0)

INITS = ("ortho", "N02")  # BigGAN-PyTorch's G_init / D_init choices that its launch scripts use


def init_weight(weight: torch.Tensor, init: str = "ortho") -> None:
    """BigGAN's initialization of a conv, linear or embedding weight: orthogonal (the paper) or
    N(0, 0.02) (BigGAN-PyTorch's CIFAR script)."""
    if init == "ortho":
        nn.init.orthogonal_(weight)
    elif init == "N02":
        nn.init.normal_(weight, 0.0, 0.02)
    else:
        raise ValueError(f"unknown initialization {init!r}: one of {INITS}")


def _sn(module: nn.Module, eps: float, init: str = "ortho") -> nn.Module:
    init_weight(module.weight, init)  # before the SN reparametrization, which estimates sigma from it
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return spectral_norm(module, eps=eps)


def sn_conv2d(
    in_ch: int, out_ch: int, kernel: int = 3, bias: bool = True, eps: float = 1e-6, init: str = "ortho"
) -> nn.Module:
    return _sn(nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=bias), eps, init)


def sn_linear(
    in_features: int, out_features: int, bias: bool = True, eps: float = 1e-6, init: str = "ortho"
) -> nn.Module:
    return _sn(nn.Linear(in_features, out_features, bias=bias), eps, init)


def sn_embedding(num_embeddings: int, dim: int, eps: float = 1e-6, init: str = "ortho") -> nn.Module:
    return _sn(nn.Embedding(num_embeddings, dim), eps, init)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose per-channel gain and bias are linear functions of a conditioning vector.

    y = BN(x) * (1 + W_gain c) + W_bias c      (Brock et al. 2018, Sec. 3 / appendix B)
    With `num_classes`, c is the class label and W_gain, W_bias are per-class embeddings of this layer
    (BigGAN-PyTorch without G_shared). With neither, it is an ordinary affine BatchNorm.
    """

    def __init__(
        self, num_features: int, cond_dim: int, eps: float = 1e-5, sn_eps: float = 1e-6, init: str = "ortho",
        num_classes: int = 0,
    ):  # fmt: skip
        super().__init__()
        self.conditional = bool(cond_dim or num_classes)
        self.bn = nn.BatchNorm2d(num_features, eps=eps, affine=not self.conditional)
        if num_classes:  # one (unnormalized) embedding per layer, as BigGAN-PyTorch's nn.Embedding
            self.gain, self.bias = (
                nn.Embedding(num_classes, num_features),
                nn.Embedding(num_classes, num_features),
            )
            init_weight(self.gain.weight, init)
            init_weight(self.bias.weight, init)
        elif cond_dim:
            self.gain = sn_linear(cond_dim, num_features, bias=False, eps=sn_eps, init=init)
            self.bias = sn_linear(cond_dim, num_features, bias=False, eps=sn_eps, init=init)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """`cond`: (B, cond_dim) float, or (B,) class labels with `num_classes`."""
        out = self.bn(x)
        if not self.conditional:
            return out
        gain = 1.0 + self.gain(cond)[:, :, None, None]
        bias = self.bias(cond)[:, :, None, None]
        return out * gain + bias


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019) as used in BigGAN, on scaled_dot_product_attention.

    Keys and values are max-pooled 2x2; SAGAN applies no 1/sqrt(d) scaling, hence scale=1.
    The output is x + gamma * o(attention), with gamma starting at 0.
    """

    def __init__(self, ch: int, sn_eps: float = 1e-6, init: str = "ortho"):
        super().__init__()
        if ch < 8:
            raise ValueError(
                f"self-attention needs at least 8 channels, got {ch} (raise the channel multiplier)"
            )
        self.ch = ch
        self.theta = sn_conv2d(ch, ch // 8, 1, bias=False, eps=sn_eps, init=init)
        self.phi = sn_conv2d(ch, ch // 8, 1, bias=False, eps=sn_eps, init=init)
        self.g = sn_conv2d(ch, ch // 2, 1, bias=False, eps=sn_eps, init=init)
        self.o = sn_conv2d(ch // 2, ch, 1, bias=False, eps=sn_eps, init=init)
        self.gamma = nn.Parameter(torch.zeros(1))  # 1-d: some engines cannot broadcast 0-d tensors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        query = self.theta(x).flatten(2).transpose(1, 2)  # (B, HW, C/8)
        key = F.max_pool2d(self.phi(x), 2).flatten(2).transpose(1, 2)  # (B, HW/4, C/8)
        value = F.max_pool2d(self.g(x), 2).flatten(2).transpose(1, 2)  # (B, HW/4, C/2)
        attended = F.scaled_dot_product_attention(query[:, None], key[:, None], value[:, None], scale=1.0)
        attended = attended[:, 0].transpose(1, 2).reshape(b, c // 2, h, w)
        return x + self.gamma * self.o(attended)


# --------------------------------------------------------------------------- ProGAN and StyleGAN2


def feature_maps(resolution: int, base: int, maximum: int) -> int:
    """Feature maps at a resolution: base / resolution, at most `maximum`."""
    return int(min(base // resolution, maximum))


def doubling_resolutions(final: int, family: str) -> list[int]:
    """4, 8, ..., final: one block per resolution."""
    if final < 4 or final & (final - 1):
        raise ValueError(f"{family} resolution {final} must be a power of two >= 4")
    return [2**k for k in range(2, int(math.log2(final)) + 1)]


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float one-hot rows by scatter: nothing is read back to the host, on any device."""
    return torch.zeros(y.shape[0], num_classes, device=y.device).scatter_(1, y[:, None], 1.0)


class EqualizedLinear(nn.Module):
    """Equalized learning rate (ProGAN 4.1): weights drawn from N(0, 1) and scaled at run time by
    gain / sqrt(fan_in), so Adam's per-parameter step is the same for every layer. `lr_multiplier`
    slows the layer (StyleGAN's mapping network: 0.01); `act`: leaky ReLU x sqrt2 (StyleGAN2's lrelu)."""

    def __init__(
        self, fin: int, fout: int, gain: float = 1.0, bias_init: float = 0.0, lr_multiplier: float = 1.0,
        act: bool = False,
    ):  # fmt: skip
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fout, fin) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((fout,), float(bias_init) / lr_multiplier))
        self.weight_gain = gain * lr_multiplier / math.sqrt(fin)
        self.bias_gain = lr_multiplier
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return F.leaky_relu(x, 0.2) * SQRT2 if self.act else x


class EqualizedConv2d(nn.Module):
    """Equalized-lr convolution (see EqualizedLinear) with "same" padding."""

    def __init__(self, cin: int, cout: int, kernel: int, gain: float = 1.0, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.weight_gain = gain / math.sqrt(cin * kernel * kernel)
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=self.kernel // 2)


@contextlib.contextmanager
def frozen_state(module: nn.Module, batchnorm: bool = False):
    """Run `module` without advancing its state: spectral-norm power iterations paused (the stored
    u, v are used as they are) and, with `batchnorm`, BN running statistics kept (momentum 0) while BN
    still normalizes with batch statistics. Parameters and autograd are unaffected."""
    sn = [m for m in module.modules() if isinstance(m, _SpectralNorm) and m.training]
    bns = [m for m in module.modules() if batchnorm and isinstance(m, _BatchNorm) and m.training]
    momenta = [bn.momentum for bn in bns]
    for m in sn:
        m.training = False
    for bn in bns:
        bn.momentum = 0.0
    try:
        yield module
    finally:
        for m in sn:
            m.training = True
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum


class MinibatchDiscrimination(nn.Module):
    """Minibatch discrimination (Salimans et al. 2016, "Improved Techniques for Training GANs", section
    3.2): features f(x_i) in R^A times a learned tensor T in R^(A x B x C) give M_i in R^(B x C); for each
    of the B kernels, o(x_i)_b = sum_{j != i} exp(-||M_i,b - M_j,b||_1) over the other samples of its set.
    The output is [f(x_i), o(x_i)] in R^(A + B): D sees how close a sample is to the rest of its
    minibatch, which a collapsed G cannot hide. With `parts` > 1 the batch is that many contiguous sets
    (reals, fakes, ...), compared only within themselves, as the minibatch standard deviation."""

    def __init__(self, in_features: int, kernels: int, kernel_dims: int = 5):
        super().__init__()
        self.kernels, self.kernel_dims = kernels, kernel_dims
        self.T = nn.Parameter(torch.randn(in_features, kernels * kernel_dims) * 0.05)

    def forward(self, features: torch.Tensor, parts: int = 1) -> torch.Tensor:
        m = (features.float() @ self.T.float()).reshape(-1, self.kernels, self.kernel_dims)
        closeness = []
        for chunk in m.chunk(parts):
            l1 = (chunk.unsqueeze(0) - chunk.unsqueeze(1)).abs().sum(dim=3)  # (N, N, B): ||M_i,b - M_j,b||_1
            closeness.append(torch.exp(-l1).sum(dim=1) - 1.0)  # the sum over j, less the j = i term exp(0)
        return torch.cat([features, torch.cat(closeness).to(features.dtype)], dim=1)
