"""BigGAN (Brock, Donahue & Simonyan 2018, "Large Scale GAN Training for High Fidelity Natural Image
Synthesis"): residual generator with class-conditional BatchNorm fed by a shared class embedding and
hierarchical latent chunks, self-attention, and a projection discriminator; spectral norm on every
weight of both networks and orthogonal initialization.

Channel widths per resolution follow the paper's appendix B (multiples of `ch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .codes import LatentCodes, code_dim, q_outputs
from .heads import attention_input_blocks, d_heads, projection_d_forward
from .layers import (
    ConditionalBatchNorm2d,
    MinibatchDiscrimination,
    SelfAttention,
    assert_shape,
    init_weight,
    sn_conv2d,
    sn_embedding,
    sn_linear,
)
from .roles import DiscriminatorRole, DOutput, GeneratorRole


@dataclass
class Section:
    """model.biggan: BigGAN's knobs."""

    ch: int = 64  # G channel multiplier
    d_ch: int = 64  # D channel multiplier
    shared_dim: int = 128  # shared class embedding (0: each BN layer's own, with hier off)
    hier: bool = True  # hierarchical z: one chunk to the input, one to every block's BN
    attn_res: list[int] = field(default_factory=list)  # resolutions with self-attention
    bn_eps: float = 1e-5
    sn_eps: float = 1e-6
    # weights: ortho (the paper) | N02 (BigGAN-PyTorch's CIFAR script)
    init: str = field(default="ortho", metadata={"choices": ("ortho", "N02")})

    def check(self, key: str, m) -> None:
        for name in ("ch", "d_ch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name}={getattr(self, name)} must be > 0")
        if self.shared_dim < 0:
            raise ConfigError(f"{key}.shared_dim={self.shared_dim} must be >= 0")
        for r in self.attn_res:
            if r < 1 or r & (r - 1) or r > m.resolution:
                raise ConfigError(f"{key}.attn_res has {r}, not a power of two up to model.resolution")


LATENT_CODES = True  # build takes InfoGAN's codes


def build(m, num_classes: int, codes: LatentCodes | None = None) -> tuple[nn.Module, nn.Module]:
    """With InfoGAN's latent codes G's input layer reads them beside z's first chunk and D has a Q head."""
    s = m.biggan
    g = Generator(
        m.resolution, s.ch, m.z_dim, s.shared_dim, s.hier, tuple(s.attn_res), num_classes, s.bn_eps, s.sn_eps,
        s.init, code_dim(codes),
    )  # fmt: skip
    heads = d_heads(m, num_classes)
    if codes is not None:
        heads["q_outputs"] = q_outputs(codes)
    d = Discriminator(m.resolution, s.d_ch, tuple(s.attn_res), num_classes, s.sn_eps, s.init, **heads)
    return g, d


# Generator: channel multipliers of the 4x4 input, then the output of each up-block (x2 each).
G_WIDTHS = {
    32: [4, 4, 4, 4],
    64: [16, 16, 8, 4, 2],
    128: [16, 16, 8, 4, 2, 1],
    256: [16, 16, 8, 8, 4, 2, 1],
    512: [16, 16, 8, 8, 4, 2, 1, 1],
}
# Discriminator: output multipliers of each block; all but the last halve the resolution.
D_WIDTHS = {
    32: [4, 4, 4, 4],
    64: [1, 2, 4, 8, 16],
    128: [1, 2, 4, 8, 16, 16],
    256: [1, 2, 4, 8, 8, 16, 16],
    512: [1, 1, 2, 4, 8, 8, 16, 16],
}
# At 32x32 the D keeps 8x8 for its last two blocks (BigGAN's CIFAR architecture).
D_DOWNSAMPLE = {32: [True, True, False, False]}

ARCHITECTURES = tuple(sorted(G_WIDTHS))


def _check_resolution(resolution: int) -> None:
    if resolution not in G_WIDTHS:
        raise ConfigError(f"model.resolution={resolution}: BigGAN has architectures for {ARCHITECTURES}")


class GBlock(nn.Module):
    """Up-block: BN-ReLU-up-conv3x3-BN-ReLU-conv3x3, plus an upsampled, 1x1-projected shortcut. The
    projection is learned in every up-block, also where the width stays (BigGAN-PyTorch's
    `learnable_sc = in_channels != out_channels or upsample`, and the paper's Figure 15)."""

    def __init__(
        self, in_ch: int, out_ch: int, cond_dim: int, bn_eps: float, sn_eps: float, init: str = "ortho",
        num_classes: int = 0,
    ):  # fmt: skip
        super().__init__()
        self.bn1 = ConditionalBatchNorm2d(in_ch, cond_dim, bn_eps, sn_eps, init, num_classes)
        self.conv1 = sn_conv2d(in_ch, out_ch, 3, eps=sn_eps, init=init)
        self.bn2 = ConditionalBatchNorm2d(out_ch, cond_dim, bn_eps, sn_eps, init, num_classes)
        self.conv2 = sn_conv2d(out_ch, out_ch, 3, eps=sn_eps, init=init)
        self.shortcut = sn_conv2d(in_ch, out_ch, 1, eps=sn_eps, init=init)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = F.relu(self.bn1(x, cond))
        h = F.interpolate(h, scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), cond)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class Generator(GeneratorRole):
    """G(z, y) -> images in [-1, 1], (B, 3, R, R).

    With `hier`, z is split into one chunk per block plus one for the 4x4 input; each block's BN is
    conditioned on [shared_embedding(y), its z chunk]. With shared_dim 0 every BN has class embeddings
    of its own (BigGAN-PyTorch without G_shared, as its CIFAR script), and z is not split.

    `code_dim` > 0: InfoGAN's latent codes (models/codes.py) are z's last code_dim columns, after the
    z_dim of noise; the input layer reads them beside the noise's first chunk (the whole noise without
    `hier`), as the InfoGAN paper's G reads [z, c] at its input. The hierarchical split keeps its chunks.
    """

    # The shared class embedding; every conditional BN's gain and bias (per-class embeddings with
    # shared_dim 0, else linear maps whose input holds the shared embedding), and the plain affine
    # parameters a BN has in an unconditional G without hier: all follow the class count or presence.
    class_tensors = (
        r"shared\.",
        r"blocks\.\d+\.bn\d+\.(gain|bias)\.",
        r"blocks\.\d+\.bn\d+\.bn\.(weight|bias)$",
    )

    def __init__(
        self,
        resolution: int = 128,
        ch: int = 96,
        z_dim: int = 120,
        shared_dim: int = 128,
        hier: bool = True,
        attn_res: tuple[int, ...] = (64,),
        num_classes: int = 1000,
        bn_eps: float = 1e-5,
        sn_eps: float = 1e-6,
        init: str = "ortho",
        code_dim: int = 0,
    ):
        super().__init__()
        _check_resolution(resolution)
        widths = [ch * w for w in G_WIDTHS[resolution]]
        num_blocks = len(widths) - 1
        self.resolution, self.z_dim, self.num_classes = resolution, z_dim + code_dim, num_classes
        self.code_dim = code_dim
        self.conditional = num_classes > 1
        per_layer_classes = num_classes if self.conditional and shared_dim < 1 else 0
        if per_layer_classes and hier:
            raise ConfigError(
                "model.biggan.hier=true needs a shared class embedding (model.biggan.shared_dim > 0): BigGAN without one "
                "conditions each BN on the label alone"
            )
        self.num_chunks = num_blocks + 1 if hier else 1
        if z_dim % self.num_chunks:
            raise ConfigError(
                f"model.z_dim={z_dim} must split evenly into {self.num_chunks} hierarchical chunks "
                f"({num_blocks} blocks + 1) at resolution {resolution}"
            )
        chunk = z_dim // self.num_chunks
        cond_dim = (shared_dim if self.conditional and not per_layer_classes else 0) + (chunk if hier else 0)
        self.shared = (
            nn.Embedding(num_classes, shared_dim) if self.conditional and not per_layer_classes else None
        )
        if self.shared is not None:
            init_weight(self.shared.weight, init)
        self.per_layer_classes = bool(per_layer_classes)
        self.linear = sn_linear(chunk + code_dim, 4 * 4 * widths[0], eps=sn_eps, init=init)
        self.widths = widths
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        res = 4
        for i in range(num_blocks):
            self.blocks.append(
                GBlock(widths[i], widths[i + 1], cond_dim, bn_eps, sn_eps, init, per_layer_classes)
            )
            res *= 2
            if res in attn_res:
                self.attention[str(i)] = SelfAttention(widths[i + 1], sn_eps, init)
        self.out_bn = nn.BatchNorm2d(widths[-1], eps=bn_eps)
        self.out_conv = sn_conv2d(widths[-1], 3, 3, eps=sn_eps, init=init)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert_shape(z, (None, self.z_dim), "BigGAN G latent z")
        if self.code_dim:  # InfoGAN's codes: z's last columns, read by the input layer with the first chunk
            noise, codes = z.split([self.z_dim - self.code_dim, self.code_dim], dim=1)
            chunks = list(noise.chunk(self.num_chunks, dim=1))
            chunks[0] = torch.cat([chunks[0], codes], dim=1)
        else:
            chunks = z.chunk(self.num_chunks, dim=1)
        embedding = self.shared(y) if self.shared is not None else None
        h = self.linear(chunks[0]).view(z.shape[0], self.widths[0], 4, 4)
        for i, block in enumerate(self.blocks):
            parts = [p for p in (embedding, chunks[i + 1] if self.num_chunks > 1 else None) if p is not None]
            cond = y if self.per_layer_classes else torch.cat(parts, dim=1) if parts else None
            h = block(h, cond)
            if str(i) in self.attention:
                h = self.attention[str(i)](h)
        img = torch.tanh(self.out_conv(F.relu(self.out_bn(h))))
        assert_shape(img, (z.shape[0], 3, self.resolution, self.resolution), "BigGAN G output")
        return img


class DBlock(nn.Module):
    """Down-block: (ReLU)-conv3x3-ReLU-conv3x3-avgpool, plus a (1x1-projected, pooled) shortcut."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        preactivation: bool,
        downsample: bool,
        sn_eps: float,
        init: str = "ortho",
    ):
        super().__init__()
        self.preactivation, self.downsample = preactivation, downsample
        self.conv1 = sn_conv2d(in_ch, out_ch, 3, eps=sn_eps, init=init)
        self.conv2 = sn_conv2d(out_ch, out_ch, 3, eps=sn_eps, init=init)
        learnable = in_ch != out_ch or downsample
        self.shortcut = sn_conv2d(in_ch, out_ch, 1, eps=sn_eps, init=init) if learnable else nn.Identity()

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preactivation else x
        h = self._pool(self.conv2(F.relu(self.conv1(h))))
        # First block (raw pixels): pool then project; later blocks: project then pool (cheaper).
        skip = self._pool(self.shortcut(x)) if self.preactivation else self.shortcut(self._pool(x))
        return h + skip


class Discriminator(DiscriminatorRole):
    """D(x, y) -> one logit per image, (B,). Projection discriminator (Miyato & Koyama 2018):
    D = w^T phi(x) + <embed(y), phi(x)>, with phi the sum-pooled ReLU features. `aux_classes` > 0 adds
    AC-GAN's auxiliary classifier beside the projection: a spectrally normalized linear layer from
    phi(x) to that many class logits; `q_outputs` > 0 InfoGAN's Q head, one more such layer."""

    class_tensors = (r"embed\.", r"classifier\.")  # the projection's class embedding, AC-GAN's head

    def __init__(
        self,
        resolution: int = 128,
        ch: int = 96,
        attn_res: tuple[int, ...] = (64,),
        num_classes: int = 1000,
        sn_eps: float = 1e-6,
        init: str = "ortho",
        minibatch_kernels: int = 0,
        minibatch_kernel_dims: int = 5,
        aux_classes: int = 0,
        q_outputs: int = 0,
    ):
        super().__init__()
        _check_resolution(resolution)
        widths = [ch * w for w in D_WIDTHS[resolution]]
        downsample = D_DOWNSAMPLE.get(resolution, [True] * (len(widths) - 1) + [False])
        self.resolution = resolution
        self.blocks = nn.ModuleList()
        self.attention = nn.ModuleDict()
        in_ch, res = 3, resolution
        for i, (out_ch, down) in enumerate(zip(widths, downsample)):
            self.blocks.append(
                DBlock(in_ch, out_ch, preactivation=i > 0, downsample=down, sn_eps=sn_eps, init=init)
            )
            in_ch, res = out_ch, res // 2 if down else res
            if res in attn_res and i < len(widths) - 1:
                self.attention[str(i)] = SelfAttention(out_ch, sn_eps, init)
        # Minibatch discrimination (off: 0 kernels) widens the features the output layer reads.
        self.minibatch = (
            MinibatchDiscrimination(widths[-1], minibatch_kernels, minibatch_kernel_dims)
            if minibatch_kernels
            else None
        )
        self.linear = sn_linear(widths[-1] + minibatch_kernels, 1, eps=sn_eps, init=init)
        self.embed = sn_embedding(num_classes, widths[-1], eps=sn_eps, init=init) if num_classes > 1 else None
        self.classifier = sn_linear(widths[-1], aux_classes, eps=sn_eps, init=init) if aux_classes else None
        # InfoGAN's Q head (models/codes.py), spectrally normalized as the class head
        self.q_head = sn_linear(widths[-1], q_outputs, eps=sn_eps, init=init) if q_outputs else None

    def input_blocks(self) -> list[nn.Module]:
        """Each residual block with the self-attention that follows it, if any."""
        return attention_input_blocks(self.blocks, self.attention)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, parts: int = 1, all_outputs: bool = False
    ) -> torch.Tensor | DOutput:
        return projection_d_forward(self, x, y, parts, all_outputs, "BigGAN D input")


# --------------------------------------------------------------------------- reference weights


def _renamed_module(parts: list[str]) -> list[str]:
    """A BigGAN-PyTorch module path (split at dots) as bigtrain names the module."""
    if parts[0] == "blocks":  # blocks.<i>.0 (residual block) or blocks.<i>.1 (attention)
        head = ["blocks", parts[1]] if parts[2] == "0" else ["attention", parts[1]]
        return [*head, *("shortcut" if p == "conv_sc" else p for p in parts[3:])]
    if parts[0] == "output_layer":  # Sequential(bn, relu, conv)
        return [("out_bn" if parts[1] == "0" else "out_conv"), *parts[2:]]
    return parts


def from_biggan_pytorch(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BigGAN-PyTorch G or D state dict (ajbrock/BigGAN-PyTorch's BigGAN.py, e.g. its released
    G.pth) renamed for bigtrain's Generator or Discriminator. Kernels keep their orientation (no flip).

    Its spectral norm keeps one left singular vector `u0`; torch's keeps u and v, so v is set to
    normalize(W^T u): the next power iteration then starts where the reference's would. The estimates
    of sigma agree once the vectors have converged, as they have after training (torch estimates it
    after the iteration's second half, the reference after its first)."""
    renamed: dict[str, torch.Tensor] = {}
    for name, value in state_dict.items():
        *module, leaf = name.split(".")
        prefix = name[: -len(leaf)]
        target = ".".join(_renamed_module(module))
        if leaf.startswith("sv") or leaf == "accumulation_counter":
            continue  # the reference's last sigma estimate and standing-stats counter: no state here
        if leaf in ("stored_mean", "stored_var"):  # BatchNorm statistics (in a `bn` inside each CBN)
            owner = target if target == "out_bn" else f"{target}.bn"
            renamed[f"{owner}.{'running_mean' if leaf == 'stored_mean' else 'running_var'}"] = value
        elif leaf == "weight" and prefix + "u0" in state_dict:  # a spectrally normalized layer
            renamed[f"{target}.parametrizations.weight.original"] = value
        elif leaf == "u0":
            u = value.reshape(-1)
            weight = state_dict[prefix + "weight"]
            sn = f"{target}.parametrizations.weight.0"
            renamed[f"{sn}._u"] = u
            renamed[f"{sn}._v"] = F.normalize(weight.reshape(weight.shape[0], -1).t() @ u, dim=0)
        elif leaf == "gamma":  # attention's output scale: 0-d there, 1-d here (see SelfAttention)
            renamed[f"{target}.gamma"] = value.reshape(1)
        elif target == "out_bn" and leaf in ("gain", "bias"):
            renamed[f"out_bn.{'weight' if leaf == 'gain' else 'bias'}"] = value
        else:
            renamed[f"{target}.{leaf}"] = value
    return renamed
