"""SAGAN (Zhang, Goodfellow, Metaxas & Odena 2019, "Self-Attention Generative Adversarial Networks").

The paper's networks as its official code builds them (brain-research/self-attention-gan @ ad9612e6:
generator.py `generator_test`, discriminator.py `discriminator_test`, non_local.py, ops.py):
- G: z -> SN linear -> 4x4 -> residual up-blocks (conditional BN with one gain and bias per class, ReLU,
  nearest 2x up-sampling, SN 3x3 convs, an SN 1x1 shortcut in every block) -> BN -> ReLU -> SN 3x3 conv
  -> tanh. The paper (Sec. 5) applies spectral norm to G too, not only to D.
- D: an "optimized" first block (conv-ReLU-conv-pool, pool-then-1x1 shortcut), pre-activation residual
  down-blocks, ReLU, global sum pooling, an SN linear output plus the projection <embed(y), phi(x)>
  (Miyato & Koyama 2018) with an SN class embedding.
- Self-attention (Sec. 3, Eq. 1-3) in both, after the block whose output is `g_attn_res` / `d_attn_res`
  pixels wide (official: 32 in both at 128 px). The block is `layers.SelfAttention`, which computes
  what `sn_non_local_block_sim` computes (checked against it: bias-free SN 1x1 convs theta, phi to C/8
  and g to C/2, phi and g max-pooled 2x2 so there are HW/4 keys, softmax over the keys with no
  1/sqrt(d) scaling, the attended values through an SN 1x1 conv C/2 -> C, scaled by gamma = 0 at
  start and added to x). Only its initialization differs (see `_attention`).
Every conv and linear layer in G and D, the attention's included, is spectrally normalized; G's BN
gains and biases are not (nor are they in the official code).

Widths, as multiples of `ch` (G, the official gf_dim) and `d_ch` (D, df_dim):
- 128 px: the official ImageNet networks, G 16-16-8-4-2-1 and D 1-2-4-8-16-16 (its last block keeps 4x4).
- 32 px: PyTorch-StudioGAN's SAGAN for CIFAR-10 (POSTECH-CVLab/PyTorch-StudioGAN @ 947b35e9,
  src/models/resnet.py, config src/configs/CIFAR10/SAGAN.yaml): G 4-4-4-4 (three up-blocks of 4 ch), D
  2-2-2-2 with the last two blocks kept at 8x8; attention there after G's second block (16x16) and D's
  first (16x16).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ..errors import ConfigError
from .heads import attention_input_blocks, d_heads, projection_d_forward
from .layers import (
    INITS,
    ConditionalBatchNorm2d,
    MinibatchDiscrimination,
    SelfAttention,
    assert_shape,
    init_weight,
)
from .roles import DiscriminatorRole, DOutput, GeneratorRole

# Generator: channel multipliers of the 4x4 input, then of each up-block's output (x2 resolution each).
G_WIDTHS = {32: [4, 4, 4, 4], 128: [16, 16, 8, 4, 2, 1]}
# Discriminator: each block's output multiplier, and whether the block halves the resolution.
D_WIDTHS = {32: [2, 2, 2, 2], 128: [1, 2, 4, 8, 16, 16]}
D_DOWNSAMPLE = {32: [True, True, False, False], 128: [True, True, True, True, True, False]}
ARCHITECTURES = tuple(sorted(G_WIDTHS))
# xavier: Glorot uniform, the official code's initializer for every weight; ortho | N02: StudioGAN's options
SAGAN_INITS = ("xavier", *INITS)


@dataclass
class Section:
    """model.sagan: SAGAN's knobs (defaults: the official ImageNet 128 networks)."""

    ch: int = 64  # G width multiplier (the official gf_dim)
    d_ch: int = 64  # D width multiplier (df_dim)
    g_attn_res: int = 32  # self-attention after the G block that outputs this resolution (0: none)
    d_attn_res: int = 32  # ... after the first D block that outputs this resolution (0: none)
    bn_eps: float = 1e-5  # G's BatchNorm epsilon (official 1e-5; StudioGAN 1e-4)
    sn_eps: float = 1e-12  # spectral norm's normalization epsilon (official 1e-12; StudioGAN 1e-6)
    init: str = field(default="xavier", metadata={"choices": SAGAN_INITS})

    def check(self, key: str, m) -> None:
        _check(m.resolution)
        for name in ("ch", "d_ch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name}={getattr(self, name)} must be > 0")
        for name, sizes, width in (
            ("g_attn_res", g_attention_sizes, "ch"),
            ("d_attn_res", d_attention_sizes, "d_ch"),
        ):
            res = getattr(self, name)
            if res == 0:
                continue
            places = sizes(m.resolution, getattr(self, width))
            if res not in places:
                raise ConfigError(
                    f"{key}.{name}={res} is no block output at model.resolution={m.resolution}: one of "
                    f"{sorted(places)} (0: no attention)"
                )
            if places[res] < 8:
                raise ConfigError(
                    f"{key}.{name}={res}: attention needs at least 8 channels there, the widths give "
                    f"{places[res]} (raise {key}.{width})"
                )
        if not self.bn_eps > 0 or not self.sn_eps > 0:
            raise ConfigError(f"{key}.bn_eps={self.bn_eps} and {key}.sn_eps={self.sn_eps} must be > 0")


def build(m, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Class-conditional (conditional BN in G, projection in D) when the data has classes."""
    s, classes = m.sagan, num_classes if num_classes > 1 else 0
    g = Generator(m.resolution, s.ch, m.z_dim, classes, s.g_attn_res, s.bn_eps, s.sn_eps, s.init)
    d = Discriminator(
        m.resolution, s.d_ch, classes, s.d_attn_res, s.sn_eps, s.init, **d_heads(m, num_classes)
    )
    return g, d


def g_attention_sizes(resolution: int, ch: int) -> dict[int, int]:
    """Where G's attention may sit: each up-block's output resolution -> its channels."""
    widths = G_WIDTHS[resolution]
    return {8 * 2**i: ch * w for i, w in enumerate(widths[1:])}


def d_attention_sizes(resolution: int, d_ch: int) -> dict[int, int]:
    """Where D's attention may sit: the resolutions D's blocks output (the first block of each) -> its
    channels; 2x2 at least, for the keys' 2x2 max-pooling."""
    sizes, res = {}, resolution
    for w, down in zip(D_WIDTHS[resolution], D_DOWNSAMPLE[resolution]):
        res = res // 2 if down else res
        if res >= 2:
            sizes.setdefault(res, d_ch * w)
    return sizes


def _check(resolution: int) -> None:
    if resolution not in G_WIDTHS:
        raise ConfigError(f"model.resolution={resolution}: SAGAN has architectures for {ARCHITECTURES}")


def _sn(layer: nn.Module, eps: float, init: str) -> nn.Module:
    """Initialize (weights by `init`, biases 0, as the official code) and spectrally normalize: one power
    iteration per training forward, as the official `spectral_normed_weight(num_iters=1)`."""
    if init == "xavier":
        nn.init.xavier_uniform_(layer.weight)  # TF's xavier_initializer: the same fans for conv/linear
    else:
        init_weight(layer.weight, init)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return spectral_norm(layer, eps=eps)


def _conv(cin: int, cout: int, kernel: int, eps: float, init: str, bias: bool = True) -> nn.Module:
    return _sn(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias), eps, init)


def _attention(ch: int, eps: float, init: str) -> SelfAttention:
    """`layers.SelfAttention` (the official block, see the module docstring), its four bias-free 1x1
    convs initialized by `init`: that layer offers BigGAN's initializations only, so for the official
    Glorot one its convs are made anew here."""
    block = SelfAttention(ch, eps, init if init in INITS else "N02")
    if init not in INITS:
        for name in ("theta", "phi", "g", "o"):
            old = getattr(block, name)
            setattr(block, name, _conv(old.in_channels, old.out_channels, 1, eps, init, bias=False))
    return block


def attention_map(block: SelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The attention weights beta_{j,i} of Eq. 1 that `block` applies to x: (B, HW, HW/4), one row per
    query location j (row-major), softmax over the HW/4 max-pooled key locations i. The paper's Figure 5
    shows such rows. Run it with the block in eval mode to leave spectral norm's vectors as they are."""
    query = block.theta(x).flatten(2).transpose(1, 2)  # (B, HW, C/8)
    key = F.max_pool2d(block.phi(x), 2).flatten(2)  # (B, C/8, HW/4)
    return torch.softmax(query @ key, dim=-1)


def _cbn(ch: int, num_classes: int, bn_eps: float, sn_eps: float) -> ConditionalBatchNorm2d:
    """BN(x) * (1 + gain[y]) + bias[y]: the official per-class gamma (initialized to 1) and beta (0),
    with gamma stored as 1 + gain; an ordinary affine BN without classes."""
    bn = ConditionalBatchNorm2d(ch, 0, bn_eps, sn_eps, "N02", num_classes)
    if num_classes:
        nn.init.zeros_(bn.gain.weight)
        nn.init.zeros_(bn.bias.weight)
    return bn


class GBlock(nn.Module):
    """The official generator `block`: CBN-ReLU-up-conv3x3-CBN-ReLU-conv3x3, plus an up-sampled,
    1x1-projected shortcut (in every block); the convs have biases."""

    def __init__(self, cin: int, cout: int, num_classes: int, bn_eps: float, sn_eps: float, init: str):
        super().__init__()
        self.bn1 = _cbn(cin, num_classes, bn_eps, sn_eps)
        self.conv1 = _conv(cin, cout, 3, sn_eps, init)
        self.bn2 = _cbn(cout, num_classes, bn_eps, sn_eps)
        self.conv2 = _conv(cout, cout, 3, sn_eps, init)
        self.shortcut = _conv(cin, cout, 1, sn_eps, init)
        self.conditional = bool(num_classes)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = y if self.conditional else None
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class Generator(GeneratorRole):
    """G(z, y) -> images in [-1, 1], (B, 3, R, R); z is used whole (no hierarchical chunks)."""

    # The per-class BN gains and biases, or in an unconditional G the affine BN parameters in their place.
    class_tensors = (r"blocks\.\d+\.bn\d+\.(gain|bias)\.", r"blocks\.\d+\.bn\d+\.bn\.(weight|bias)$")

    def __init__(
        self, resolution: int = 128, ch: int = 64, z_dim: int = 128, num_classes: int = 1000,
        attn_res: int = 32, bn_eps: float = 1e-5, sn_eps: float = 1e-12, init: str = "xavier",
    ):  # fmt: skip
        super().__init__()
        _check(resolution)
        widths = [ch * w for w in G_WIDTHS[resolution]]
        if attn_res and attn_res not in g_attention_sizes(resolution, ch):
            raise ConfigError(f"model.sagan.g_attn_res={attn_res} is no G block output at {resolution} px")
        self.resolution, self.z_dim, self.widths = resolution, z_dim, widths
        self.linear = _sn(nn.Linear(z_dim, 4 * 4 * widths[0]), sn_eps, init)
        self.blocks = nn.ModuleList(
            GBlock(widths[i], widths[i + 1], num_classes, bn_eps, sn_eps, init)
            for i in range(len(widths) - 1)
        )
        self.attention = nn.ModuleDict()
        for i in range(len(self.blocks)):
            if 8 * 2**i == attn_res:
                self.attention[str(i)] = _attention(widths[i + 1], sn_eps, init)
        self.out_bn = nn.BatchNorm2d(widths[-1], eps=bn_eps)
        self.out_conv = _conv(widths[-1], 3, 3, sn_eps, init)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert_shape(z, (None, self.z_dim), "SAGAN G latent z")
        h = self.linear(z).view(z.shape[0], self.widths[0], 4, 4)
        for i, block in enumerate(self.blocks):
            h = block(h, y)
            if str(i) in self.attention:
                h = self.attention[str(i)](h)
        img = torch.tanh(self.out_conv(F.relu(self.out_bn(h))))
        assert_shape(img, (z.shape[0], 3, self.resolution, self.resolution), "SAGAN G output")
        return img


class DBlock(nn.Module):
    """The official discriminator blocks. `first` (optimized_block): conv3x3-ReLU-conv3x3-pool, and the
    input pooled then 1x1-projected. Otherwise (block): ReLU-conv3x3-ReLU-conv3x3(-pool), and a 1x1
    projection (then pool) where the block downsamples or changes width, else the input itself."""

    def __init__(self, cin: int, cout: int, first: bool, downsample: bool, sn_eps: float, init: str):
        super().__init__()
        self.first, self.downsample = first, downsample
        self.conv1 = _conv(cin, cout, 3, sn_eps, init)
        self.conv2 = _conv(cout, cout, 3, sn_eps, init)
        learned = first or downsample or cin != cout
        self.shortcut = _conv(cin, cout, 1, sn_eps, init) if learned else nn.Identity()

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self._pool(self.conv2(F.relu(self.conv1(x if self.first else F.relu(x)))))
        return h + (self.shortcut(self._pool(x)) if self.first else self._pool(self.shortcut(x)))


class Discriminator(DiscriminatorRole):
    """D(x, y) -> one logit per image, (B,): w^T phi(x) + b + <embed(y), phi(x)>, phi the sum-pooled ReLU
    features (the projection only with classes). `aux_classes` > 0 adds AC-GAN's classifier on phi(x)
    and `minibatch_kernels` > 0 minibatch discrimination before the output layer, as in every family."""

    class_tensors = (r"embed\.", r"classifier\.")  # the projection's class embedding, AC-GAN's head

    def __init__(
        self, resolution: int = 128, d_ch: int = 64, num_classes: int = 1000, attn_res: int = 32,
        sn_eps: float = 1e-12, init: str = "xavier", minibatch_kernels: int = 0, minibatch_kernel_dims: int = 5,
        aux_classes: int = 0,
    ):  # fmt: skip
        super().__init__()
        _check(resolution)
        if attn_res and attn_res not in d_attention_sizes(resolution, d_ch):
            raise ConfigError(f"model.sagan.d_attn_res={attn_res} is no D block output at {resolution} px")
        widths = [d_ch * w for w in D_WIDTHS[resolution]]
        self.resolution = resolution
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        cin, res = 3, resolution
        for i, (cout, down) in enumerate(zip(widths, D_DOWNSAMPLE[resolution])):
            self.blocks.append(DBlock(cin, cout, i == 0, down, sn_eps, init))
            cin, res = cout, res // 2 if down else res
            if res == attn_res and not self.attention:
                self.attention[str(i)] = _attention(cout, sn_eps, init)
        self.minibatch = (
            MinibatchDiscrimination(widths[-1], minibatch_kernels, minibatch_kernel_dims)
            if minibatch_kernels
            else None
        )
        self.linear = _sn(nn.Linear(widths[-1] + minibatch_kernels, 1), sn_eps, init)
        self.embed = _sn(nn.Embedding(num_classes, widths[-1]), sn_eps, init) if num_classes > 1 else None
        self.classifier = _sn(nn.Linear(widths[-1], aux_classes), sn_eps, init) if aux_classes else None

    def input_blocks(self) -> list[nn.Module]:
        """Each residual block with the self-attention that follows it, if any."""
        return attention_input_blocks(self.blocks, self.attention)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, parts: int = 1, all_outputs: bool = False
    ) -> torch.Tensor | DOutput:
        return projection_d_forward(self, x, y, parts, all_outputs, "SAGAN D input")
