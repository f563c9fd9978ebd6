"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"), in plain
PyTorch: no custom CUDA ops, so it runs (and compiles) on any current PyTorch, CPU included. The
networks are stylegan2-ada-pytorch's (`training/networks.py`): same layers, same parameter shapes, so
its weights load one to one (no kernel needs flipping; see `reference_state_dict_map`).

Paper pieces, by section:
- 2.2 / Fig. 2  modulated convolution: the style s scales the weights' input channels,
  w'_ijk = s_i w_ijk; demodulation divides each output filter by sqrt(sum_ik w'_ijk^2 + eps), so unit
  input variance gives unit output variance. Computed in the "non-fused" form (scale the activations
  by s, one shared convolution, scale the outputs by the demodulation coefficients), which is what
  NVlabs' code runs in training, and which stays an ordinary batched conv for cuDNN and channels_last.
- 4 / Fig. 7  skip generator (toRGB at every resolution, summed after up-sampling) and a residual
  discriminator (or `orig`, `skip`); minibatch standard deviation in D's last block (ProGAN, section 3).
- StyleGAN 2.1: an 8-layer mapping network z -> w with a 0.01 learning-rate multiplier, per-layer noise
  inputs with learned strengths, and the running average w_avg that truncation pulls toward.
- Conditional variant (StyleGAN2-ADA): the class embedding joins z at the mapping network's input, and
  D projects its features onto the label mapped by a mapping network of its own (8 layers).
- stylegan2-ada's recipes clamp every convolution's output to +-256 (`conv_clamp`).

Resampling is upfirdn2d, written from its definition (`upfirdn2d`): insert zeros, zero-pad, convolve
with the [1, 3, 3, 1] filter, drop pixels. Up-sampling convolutions are a stride-2 transposed
convolution followed by the filter (gain 4), the toRGB skip is up-sampled by zero insertion and the
filter, and down-sampling is the filter followed by stride 2: the reference's operations, borders
included, at its cost (a transposed conv at the input resolution, not a conv at the output's).
Equalized learning rate (ProGAN 4.1) everywhere: weights are N(0, 1) scaled by 1/sqrt(fan_in) at run time.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .codes import LatentCodes, code_dim, q_outputs
from .heads import d_heads
from .layers import (
    SQRT2,
    EqualizedConv2d,
    EqualizedLinear,
    MinibatchDiscrimination,
    doubling_resolutions,
    feature_maps,
    one_hot,
)
from .progan import check_feature_maps, minibatch_stddev
from .roles import DiscriminatorRole, DOutput, GeneratorRole


@dataclass
class Section:
    """model.stylegan2: StyleGAN2's knobs."""

    fmap_base: int = 8192  # feature maps at resolution r: min(fmap_base / r, fmap_max)
    fmap_max: int = 512
    w_dim: int = 512  # intermediate latent (w) size
    mapping_layers: int = 8  # depth of the mapping network z -> w
    mbstd_group: int = 4  # minibatch standard deviation group size
    conv_clamp: float = 256.0  # clamp conv outputs to +-this (stylegan2-ada's recipes: 256; 0: off)
    # D: resnet (the paper's Fig. 7c) | orig | skip
    d_architecture: str = field(default="resnet", metadata={"choices": ("resnet", "orig", "skip")})

    def check(self, key: str, m) -> None:
        check_feature_maps(key, self, m)
        for name in ("w_dim", "mapping_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name}={getattr(self, name)} must be > 0")
        if not self.conv_clamp >= 0:
            raise ConfigError(f"{key}.conv_clamp={self.conv_clamp} must be >= 0")


LATENT_CODES = True  # build takes InfoGAN's codes


def build(m, num_classes: int, codes: LatentCodes | None = None) -> tuple[nn.Module, nn.Module]:
    """Conditional when the data has classes (the label joins z in the mapping network; D projects). With
    InfoGAN's latent codes the mapping network reads [noise, codes] as its z and D has a Q head."""
    s, classes = m.stylegan2, num_classes if num_classes > 1 else 0
    g = Generator(
        m.resolution, m.z_dim + code_dim(codes), s.w_dim, classes, s.fmap_base, s.fmap_max, s.mapping_layers,
        s.conv_clamp, code_dim(codes),
    )  # fmt: skip
    heads = d_heads(m, classes)
    if codes is not None:
        heads["q_outputs"] = q_outputs(codes)
    d = Discriminator(
        m.resolution, classes, s.fmap_base, s.fmap_max, s.mbstd_group,
        architecture=s.d_architecture, conv_clamp=s.conv_clamp, **heads,
    )  # fmt: skip
    return g, d


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def float32_region(device: torch.device):
    """Autocast off (float32) in this region; nothing where the device has no autocast (meta)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class MappingNetwork(nn.Module):
    """z (and a class embedding) -> w, broadcast to every synthesis layer; tracks w_avg.

    With z_dim 0 and num_ws 0 it is the conditional D's label mapping: the embedding alone, no
    broadcast and no w_avg (stylegan2-ada's MappingNetwork(z_dim=0, num_ws=None, w_avg_beta=None))."""

    def __init__(
        self, z_dim: int, w_dim: int, num_ws: int, num_classes: int = 0, layers: int = 8,
        lr_multiplier: float = 0.01, w_avg_beta: float = 0.995,
    ):  # fmt: skip
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, w_dim, num_ws, w_avg_beta
        self.embed = EqualizedLinear(num_classes, w_dim) if num_classes > 1 else None
        dims = [z_dim + (w_dim if self.embed else 0)] + [w_dim] * layers
        self.layers = nn.Sequential(
            *[
                EqualizedLinear(a, b, lr_multiplier=lr_multiplier, act=True)
                for a, b in zip(dims[:-1], dims[1:])
            ]
        )
        self.num_classes = num_classes
        if num_ws:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self, z: torch.Tensor | None, y: torch.Tensor | None = None, psi: float = 1.0, cutoff: int | None = None,
        update_w_avg: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        """z (B, z_dim) -> ws (B, num_ws, w_dim) (or w (B, w_dim) without num_ws), in float32 also
        under autocast (as stylegan2-ada keeps its mapping network in fp32): w_avg and truncation stay
        exact."""
        with float32_region((z if z is not None else y).device):
            x = normalize_2nd_moment(z.float()) if self.z_dim else None
            if self.embed is not None:
                label = normalize_2nd_moment(self.embed(one_hot(y, self.num_classes)))
                x = label if x is None else torch.cat([x, label], dim=1)
            w = self.layers(x)
        if not self.num_ws:
            return w
        if update_w_avg:
            self.w_avg.copy_(w.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if psi != 1.0:  # truncation toward the average w, in the first `cutoff` layers
            cutoff = self.num_ws if cutoff is None else cutoff
            ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], psi)
        return ws


# --------------------------------------------------------------------------- resampling


_FIR = (1.0, 3.0, 3.0, 1.0)


def fir_filter(dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The separable [1, 3, 3, 1] low-pass filter as a 4x4 kernel with unit sum."""
    f = torch.tensor(_FIR, dtype=torch.float64)
    return (f[:, None] * f[None, :] / f.sum() ** 2).to(dtype=dtype, device=device)


def upfirdn2d(
    x: torch.Tensor,
    kernel: torch.Tensor | None = None,
    up: int = 1,
    down: int = 1,
    pad: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """Up-sample, FIR-filter, down-sample (x (B, C, H, W), pad = (left, right, top, bottom) >= 0):
    insert up - 1 zeros after every pixel, zero-pad, convolve every channel with the 2D `kernel` times
    `gain`, keep every down-th pixel. The [1, 3, 3, 1] filter is symmetric, so convolution and
    correlation agree. Pass the kernel (a module buffer) to avoid a host-to-device copy."""
    b, c, h, w = x.shape
    kernel = fir_filter(x.dtype, x.device) if kernel is None else kernel.to(x.dtype)
    if up > 1:
        x = F.pad(x.reshape(b, c, h, 1, w, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(b, c, h * up, w * up)
    x = F.pad(x, pad)
    kernel = (kernel * gain).flip((0, 1))
    return F.conv2d(x, kernel.expand(c, 1, *kernel.shape), stride=down, groups=c)


def upsample2(x: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
    """(H, W) -> (2H, 2W): zeros inserted, padded (2, 1) per axis, filtered with gain 4."""
    return upfirdn2d(x, kernel, up=2, pad=(2, 1, 2, 1), gain=4.0)


def downsample2(x: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
    """(H, W) -> (H/2, W/2): padded (1, 1) per axis, filtered, every second pixel kept."""
    return upfirdn2d(x, kernel, down=2, pad=(1, 1, 1, 1))


# --------------------------------------------------------------------------- generator


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    padding: int = 0,
    up: bool = False,
    kernel: torch.Tensor | None = None,
) -> torch.Tensor:
    """x (B, I, H, W), weight (O, I, k, k) already scaled, styles (B, I) -> (B, O, H, W), or
    (B, O, 2H, 2W) with `up`.

    Equivalent to a per-sample conv with w'_oik = s_i w_oik / sigma_o, sigma_o = sqrt(sum_ik w'^2 + 1e-8),
    written as activations x s -> shared conv -> outputs / sigma (no per-sample weights are built).
    `up`: a stride-2 transposed conv of the same weight, then the FIR filter with gain 4 and one pixel
    of zero padding per side (stylegan2-ada's conv2d_resample for up=2, k=3)."""
    x = x * styles.to(x.dtype)[:, :, None, None]
    if up:
        out = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2)
        out = upfirdn2d(out, kernel, pad=(1, 1, 1, 1), gain=4.0)
    else:
        out = F.conv2d(x, weight.to(x.dtype), padding=padding)
    if demodulate:
        sigma_inv = (
            (weight.square().sum(dim=(2, 3))[None] * styles.square()[:, None, :]).sum(dim=2).add(1e-8).rsqrt()
        )
        out = out * sigma_inv.to(out.dtype)[:, :, None, None]
    return out


def _clamp(x: torch.Tensor, limit: float) -> torch.Tensor:
    return x.clamp(-limit, limit) if limit > 0 else x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (up-sampling by 2 when `up`), noise, bias, leaky ReLU x sqrt2, clamp."""

    def __init__(
        self, cin: int, cout: int, w_dim: int, resolution: int, up: bool = False, conv_clamp: float = 0.0
    ):
        super().__init__()
        self.affine = EqualizedLinear(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.weight_gain = 1.0 / math.sqrt(cin * 9)
        self.up, self.resolution, self.conv_clamp = up, resolution, conv_clamp
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        if up:
            self.register_buffer("fir", fir_filter(), persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "random",
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`noise` (B, 1, R, R): this layer's random-mode noise, drawn by the caller (see
        Generator.draw_noise) so that a compiled forward holds no random generator; None draws it."""
        weight = self.weight * self.weight_gain
        kernel = self.fir if self.up else None
        x = modulated_conv2d(x, weight, self.affine(w), padding=1, up=self.up, kernel=kernel)
        if noise_mode == "random":
            if noise is None:
                noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device)
            x = x + noise.to(x.dtype) * self.noise_strength.to(x.dtype)
        elif noise_mode == "const":
            x = x + (self.noise_const * self.noise_strength).to(x.dtype)
        x = F.leaky_relu(x + self.bias.to(x.dtype)[None, :, None, None], 0.2) * SQRT2
        return _clamp(x, self.conv_clamp)


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB, without demodulation (the skip generator's per-resolution output)."""

    def __init__(self, cin: int, w_dim: int, channels: int = 3, conv_clamp: float = 0.0):
        super().__init__()
        self.affine = EqualizedLinear(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(channels, cin, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.weight_gain = 1.0 / math.sqrt(cin)
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return _clamp(x + self.bias.to(x.dtype)[None, :, None, None], self.conv_clamp)


class SynthesisNetwork(nn.Module):
    """A learned 4x4 constant, then per resolution two modulated convs and a toRGB; RGB outputs are
    up-sampled and summed (the skip architecture). Consumes ws: (B, num_ws, w_dim)."""

    def __init__(
        self, resolution: int, w_dim: int, channel_base: int, channel_max: int, conv_clamp: float = 0.0
    ):
        super().__init__()
        self.resolutions = doubling_resolutions(resolution, "StyleGAN2")
        ch = {r: feature_maps(r, channel_base, channel_max) for r in self.resolutions}
        self.const = nn.Parameter(torch.randn(ch[4], 4, 4))
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for r in self.resolutions:
            if r == 4:
                self.convs.append(SynthesisLayer(ch[4], ch[4], w_dim, 4, conv_clamp=conv_clamp))
            else:
                self.convs.append(SynthesisLayer(ch[r // 2], ch[r], w_dim, r, up=True, conv_clamp=conv_clamp))
                self.convs.append(SynthesisLayer(ch[r], ch[r], w_dim, r, conv_clamp=conv_clamp))
            self.to_rgbs.append(ToRGB(ch[r], w_dim, conv_clamp=conv_clamp))
        # One w per conv, plus the last toRGB's (each toRGB shares the w of the conv after it).
        self.num_ws = len(self.convs) + 1
        self.register_buffer("fir", fir_filter(), persistent=False)

    def draw_noise(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> list[torch.Tensor]:
        """Random-mode noise for every synthesis layer, in layer order: [(B, 1, R, R), ...]."""
        return [
            torch.randn(batch, 1, conv.resolution, conv.resolution, device=device, generator=generator)
            for conv in self.convs
        ]

    def forward(
        self, ws: torch.Tensor, noise_mode: str = "random", noise: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        x = self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1).to(ws.dtype)
        rgb = None
        layer = 0
        for i, r in enumerate(self.resolutions):
            block = self.convs[layer : layer + (1 if r == 4 else 2)]
            for conv in block:
                x = conv(x, ws[:, layer], noise_mode, None if noise is None else noise[layer])
                layer += 1
            y = self.to_rgbs[i](x, ws[:, layer]).float()
            if rgb is not None:  # the image sum stays float32 (also under autocast), as the reference's
                with float32_region(y.device):
                    y = upsample2(rgb, self.fir) + y
            rgb = y
        return rgb


class Generator(GeneratorRole):
    """z (B, z_dim) [, y (B,)] -> images (B, 3, R, R) in about [-1, 1]."""

    style_based = True
    # The label's embedding, and the first mapping layer's weight, whose input holds it when conditional.
    class_tensors = (r"mapping\.embed\.", r"mapping\.layers\.0\.weight$")

    def __init__(
        self, resolution: int, z_dim: int = 512, w_dim: int = 512, num_classes: int = 0,
        channel_base: int = 32768, channel_max: int = 512, mapping_layers: int = 8, conv_clamp: float = 0.0,
        code_dim: int = 0,
    ):  # fmt: skip
        super().__init__()
        self.z_dim, self.w_dim, self.resolution = z_dim, w_dim, resolution
        self.code_dim = code_dim  # InfoGAN's codes: the last code_dim of z's columns (models/codes.py)
        self.synthesis = SynthesisNetwork(resolution, w_dim, channel_base, channel_max, conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, num_classes, mapping_layers)

    def forward(
        self, z: torch.Tensor, y: torch.Tensor | None = None, psi: float = 1.0, cutoff: int | None = None,
        noise_mode: str = "random", noise: list[torch.Tensor] | None = None,
        mix_z: torch.Tensor | None = None, mix_cutoff: int | None = None, update_w_avg: bool = False,
        return_ws: bool = False,
    ):  # fmt: skip
        """`noise`: the per-pixel noise of every layer (random mode), from `draw_noise`; None draws it
        from the global generator. With `mix_z` and `mix_cutoff`, layers from mix_cutoff on take mix_z's
        w (style mixing). `update_w_avg`: the G training step. `return_ws`: also the broadcast w
        (B, num_ws, w_dim), for the path length regularizer. With InfoGAN's codes, mix_z's noise mixes
        in and the codes stay z's: a mixed image still shows the codes Q is asked for."""
        ws = self.mapping(z, y, psi, cutoff, update_w_avg=update_w_avg)
        if mix_z is not None and self.code_dim:
            mix_z = torch.cat([mix_z[:, : -self.code_dim], z[:, -self.code_dim :]], dim=1)
        if mix_z is not None and mix_cutoff is not None and mix_cutoff < self.num_ws:
            ws = mix_styles(ws, self.mapping(mix_z, y, psi, cutoff), mix_cutoff)
        images = self.synthesis(ws, noise_mode, noise)
        return (images, ws) if return_ws else images

    def draw_noise(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> list[torch.Tensor]:
        """Per-layer noise for `forward(noise=...)`, drawn outside the (possibly compiled) forward."""
        return self.synthesis.draw_noise(batch, generator, device)

    def pass_kwargs(self, training_g: bool) -> dict:
        return {"update_w_avg": training_g}  # w_avg follows the G step's w only

    def pass_noise(self, batch: int, generator: torch.Generator, device: torch.device) -> dict:
        return {"noise": self.draw_noise(batch, generator, device)}


def mix_styles(ws: torch.Tensor, other: torch.Tensor, cutoff: int) -> torch.Tensor:
    """Layers [0, cutoff) keep ws; layers [cutoff, num_ws) take the other latent's w."""
    layer = torch.arange(ws.shape[1], device=ws.device)[None, :, None]
    return torch.where(layer < cutoff, ws, other)


# --------------------------------------------------------------------------- discriminator


class Conv2dLayer(EqualizedConv2d):
    """D's equalized-lr conv (+ bias, leaky ReLU x sqrt2, clamp), in the input's dtype. With `down`, a
    3x3 conv is blur -> stride-2 conv and a 1x1 conv is filtered down-sampling -> conv, as in the paper's D."""

    def __init__(
        self, cin: int, cout: int, kernel: int, down: bool = False, bias: bool = True, act: bool = True,
        conv_clamp: float = 0.0,
    ):  # fmt: skip
        super().__init__(cin, cout, kernel, bias=bias)
        self.down, self.act, self.conv_clamp = down, act, conv_clamp
        if down:  # on the module's device, so filtering needs no copy from the host in the step
            self.register_buffer("fir", fir_filter(), persistent=False)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        if self.down and self.kernel > 1:
            pad = (self.kernel + 1) // 2
            x = F.conv2d(upfirdn2d(x, self.fir, pad=(pad,) * 4), w, b, stride=2)
        elif self.down:
            x = F.conv2d(downsample2(x, self.fir), w, b)
        else:
            x = F.conv2d(x, w, b, padding=self.kernel // 2)
        if self.act:
            x = F.leaky_relu(x, 0.2) * SQRT2
        x = x * gain if gain != 1.0 else x
        return _clamp(x, self.conv_clamp * gain)


D_ARCHITECTURES = ("resnet", "orig", "skip")


class DiscriminatorBlock(nn.Module):
    """Two 3x3 convs, the second down-sampling. `resnet` adds a 1x1 down-sampled skip and scales the
    sum by 1/sqrt2 to keep the variance (Fig. 7c); `orig` and `skip` have no skip connection (in
    `skip` the images enter every block through their own fromRGB, see Discriminator)."""

    def __init__(self, cin: int, cout: int, architecture: str = "resnet", conv_clamp: float = 0.0):
        super().__init__()
        self.conv0 = Conv2dLayer(cin, cin, 3, conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(cin, cout, 3, down=True, conv_clamp=conv_clamp)
        self.skip = (
            Conv2dLayer(cin, cout, 1, down=True, bias=False, act=False) if architecture == "resnet" else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.skip is None:
            return self.conv1(self.conv0(x))
        return self.skip(x, gain=math.sqrt(0.5)) + self.conv1(self.conv0(x), gain=math.sqrt(0.5))


class Discriminator(DiscriminatorRole):
    """images (B, 3, R, R) [, y] -> (B,) logits: fromRGB, blocks down to 4x4, then minibatch standard
    deviation, a 3x3 conv, a dense layer and the output. Conditional: the output is projected onto the
    label mapped by an 8-layer mapping network (lr multiplier 0.01), scaled by 1/sqrt(cmap_dim).
    `aux_classes` > 0 adds AC-GAN's auxiliary classifier: an equalized-lr linear layer from the dense
    layer's features to that many class logits; `q_outputs` > 0 InfoGAN's Q head, one more such layer.

    FreezeD's blocks (`input_blocks`, counted by model.freeze_d) in input order: the first is the fromRGB
    and blocks[0] (`skip`: each block with its own fromRGB), then one per block; the epilogue (4x4 conv,
    dense, output, and the skip layout's last fromRGB) is never frozen, as in stylegan2-ada.
    stylegan2-ada's --freezed=L counts layers (fromrgb, conv0, conv1 and skip each one), so freeze_d=N
    is --freezed 3N+1 with resnet, 2N+1 with orig, and 3N with skip; the --freezed values between those
    freeze part of a block, which a block count cannot express."""

    # The label mapping network, and the output layer, whose width (cmap_dim) follows conditioning.
    class_tensors = (r"mapping\.", r"out\.", r"classifier\.")

    def __init__(
        self, resolution: int, num_classes: int = 0, channel_base: int = 32768, channel_max: int = 512,
        mbstd_group: int = 4, cmap_dim: int = 0, architecture: str = "resnet", conv_clamp: float = 0.0,
        mapping_layers: int = 8, minibatch_kernels: int = 0, minibatch_kernel_dims: int = 5, aux_classes: int = 0,
        q_outputs: int = 0,
    ):  # fmt: skip
        super().__init__()
        if architecture not in D_ARCHITECTURES:
            raise ValueError(f"StyleGAN2 D architecture {architecture!r} is not one of {D_ARCHITECTURES}")
        resolutions = doubling_resolutions(resolution, "StyleGAN2")
        ch = {r: feature_maps(r, channel_base, channel_max) for r in resolutions}
        self.resolution, self.mbstd_group, self.architecture = resolution, mbstd_group, architecture
        block_resolutions = list(reversed(resolutions[1:]))  # R, R/2, ..., 8
        if architecture == "skip":  # the (down-sampled) images enter every block, and the epilogue
            self.from_rgbs = nn.ModuleList(
                [Conv2dLayer(3, ch[r], 1, conv_clamp=conv_clamp) for r in block_resolutions]
            )
            self.from_rgbs.append(Conv2dLayer(3, ch[4], 1))
            self.register_buffer("fir", fir_filter(), persistent=False)
        else:
            self.from_rgb = Conv2dLayer(3, ch[resolution], 1, conv_clamp=conv_clamp)
        self.blocks = nn.ModuleList(
            [DiscriminatorBlock(ch[r], ch[r // 2], architecture, conv_clamp) for r in block_resolutions]
        )
        self.conv = Conv2dLayer(ch[4] + 1, ch[4], 3, conv_clamp=conv_clamp)
        self.fc = EqualizedLinear(ch[4] * 16, ch[4], act=True)
        self.num_classes = num_classes if num_classes > 1 else 0
        self.cmap_dim = (cmap_dim or ch[4]) if self.num_classes else 1
        self.minibatch = (
            MinibatchDiscrimination(ch[4], minibatch_kernels, minibatch_kernel_dims)
            if minibatch_kernels
            else None
        )
        self.out = EqualizedLinear(ch[4] + minibatch_kernels, self.cmap_dim)
        self.mapping = (
            MappingNetwork(0, self.cmap_dim, 0, self.num_classes, mapping_layers)
            if self.num_classes
            else None
        )
        self.classifier = EqualizedLinear(ch[4], aux_classes) if aux_classes else None
        self.q_head = EqualizedLinear(ch[4], q_outputs) if q_outputs else None  # InfoGAN's (models/codes.py)

    def input_blocks(self) -> list[nn.Module]:
        if not len(self.blocks):  # 4x4: the epilogue alone
            return []
        if self.architecture == "skip":
            return [nn.ModuleList([rgb, block]) for rgb, block in zip(self.from_rgbs, self.blocks)]
        return [nn.ModuleList([self.from_rgb, self.blocks[0]]), *self.blocks[1:]]

    def forward(
        self, images: torch.Tensor, y: torch.Tensor | None = None, parts: int = 1, all_outputs: bool = False
    ) -> torch.Tensor | DOutput:
        if self.architecture == "skip":
            x, img = None, images
            for from_rgb, block in zip(self.from_rgbs, self.blocks):
                x = from_rgb(img) if x is None else x + from_rgb(img)
                x, img = block(x), downsample2(img, self.fir)
            x = x + self.from_rgbs[-1](img)
        else:
            x = self.from_rgb(images)
            for block in self.blocks:
                x = block(x)
        x = minibatch_stddev(x, self.mbstd_group, parts)
        features = self.fc(self.conv(x).flatten(1).float())
        x = self.out(features if self.minibatch is None else self.minibatch(features, parts))
        if self.mapping is None:
            logits = x.squeeze(1)
        else:
            logits = (x * self.mapping(None, y)).sum(dim=1) / math.sqrt(self.cmap_dim)
        if not all_outputs:
            return logits
        classes = None if self.classifier is None else self.classifier(features)
        return DOutput(logits, features, classes, None if self.q_head is None else self.q_head(features))


# --------------------------------------------------------------------------- reference weights


def from_stylegan2_ada(state_dict: dict[str, torch.Tensor], resolution: int) -> dict[str, torch.Tensor]:
    """A stylegan2-ada-pytorch G or D state dict (`G.state_dict()`, `D.state_dict()` of its networks.py)
    renamed for bigtrain's Generator or Discriminator at `resolution`. Every tensor keeps its shape and
    orientation: no kernel is flipped (the up-sampling conv is its transposed conv of the same weight).
    Its resample_filter buffers are dropped: the [1, 3, 3, 1] filter is built in."""
    top = int(math.log2(resolution))
    renamed = {}
    for name, value in state_dict.items():
        parts = name.split(".")
        if parts[-1] == "resample_filter":
            continue
        if parts[0] == "mapping" and parts[1].startswith("fc"):  # mapping.fc3.weight
            name = f"mapping.layers.{parts[1][2:]}.{'.'.join(parts[2:])}"
        elif parts[0] == "synthesis":  # synthesis.b16.conv0.weight
            level = int(math.log2(int(parts[1][1:]))) - 2  # 4x4: 0
            if parts[2] == "const":
                name = "synthesis.const"
            elif parts[2] == "torgb":
                name = f"synthesis.to_rgbs.{level}.{'.'.join(parts[3:])}"
            else:  # conv0 (up-sampling) and conv1; 4x4 has conv1 only
                index = 0 if level == 0 else 2 * level - 1 + (parts[2] == "conv1")
                name = f"synthesis.convs.{index}.{'.'.join(parts[3:])}"
        elif parts[0].startswith("b"):  # D: b32.conv0.weight, b4.fc.weight
            block = top - int(math.log2(int(parts[0][1:])))  # the first block (full resolution): 0
            rest = ".".join(parts[2:])
            if parts[0] == "b4" and parts[1] in ("conv", "fc", "out"):
                name = f"{parts[1]}.{rest}"
            elif parts[1] == "fromrgb":
                skip_architecture = any(k.startswith("b4.fromrgb") for k in state_dict)
                name = f"from_rgbs.{block}.{rest}" if skip_architecture else f"from_rgb.{rest}"
            else:
                name = f"blocks.{block}.{parts[1]}.{rest}"
        renamed[name] = value
    return renamed
