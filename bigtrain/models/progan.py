"""Progressive GAN (Karras et al. 2018, "Progressive Growing of GANs"), growing from 4x4.

Paper pieces, by section:
- 4.1 equalized learning rate: weights drawn from N(0, 1) and scaled at run time by He's constant
  sqrt(2 / fan_in), so Adam's per-parameter step is the same for every layer (gain sqrt(2), 1 before
  the linear outputs).
- 4.2 pixelwise feature normalization in G after every convolution.
- 3   minibatch standard deviation: one extra feature map in D's last block.
- 2 / Fig. 2 fade-in: while a new resolution block fades in, G's output (and D's input) blends the
  new block's toRGB (fromRGB) with the 2x up-sampled (average-pooled) output of the previous one.

Feature maps as the paper's code computes them: nf(stage) = min(fmap_base / 2^stage, fmap_max) with
stage = log2(resolution) - 1, i.e. min(2 fmap_base / resolution, fmap_max): 512 up to 32x32 and 16 at
1024x1024 for fmap_base 8192 (Table 2).

Both networks are built for the final resolution; `set_phase(resolution, alpha)` picks the active
depth. At alpha 0 the output is exactly the old path's, at alpha 1 exactly the new block's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .codes import LatentCodes, code_dim, q_outputs
from .heads import aux_classes, d_heads
from .layers import (
    SQRT2,
    EqualizedConv2d,
    EqualizedLinear,
    MinibatchDiscrimination,
    doubling_resolutions,
    feature_maps,
    one_hot,
)
from .roles import DiscriminatorRole, DOutput, GeneratorRole


@dataclass
class Section:
    """model.progan: the Progressive GAN's knobs."""

    fmap_base: int = 8192  # feature maps at resolution r: min(2 fmap_base / r, fmap_max)
    fmap_max: int = 512
    mbstd_group: int = 4  # minibatch standard deviation group size

    def check(self, key: str, m) -> None:
        check_feature_maps(key, self, m)


def check_feature_maps(key: str, s, m) -> None:
    """The feature-map knobs ProGAN and StyleGAN2 share."""
    for name in ("fmap_base", "fmap_max", "mbstd_group"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{key}.{name}={getattr(s, name)} must be > 0")
    if s.fmap_base < m.resolution:
        raise ConfigError(
            f"{key}.fmap_base={s.fmap_base} leaves no feature maps at {m.resolution}x{m.resolution} "
            "(they are fmap_base / resolution); raise it to at least model.resolution"
        )


LATENT_CODES = True  # build takes InfoGAN's codes


def build(m, num_classes: int, codes: LatentCodes | None = None) -> tuple[nn.Module, nn.Module]:
    """Unconditional, as in the paper: class labels are ignored. With the auxiliary classifier, G takes
    the label as the paper's code does for AC-GAN (its only conditional form). With InfoGAN's latent
    codes G's z is [noise, codes] (normalized together, as the label) and D has a Q head."""
    s = m.progan
    z_dim = m.z_dim + code_dim(codes)
    g = Generator(m.resolution, z_dim, s.fmap_base, s.fmap_max, aux_classes(m, num_classes))
    heads = d_heads(m, num_classes)
    if codes is not None:
        heads["q_outputs"] = q_outputs(codes)
    return g, Discriminator(m.resolution, s.fmap_base, s.fmap_max, **heads)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each pixel's feature vector scaled to unit RMS (section 4.2)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, parts: int = 1) -> torch.Tensor:
    """Append the mean over features and pixels of the per-group standard deviation as one feature map.
    Groups are strided (sample i joins group i mod N/G), as in the reference implementation. With
    `parts` > 1 the batch is that many contiguous sets (reals, fakes, ...) whose samples never share a group."""
    if parts > 1:
        return torch.cat([minibatch_stddev(chunk, group_size) for chunk in x.chunk(parts)])
    b, c, h, w = x.shape
    g = min(group_size, b)
    while b % g:
        g -= 1
    y = x.float().reshape(g, -1, c, h, w)
    y = (y - y.mean(dim=0)).pow(2).mean(dim=0).add(1e-8).sqrt()  # (N/G, C, H, W)
    y = y.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], dim=1)


def _blend(old: torch.Tensor, new: torch.Tensor, alpha: float) -> torch.Tensor:
    if alpha >= 1.0:
        return new
    if alpha <= 0.0:
        return old
    return old * (1.0 - alpha) + new * alpha


class PhaseMixin:
    """The active depth: `resolution` (output/input side) and `alpha` (fade-in of its block)."""

    resolutions: list[int]

    def set_phase(self, resolution: int, alpha: float = 1.0) -> None:
        if resolution not in self.resolutions:
            raise ValueError(f"resolution {resolution} is not one of this network's {self.resolutions}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"fade-in alpha {alpha} must be in [0, 1]")
        self.resolution, self.alpha = resolution, float(alpha)


class Generator(PhaseMixin, GeneratorRole):
    """Unconditional as in the paper, unless `num_classes` > 0: then, as the paper's code conditions it
    (tkarras/progressive_growing_of_gans, G_paper's `label_size`, trained with AC-GAN's loss), the
    one-hot label joins z before the latent's pixel normalization."""

    class_tensors = (r"input\.weight$",)  # the input layer's weight reads the one-hot label (AC-GAN)

    def __init__(
        self, resolution: int, z_dim: int = 512, fmap_base: int = 8192, fmap_max: int = 512,
        num_classes: int = 0,
    ):  # fmt: skip
        super().__init__()
        self.resolutions = doubling_resolutions(resolution, "ProGAN")
        self.z_dim, self.num_classes = z_dim, num_classes
        ch = {r: feature_maps(r, 2 * fmap_base, fmap_max) for r in self.resolutions}
        # latent (and label) -> 4x4 (the paper's dense)
        self.input = EqualizedLinear(z_dim + num_classes, ch[4] * 16, gain=SQRT2 / 4)
        self.input_conv = EqualizedConv2d(ch[4], ch[4], 3, gain=SQRT2)
        self.blocks = nn.ModuleDict()
        for r in self.resolutions[1:]:
            self.blocks[str(r)] = nn.ModuleList(
                [
                    EqualizedConv2d(ch[r // 2], ch[r], 3, gain=SQRT2),
                    EqualizedConv2d(ch[r], ch[r], 3, gain=SQRT2),
                ]
            )
        self.to_rgb = nn.ModuleDict({str(r): EqualizedConv2d(ch[r], 3, 1) for r in self.resolutions})
        self.set_phase(resolution)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """(B, z_dim) -> (B, 3, R, R) at the active resolution R; y (B,) is read only by a conditional G."""
        if self.num_classes:
            z = torch.cat([z, one_hot(y, self.num_classes).to(z.dtype)], dim=1)
        x = pixel_norm(z)
        x = self.input(x).view(z.shape[0], -1, 4, 4)
        x = pixel_norm(F.leaky_relu(x, 0.2))
        x = pixel_norm(F.leaky_relu(self.input_conv(x), 0.2))
        previous = x
        for r in self.resolutions[1:]:
            if r > self.resolution:
                break
            previous = x
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            for conv in self.blocks[str(r)]:
                x = pixel_norm(F.leaky_relu(conv(x), 0.2))
        rgb = self.to_rgb[str(self.resolution)](x)
        if self.resolution == 4 or self.alpha >= 1.0:
            return rgb
        old = F.interpolate(self.to_rgb[str(self.resolution // 2)](previous), scale_factor=2, mode="nearest")
        return _blend(old, rgb, self.alpha)


class Discriminator(PhaseMixin, DiscriminatorRole):
    """Images -> scores; labels are ignored. `aux_classes` > 0 adds AC-GAN's auxiliary classifier on the
    last dense layer's features, as the paper's code widens D's output to 1 + label_size (gain 1);
    `q_outputs` > 0 InfoGAN's Q head, one more such layer.

    FreezeD's blocks (`input_blocks`) are those of the final resolution R, in input order: fromRGB at R
    with the R block, then the R/2, ..., 8 blocks; the 4x4 part (minibatch stddev, conv, dense, output)
    is never frozen. While growing, the lower resolutions' fromRGBs are not frozen."""

    class_tensors = (r"classifier\.",)  # AC-GAN's head

    def __init__(
        self, resolution: int, fmap_base: int = 8192, fmap_max: int = 512, mbstd_group: int = 4,
        minibatch_kernels: int = 0, minibatch_kernel_dims: int = 5, aux_classes: int = 0, q_outputs: int = 0,
    ):  # fmt: skip
        super().__init__()
        self.resolutions = doubling_resolutions(resolution, "ProGAN")
        self.mbstd_group = mbstd_group
        ch = {r: feature_maps(r, 2 * fmap_base, fmap_max) for r in self.resolutions}
        self.from_rgb = nn.ModuleDict(
            {str(r): EqualizedConv2d(3, ch[r], 1, gain=SQRT2) for r in self.resolutions}
        )
        self.blocks = nn.ModuleDict()
        for r in self.resolutions[1:]:
            self.blocks[str(r)] = nn.ModuleList(
                [
                    EqualizedConv2d(ch[r], ch[r], 3, gain=SQRT2),
                    EqualizedConv2d(ch[r], ch[r // 2], 3, gain=SQRT2),
                ]
            )
        self.final_conv = EqualizedConv2d(ch[4] + 1, ch[4], 3, gain=SQRT2)
        self.final_dense = EqualizedLinear(ch[4] * 16, ch[4], gain=SQRT2)
        self.minibatch = (
            MinibatchDiscrimination(ch[4], minibatch_kernels, minibatch_kernel_dims)
            if minibatch_kernels
            else None
        )
        self.output = EqualizedLinear(ch[4] + minibatch_kernels, 1)
        self.classifier = EqualizedLinear(ch[4], aux_classes) if aux_classes else None
        self.q_head = EqualizedLinear(ch[4], q_outputs) if q_outputs else None  # InfoGAN's (models/codes.py)
        self.set_phase(resolution)

    def input_blocks(self) -> list[nn.Module]:
        top = self.resolutions[-1]
        below = [self.blocks[str(r)] for r in reversed(self.resolutions[1:-1])]
        return [nn.ModuleList([self.from_rgb[str(top)], self.blocks[str(top)]]), *below] if top > 4 else []

    def _block(self, r: int, x: torch.Tensor) -> torch.Tensor:
        for conv in self.blocks[str(r)]:
            x = F.leaky_relu(conv(x), 0.2)
        return F.avg_pool2d(x, 2)

    def forward(
        self, images: torch.Tensor, y: torch.Tensor | None = None, parts: int = 1, all_outputs: bool = False
    ) -> torch.Tensor | DOutput:
        """(B, 3, R, R) at the active resolution -> (B,) scores. Reals and fakes are separate `parts`:
        the minibatch standard deviation must not mix them."""
        r = self.resolution
        if images.shape[-1] != r:
            raise ValueError(f"D is at resolution {r} but got {images.shape[-1]}x{images.shape[-2]} images")
        x = F.leaky_relu(self.from_rgb[str(r)](images), 0.2)
        if r > 4:
            x = self._block(r, x)
            if self.alpha < 1.0:
                old = F.leaky_relu(self.from_rgb[str(r // 2)](F.avg_pool2d(images, 2)), 0.2)
                x = _blend(old, x, self.alpha)
            for lower in reversed(self.resolutions[1:]):
                if lower < r:
                    x = self._block(lower, x)
        x = minibatch_stddev(x, self.mbstd_group, parts)
        x = F.leaky_relu(self.final_conv(x), 0.2)
        features = F.leaky_relu(self.final_dense(x.flatten(1)), 0.2)
        x = features if self.minibatch is None else self.minibatch(features, parts)
        logits = self.output(x).squeeze(1)
        if not all_outputs:
            return logits
        classes = None if self.classifier is None else self.classifier(features)
        return DOutput(logits, features, classes, None if self.q_head is None else self.q_head(features))
