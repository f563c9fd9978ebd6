"""BEGAN (Berthelot, Schumm & Metz 2017, "BEGAN: Boundary Equilibrium Generative Adversarial Networks"):
D is an autoencoder, and its output is the energy of each image, the L1 reconstruction error
L(v) = |v - D(v)| as a mean over pixels (eq. 1 with eta = 1), which the BEGAN loss
(bigtrain/objective/energy.py) balances between reals and fakes.

The architecture of the paper's Figure 1 and section 3.5, as the reference implementation builds it
(carpedm20/BEGAN-tensorflow, models.py GeneratorCNN / DiscriminatorCNN, commit 722b3f1):

- 3x3 convolutions, each followed by an ELU; `convs` (the paper: "typically 2") per stage, `n`
  filters in every stage of G and of D's decoder;
- D's encoder: a 3x3 conv from RGB, then log2(R) - 2 stages with n, 2n, 3n, ... filters (increased
  linearly with each down-sampling), each but the last ending in a stride-2 3x3 conv ("sub-sampling
  with stride 2"), down to 8x8;
- at the boundary, fully connected layers without non-linearity to and from the embedding h in R^Nh;
- the decoder and G: a fully connected layer to 8x8 x n, the stages with nearest-neighbour 2x
  up-sampling between them, and a 3x3 conv to RGB with no activation. G has the decoder's
  architecture (not its weights).

Weights start as the reference's (tf-slim's defaults): Glorot-uniform weights, zero biases. Its
stride-2 convolutions use TensorFlow's SAME padding, which on an even input pads only the bottom and
right; so do these. Given the reference's weights (its TensorFlow graph run in v1 mode, the kernels
transposed to PyTorch's layout), G's images, D's embedding and the energies agree with its outputs to
5e-7 at 32 and 64 px: the parameter counts are in tests/test_energy_gans.py. The latent is uniform on [-1, 1]^Nz (section 3.5): the trainer draws z ~ N(0, 1),
which G maps to 2 Phi(z) - 1 = erf(z / sqrt 2), exactly uniform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .heads import aux_classes, d_heads
from .layers import MinibatchDiscrimination, assert_shape, one_hot
from .roles import DiscriminatorRole, DOutput, GeneratorRole

BASE = 8  # the side of the first (G, decoder) and last (encoder) feature maps, as in the reference


@dataclass
class Section:
    """model.began: BEGAN's knobs (the reference's defaults: config.py conv_hidden_num 128, z_num 64)."""

    n: int = 128  # filters per conv of G and of D's decoder; D's encoder stages have n, 2n, 3n, ...
    hidden: int = 0  # Nh, the size of D's embedding; 0: model.z_dim (Nh = Nz, as the reference's z_num)
    convs: int = 2  # 3x3 convs per stage (the paper: "typically 2"; more gave better results)

    def check(self, key: str, m) -> None:
        for name in ("n", "convs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name}={getattr(self, name)} must be > 0")
        if self.hidden < 0:
            raise ConfigError(f"{key}.hidden={self.hidden} must be >= 0 (0: model.z_dim)")
        _check_resolution(m.resolution)


def build(m, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Unconditional, as in the paper. With the auxiliary classifier (model.aux_classifier), G takes the
    one-hot label beside z, as ProGAN's does for AC-GAN."""
    s = m.began
    hidden = s.hidden or m.z_dim
    g = Generator(m.resolution, m.z_dim, s.n, s.convs, aux_classes(m, num_classes))
    return g, Discriminator(m.resolution, s.n, hidden, s.convs, **d_heads(m, num_classes))


def _check_resolution(resolution: int) -> None:
    if resolution < BASE or resolution & (resolution - 1):
        raise ConfigError(f"model.resolution={resolution}: BEGAN needs a power of two >= {BASE}")


def _stages(resolution: int) -> int:
    """The reference's repeat_num: log2(R) - 2 stages, from 8x8 to R x R."""
    return int(math.log2(resolution)) - 2


def _conv(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """A 3x3 conv initialized as tf-slim's conv2d (Glorot-uniform weight, zero bias)."""
    conv = nn.Conv2d(in_ch, out_ch, 3, stride, padding=1 if stride == 1 else 0)
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _linear(in_features: int, out_features: int) -> nn.Linear:
    """slim.fully_connected's initialization (Glorot-uniform weight, zero bias)."""
    linear = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class Stage(nn.Module):
    """`convs` 3x3 convs with ELUs at `width` filters (the first from `in_ch`), then, with `down`, a
    stride-2 3x3 conv (TensorFlow SAME padding: one row and column of zeros at the bottom and right)."""

    def __init__(self, in_ch: int, width: int, convs: int, down: bool = False):
        super().__init__()
        self.convs = nn.ModuleList([_conv(in_ch if i == 0 else width, width) for i in range(convs)])
        self.down = _conv(width, width, stride=2) if down else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.elu(conv(x))
        if self.down is not None:
            x = F.elu(self.down(F.pad(x, (0, 1, 0, 1))))
        return x


class Decoder(nn.Module):
    """G and D's decoder (Figure 1): a linear map to 8x8 x n, stages with nearest-neighbour 2x
    up-sampling between them, and a 3x3 conv to RGB."""

    def __init__(self, in_features: int, resolution: int, n: int, convs: int):
        super().__init__()
        self.n = n
        self.fc = _linear(in_features, BASE * BASE * n)
        self.stages = nn.ModuleList([Stage(n, n, convs) for _ in range(_stages(resolution))])
        self.to_rgb = _conv(n, 3)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.fc(h).view(h.shape[0], self.n, BASE, BASE)
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = stage(x)
        return self.to_rgb(x)


class Generator(GeneratorRole):
    """z (B, Nz) -> (B, 3, R, R): the decoder's architecture on z mapped to U(-1, 1) (see above)."""

    class_tensors = (r"decoder\.fc\.weight$",)  # reads the one-hot label beside z (AC-GAN only)

    def __init__(self, resolution: int, z_dim: int = 64, n: int = 128, convs: int = 2, num_classes: int = 0):
        super().__init__()
        _check_resolution(resolution)
        self.resolution, self.z_dim, self.num_classes = resolution, z_dim, num_classes
        self.decoder = Decoder(z_dim + num_classes, resolution, n, convs)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        u = torch.erf(z * (1.0 / math.sqrt(2.0)))  # 2 Phi(z) - 1: N(0, 1) -> U(-1, 1)
        if self.num_classes:
            u = torch.cat([u, one_hot(y, self.num_classes).to(u.dtype)], dim=1)
        return self.decoder(u)


class Discriminator(DiscriminatorRole):
    """images -> their energy L(x) = mean |x - Dec(Enc(x))| over channels and pixels, (B,). Declared
    features: the embedding h (B, Nh). Minibatch discrimination (off: 0 kernels) feeds its closeness
    features to the decoder beside h; AC-GAN's classifier is a linear layer on h."""

    class_tensors = (r"classifier\.",)

    def __init__(
        self, resolution: int, n: int = 128, hidden: int = 64, convs: int = 2, minibatch_kernels: int = 0,
        minibatch_kernel_dims: int = 5, aux_classes: int = 0,
    ):  # fmt: skip
        super().__init__()
        _check_resolution(resolution)
        self.resolution = resolution
        stages = _stages(resolution)
        self.from_rgb = _conv(3, n)
        widths = [n * (i + 1) for i in range(stages)]  # increased linearly with each down-sampling
        self.stages = nn.ModuleList(
            [
                Stage(n if i == 0 else widths[i - 1], w, convs, down=i < stages - 1)
                for i, w in enumerate(widths)
            ]
        )
        self.encode = _linear(BASE * BASE * widths[-1], hidden)
        self.minibatch = (
            MinibatchDiscrimination(hidden, minibatch_kernels, minibatch_kernel_dims)
            if minibatch_kernels
            else None
        )
        self.decoder = Decoder(hidden + minibatch_kernels, resolution, n, convs)
        self.classifier = _linear(hidden, aux_classes) if aux_classes else None

    def input_blocks(self) -> list[nn.Module]:
        """The encoder's stages (the first with the conv from RGB), its linear map to h, then the
        decoder's linear map and stages; the conv to RGB is D's output layer."""
        first = nn.ModuleList([self.from_rgb, self.stages[0]])
        return [first, *self.stages[1:], self.encode, self.decoder.fc, *self.decoder.stages]

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, parts: int = 1, all_outputs: bool = False
    ) -> torch.Tensor | DOutput:
        assert_shape(x, (None, 3, self.resolution, self.resolution), "BEGAN D input")
        h = F.elu(self.from_rgb(x))
        for stage in self.stages:
            h = stage(h)
        code = self.encode(h.flatten(1))  # no non-linearity at the boundary (section 3.5)
        decoded = self.decoder(code if self.minibatch is None else self.minibatch(code, parts))
        energy = (decoded.float() - x.float()).abs().mean(dim=(1, 2, 3))
        if not all_outputs:
            return energy
        return DOutput(energy, code, None if self.classifier is None else self.classifier(code))
