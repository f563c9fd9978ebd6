"""SN-GAN (Miyato, Kataoka, Koyama & Yoshida 2018, "Spectral Normalization for Generative Adversarial
Networks") and its class-conditional form, the projection discriminator (Miyato & Koyama 2018, "cGANs with
Projection Discriminator").

Spectral normalization (SN-GAN section 2.1, eq. 8 and Algorithm 1): every weight of D is used as
W_SN = W / sigma(W), sigma the largest singular value of W reshaped to (out, -1), estimated by one power
iteration per training forward from the left singular vector u kept between steps: v = normalize(W^T u),
u = normalize(W v), sigma = u^T W v, as the reference's `max_singular_value` (eps 1e-12).
`ReferenceSpectralNorm` is torch's spectral norm with that order: torch's own iterates u from the v it
keeps and then v, so its sigma is a half iteration further on and its outputs differ from the reference's
for the same u (they agree once the vectors have converged). torch keeps v beside u; in training v is
recomputed from u first, so only u carries over, as in the reference, and v is what eval mode reads (no
iteration there; the reference's SN convolution iterates in test mode without storing). u starts from
15 iterations at construction, the reference's from a random vector. In bigtrain D's vectors advance in
D's own step only, one iteration per D step over reals and fakes together; the reference's D advances
them in every call (reals, fakes and G's step apart).

Projection (Miyato & Koyama eq. 3): D(x, y) = psi(phi(x)) + <embed(y), phi(x)>, phi(x) the features
D's output layer reads, psi that linear layer; without classes only psi(phi(x)).

Two architectures (`model.sngan.arch`), both 32x32 (CIFAR-10):
- resnet: the CIFAR ResNet of the official code, pfnet-research/sngan_projection at e84b1a5
  (gen_models/resnet_32.py ResNetGenerator, dis_models/snresnet_32.py SNResNetProjectionDiscriminator;
  the SN-GAN paper's appendix B): G linear z -> 4x4 x ch, three up-blocks, BN, ReLU, conv3x3, tanh, with
  categorical conditional BN in the blocks when conditional; D the optimized first block, one down-block,
  two blocks at 8x8, ReLU, global sum pooling, SN linear (no bias), the projection when conditional.
  Initialization as there: Glorot uniform with gain sqrt(2) for the blocks' 3x3 convs, 1 for shortcuts,
  the input linear, the output conv, D's linear and the class embedding; biases 0, BN gains 1.
- standard_cnn: the paper's standard CNN (appendix B, Table 3) with the layer list of the same group's
  pfnet-research/chainer-gan-lib at cf9efba (common/net.py DCGANGenerator, SNDCGANDiscriminator, ch 512):
  G linear z -> 4x4 x ch with BN over its 16 ch features and ReLU, three 4x4 stride-2 deconvs with BN and
  ReLU halving the width, a 3x3 deconv to RGB, tanh; D seven SN convs (3x3 s1 / 4x4 s2 alternating, widths
  ch/8, ch/4, ch/4, ch/2, ch/2, ch, ch), leaky ReLU 0.1, SN dense on the flattened 4x4 x ch. N(0, 0.02)
  init. The slope 0.1 is the paper's (appendix B; google/compare_gan's sndcgan.py agrees);
  chainer-gan-lib leaves chainer's default 0.2. StudioGAN's deep_conv.py widens at the 3x3 convs instead
  (64, 64, 128, 128, 256, 256, 512). Conditional (no reference has it): every G BN categorical, as
  compare_gan's conditional batch norm, and the projection on the flattened features.

BatchNorm eps is chainer's default 2e-5 (both references), momentum 0.1 (chainer's decay 0.9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

from ..errors import ConfigError
from .heads import d_heads
from .layers import MinibatchDiscrimination, assert_shape
from .roles import DiscriminatorRole, DOutput, GeneratorRole

ARCHS = ("resnet", "standard_cnn")
RESOLUTION = 32  # both architectures are the CIFAR-10 networks: a 4x4 input grown by three x2 stages
# The references' widths (model.sngan.ch / d_ch 0): sngan_projection's configs/sn_cifar10_*.yml (G 256,
# D 128) and chainer-gan-lib's DCGANGenerator / SNDCGANDiscriminator defaults (ch 512 both).
DEFAULT_WIDTHS = {"resnet": (256, 128), "standard_cnn": (512, 512)}
BN_EPS = 2e-5  # chainer.links.BatchNormalization's default, used by both references
SN_EPS = 1e-12  # the reference's power-iteration normalization eps (torch's default too)
LEAK = 0.1  # standard CNN D's leaky ReLU slope (SN-GAN appendix B)


@dataclass
class Section:
    """model.sngan: SN-GAN's knobs."""

    arch: str = field(default="resnet", metadata={"choices": ARCHS})
    # Widths; 0: the reference's. resnet: every G stage (256) and every D block (128). standard_cnn:
    # G's 4x4 input, halved by each up-block (512), and D's last two convs, the first having 1/8 (512).
    ch: int = 0
    d_ch: int = 0
    # false: the unconditional networks even where the data has classes, whose labels are then unused
    # (sngan_projection's sn_cifar10_unconditional.yml, n_classes 0, on labelled CIFAR-10; the trainer
    # refuses model.num_classes=1 on such data). true: conditional wherever there are classes.
    conditional: bool = True

    def check(self, key: str, m) -> None:
        for name in ("ch", "d_ch"):
            value = getattr(self, name)
            if value < 0 or (self.arch == "standard_cnn" and value % 8):
                rule = "a multiple of 8 (the standard CNN divides it by 8)" if value >= 0 else ">= 0"
                raise ConfigError(f"{key}.{name}={value} must be {rule}; 0 takes the reference's")
        check_resolution(m.resolution, self.arch)

    def widths(self) -> tuple[int, int]:
        """(G width, D width) with the reference's for 0."""
        g, d = DEFAULT_WIDTHS[self.arch]
        return self.ch or g, self.d_ch or d


def build(m, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Conditional (categorical BN in G, projection in D) when the data has classes and
    model.sngan.conditional is on; AC-GAN's head (model.aux_classifier) only then."""
    s = m.sngan
    classes = num_classes if num_classes > 1 and s.conditional else 0
    g_ch, d_ch = s.widths()
    if s.arch == "resnet":
        g = ResNetGenerator(m.resolution, m.z_dim, g_ch, classes)
        d = ResNetDiscriminator(m.resolution, d_ch, classes, **d_heads(m, classes))
    else:
        g = StandardGenerator(m.resolution, m.z_dim, g_ch, classes)
        d = StandardDiscriminator(m.resolution, d_ch, classes, **d_heads(m, classes))
    return g, d


def check_resolution(resolution: int, arch: str) -> None:
    if resolution != RESOLUTION:
        raise ConfigError(
            f"model.resolution={resolution}: SN-GAN's {arch} is the 32x32 CIFAR-10 network of the paper's "
            f"appendix B (model.sngan.arch={arch} builds {RESOLUTION} only)"
        )


def _init(module: nn.Module, gain: float | None) -> nn.Module:
    """Glorot uniform with `gain` (chainer's GlorotUniform(scale): the same fans and bound as torch's
    xavier_uniform_), or N(0, 0.02) for None; biases 0."""
    if gain is None:
        nn.init.normal_(module.weight, 0.0, 0.02)
    else:
        nn.init.xavier_uniform_(module.weight, gain)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return module


class ReferenceSpectralNorm(_SpectralNorm):
    """torch's spectral-norm parametrization (buffers `_u`, `_v`; paused by `layers.frozen_state` like
    any other) iterating in the reference's order: v = normalize(W^T u), then u = normalize(W v); the
    forward's sigma = u^T W v is then ||W v||, the reference's estimate for the same u."""

    @torch.no_grad()
    def _power_method(self, weight_mat: torch.Tensor, n_power_iterations: int) -> None:
        for _ in range(n_power_iterations):  # in place, as torch's (DataParallel replicas share them)
            self._v = F.normalize(torch.mv(weight_mat.H, self._u), dim=0, eps=self.eps, out=self._v)
            self._u = F.normalize(torch.mv(weight_mat, self._v), dim=0, eps=self.eps, out=self._u)


def _sn(module: nn.Module, gain: float | None) -> nn.Module:
    """Initialized, then spectrally normalized over W reshaped to (out, -1) (an embedding's rows are
    its classes, as the reference's SNEmbedID); the power iteration starts from the initial weight."""
    _init(module, gain)
    sn = ReferenceSpectralNorm(module.weight, n_power_iterations=1, dim=0, eps=SN_EPS)
    parametrize.register_parametrization(module, "weight", sn)
    return module


class CategoricalBatchNorm(nn.Module):
    """BatchNorm whose gain and bias are looked up per class: gamma_y * BN(x) + beta_y, gains
    initialized at 1 and biases at 0 (sngan_projection's CategoricalConditionalBatchNormalization).
    Without classes, the ordinary affine BatchNorm. `norm`: nn.BatchNorm2d over the channels of
    (B, C, H, W), or nn.BatchNorm1d over the features of (B, F)."""

    def __init__(self, norm: type[nn.Module], features: int, num_classes: int):
        super().__init__()
        self.bn = norm(features, eps=BN_EPS, affine=not num_classes)
        self.gammas = self.betas = None
        if num_classes:
            self.gammas = nn.Embedding(num_classes, features)
            self.betas = nn.Embedding(num_classes, features)
            nn.init.ones_(self.gammas.weight)
            nn.init.zeros_(self.betas.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.bn(x)
        if self.gammas is None:
            return out
        shape = (x.shape[0], x.shape[1]) + (1,) * (x.ndim - 2)
        return out * self.gammas(y).view(shape) + self.betas(y).view(shape)


# --------------------------------------------------------------------------- resnet


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")  # chainer's unpooling_2d(x, 2)


class GBlock(nn.Module):
    """Up-block (gen_models/resblocks.py Block, upsample): BN-ReLU-up-conv3x3-BN-ReLU-conv3x3, plus an
    upsampled, 1x1-convolved shortcut."""

    def __init__(self, in_ch: int, out_ch: int, num_classes: int):
        super().__init__()
        self.b1 = CategoricalBatchNorm(nn.BatchNorm2d, in_ch, num_classes)
        self.c1 = _init(nn.Conv2d(in_ch, out_ch, 3, padding=1), math.sqrt(2))
        self.b2 = CategoricalBatchNorm(nn.BatchNorm2d, out_ch, num_classes)
        self.c2 = _init(nn.Conv2d(out_ch, out_ch, 3, padding=1), math.sqrt(2))
        self.c_sc = _init(nn.Conv2d(in_ch, out_ch, 1), 1.0)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.c1(_up(F.relu(self.b1(x, y))))
        h = self.c2(F.relu(self.b2(h, y)))
        return h + self.c_sc(_up(x))


class ResNetGenerator(GeneratorRole):
    """G(z, y) -> (B, 3, 32, 32) in [-1, 1]: linear to 4x4 x ch, three up-blocks, BN, ReLU, conv3x3, tanh."""

    # The blocks' BN gains and biases: per-class embeddings when conditional, else plain affine parameters.
    class_tensors = (r"blocks\.\d+\.b[12]\.(gammas|betas)\.", r"blocks\.\d+\.b[12]\.bn\.(weight|bias)$")

    def __init__(self, resolution: int = 32, z_dim: int = 128, ch: int = 256, num_classes: int = 0):
        super().__init__()
        check_resolution(resolution, "resnet")
        self.resolution, self.z_dim, self.ch = resolution, z_dim, ch
        self.l1 = _init(nn.Linear(z_dim, 4 * 4 * ch), 1.0)
        self.blocks = nn.ModuleList(GBlock(ch, ch, num_classes) for _ in range(3))
        self.b5 = nn.BatchNorm2d(ch, eps=BN_EPS)  # unconditional also in the conditional G, as there
        self.c5 = _init(nn.Conv2d(ch, 3, 3, padding=1), 1.0)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert_shape(z, (None, self.z_dim), "SN-GAN G latent z")
        h = self.l1(z).view(z.shape[0], self.ch, 4, 4)
        for block in self.blocks:
            h = block(h, y)
        return torch.tanh(self.c5(F.relu(self.b5(h))))


def _pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)


class DBlock(nn.Module):
    """dis_models/resblocks.py: `first`, the OptimizedBlock on pixels (conv3x3-ReLU-conv3x3-pool, shortcut
    pool-conv1x1); else Block (ReLU-conv3x3-ReLU-conv3x3[-pool], shortcut conv1x1[-pool] where the width
    or the size changes, else the identity). Block's hidden width is its input's, as there."""

    def __init__(self, in_ch: int, out_ch: int, downsample: bool, first: bool = False):
        super().__init__()
        self.first, self.downsample = first, downsample or first
        hidden = out_ch if first else in_ch
        self.c1 = _sn(nn.Conv2d(in_ch, hidden, 3, padding=1), math.sqrt(2))
        self.c2 = _sn(nn.Conv2d(hidden, out_ch, 3, padding=1), math.sqrt(2))
        learnable = first or in_ch != out_ch or downsample
        self.c_sc = _sn(nn.Conv2d(in_ch, out_ch, 1), 1.0) if learnable else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c2(F.relu(self.c1(x if self.first else F.relu(x))))
        h = _pool(h) if self.downsample else h
        if self.first:
            return h + self.c_sc(_pool(x))
        skip = x if self.c_sc is None else self.c_sc(x)
        return h + (_pool(skip) if self.downsample else skip)


class _Heads(DiscriminatorRole):
    """What follows phi(x) in both Ds: minibatch discrimination (off: 0 kernels), the SN output layer
    psi, the projection and AC-GAN's classifier."""

    class_tensors = (r"embed\.", r"classifier\.")  # the projection's class embedding, AC-GAN's head

    def _heads(
        self, features: int, num_classes: int, minibatch_kernels: int, minibatch_kernel_dims: int,
        aux_classes: int, gain: float | None, bias: bool,
    ) -> None:  # fmt: skip
        self.minibatch = (
            MinibatchDiscrimination(features, minibatch_kernels, minibatch_kernel_dims)
            if minibatch_kernels
            else None
        )
        self.linear = _sn(nn.Linear(features + minibatch_kernels, 1, bias=bias), gain)
        self.embed = _sn(nn.Embedding(num_classes, features), gain) if num_classes else None
        self.classifier = _sn(nn.Linear(features, aux_classes), gain) if aux_classes else None

    def _out(
        self, features: torch.Tensor, y: torch.Tensor, parts: int, all_outputs: bool
    ) -> torch.Tensor | DOutput:
        out = self.linear(features if self.minibatch is None else self.minibatch(features, parts)).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(y) * features).sum(dim=1)  # <embed(y), phi(x)>
        if not all_outputs:
            return out
        return DOutput(out, features, None if self.classifier is None else self.classifier(features))


class ResNetDiscriminator(_Heads):
    """D(x, y) -> (B,): the optimized block 32 -> 16, a down-block to 8, two blocks at 8, ReLU, global
    sum pooling (phi, ch features), SN linear without bias, plus the projection when conditional."""

    def __init__(
        self, resolution: int = 32, ch: int = 128, num_classes: int = 0, minibatch_kernels: int = 0,
        minibatch_kernel_dims: int = 5, aux_classes: int = 0,
    ):  # fmt: skip
        super().__init__()
        check_resolution(resolution, "resnet")
        self.resolution = resolution
        self.blocks = nn.ModuleList(
            [
                DBlock(3, ch, True, first=True),
                DBlock(ch, ch, True),
                DBlock(ch, ch, False),
                DBlock(ch, ch, False),
            ]
        )
        self._heads(ch, num_classes, minibatch_kernels, minibatch_kernel_dims, aux_classes, 1.0, bias=False)

    def input_blocks(self) -> list[nn.Module]:
        return list(self.blocks)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, parts: int = 1, all_outputs: bool = False
    ) -> torch.Tensor | DOutput:
        assert_shape(x, (None, 3, self.resolution, self.resolution), "SN-GAN D input")
        h = x
        for block in self.blocks:
            h = block(h)
        return self._out(F.relu(h).sum(dim=(2, 3)), y, parts, all_outputs)


# --------------------------------------------------------------------------- standard CNN


class StandardGenerator(GeneratorRole):
    """G(z, y) -> (B, 3, 32, 32) in [-1, 1]: linear to 4x4 x ch with BN and ReLU, three 4x4 stride-2
    deconvs with BN and ReLU to ch/2, ch/4, ch/8, a 3x3 deconv to RGB, tanh (DCGANGenerator)."""

    class_tensors = (r"bn\d\.(gammas|betas)\.", r"bn\d\.bn\.(weight|bias)$")  # every BN's gain and bias

    def __init__(self, resolution: int = 32, z_dim: int = 128, ch: int = 512, num_classes: int = 0):
        super().__init__()
        check_resolution(resolution, "standard_cnn")
        self.resolution, self.z_dim, self.ch = resolution, z_dim, ch
        self.l0 = _init(nn.Linear(z_dim, 4 * 4 * ch), None)
        self.bn0 = CategoricalBatchNorm(nn.BatchNorm1d, 4 * 4 * ch, num_classes)  # per feature, as there
        self.dc1 = _init(nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1), None)
        self.bn1 = CategoricalBatchNorm(nn.BatchNorm2d, ch // 2, num_classes)
        self.dc2 = _init(nn.ConvTranspose2d(ch // 2, ch // 4, 4, 2, 1), None)
        self.bn2 = CategoricalBatchNorm(nn.BatchNorm2d, ch // 4, num_classes)
        self.dc3 = _init(nn.ConvTranspose2d(ch // 4, ch // 8, 4, 2, 1), None)
        self.bn3 = CategoricalBatchNorm(nn.BatchNorm2d, ch // 8, num_classes)
        self.dc4 = _init(nn.ConvTranspose2d(ch // 8, 3, 3, 1, 1), None)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert_shape(z, (None, self.z_dim), "SN-GAN G latent z")
        h = F.relu(self.bn0(self.l0(z), y)).view(z.shape[0], self.ch, 4, 4)
        for deconv, bn in ((self.dc1, self.bn1), (self.dc2, self.bn2), (self.dc3, self.bn3)):
            h = F.relu(bn(deconv(h), y))
        return torch.tanh(self.dc4(h))


class StandardDiscriminator(_Heads):
    """D(x, y) -> (B,): seven SN convs with leaky ReLU 0.1 (3x3 stride 1 and 4x4 stride 2 alternating,
    32 -> 4), an SN dense layer on the flattened 4x4 x ch (phi), plus the projection when conditional
    (SNDCGANDiscriminator). Each conv is one of `input_blocks`."""

    def __init__(
        self, resolution: int = 32, ch: int = 512, num_classes: int = 0, minibatch_kernels: int = 0,
        minibatch_kernel_dims: int = 5, aux_classes: int = 0,
    ):  # fmt: skip
        super().__init__()
        check_resolution(resolution, "standard_cnn")
        self.resolution = resolution
        widths = [3, ch // 8, ch // 4, ch // 4, ch // 2, ch // 2, ch, ch]
        self.convs = nn.ModuleList(
            _sn(nn.Conv2d(widths[i], widths[i + 1], 4 if i % 2 else 3, 2 if i % 2 else 1, 1), None)
            for i in range(7)
        )
        self._heads(
            4 * 4 * ch, num_classes, minibatch_kernels, minibatch_kernel_dims, aux_classes, None, True
        )

    def input_blocks(self) -> list[nn.Module]:
        return list(self.convs)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, parts: int = 1, all_outputs: bool = False
    ) -> torch.Tensor | DOutput:
        assert_shape(x, (None, 3, self.resolution, self.resolution), "SN-GAN D input")
        h = x
        for conv in self.convs:
            h = F.leaky_relu(conv(h), LEAK)
        return self._out(h.flatten(1), y, parts, all_outputs)
