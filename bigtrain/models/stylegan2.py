"""StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"), in plain
PyTorch: no custom CUDA ops, so it runs (and compiles) on any current PyTorch, CPU included.

Paper pieces, by section:
- 2.2 / Fig. 2  modulated convolution: the style s scales the weights' input channels,
  w'_ijk = s_i w_ijk; demodulation divides each output filter by sqrt(sum_ik w'_ijk^2 + eps), so unit
  input variance gives unit output variance. Computed in the "non-fused" form (scale the activations
  by s, one shared convolution, scale the outputs by the demodulation coefficients), which is what
  NVlabs' code runs in training, and which stays an ordinary batched conv for cuDNN and channels_last.
- 4 / Fig. 7  skip generator (toRGB at every resolution, summed after up-sampling) and residual
  discriminator; minibatch standard deviation in D's last block (ProGAN, section 3).
- StyleGAN 2.1: an 8-layer mapping network z -> w with a 0.01 learning-rate multiplier, per-layer noise
  inputs with learned strengths, and the running average w_avg that truncation pulls toward.
- Conditional variant (StyleGAN2-ADA): the class embedding joins z at the mapping network's input, and
  D projects its features onto an embedding of the label.

Resampling uses the [1, 3, 3, 1] filter, as the paper does: up-sampling by 2 with it is bilinear
interpolation (F.interpolate), and down-sampling is that filter followed by stride 2.
Equalized learning rate (ProGAN 4.1) everywhere: weights are N(0, 1) scaled by 1/sqrt(fan_in) at run time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .progan import minibatch_stddev

SQRT2 = math.sqrt(2.0)


def stylegan2_channels(resolution: int, channel_base: int = 32768, channel_max: int = 512) -> int:
    return int(min(channel_base // resolution, channel_max))


def _resolutions(final: int) -> list[int]:
    if final < 4 or final & (final - 1):
        raise ValueError(f"StyleGAN2 resolution {final} must be a power of two >= 4")
    return [2**k for k in range(2, int(math.log2(final)) + 1)]


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Float one-hot rows by scatter: nothing is read back to the host, on any device."""
    return torch.zeros(y.shape[0], num_classes, device=y.device).scatter_(1, y[:, None], 1.0)


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class FullyConnected(nn.Module):
    """Equalized-lr linear layer; `lr_multiplier` slows it (the mapping network's 0.01)."""

    def __init__(
        self, fin: int, fout: int, bias_init: float = 0.0, lr_multiplier: float = 1.0, act: bool = True
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(fout, fin) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((fout,), float(bias_init) / lr_multiplier))
        self.weight_gain = lr_multiplier / math.sqrt(fin)
        self.bias_gain = lr_multiplier
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        return F.leaky_relu(x, 0.2) * SQRT2 if self.act else x


class MappingNetwork(nn.Module):
    """z (and a class embedding) -> w, broadcast to every synthesis layer; tracks w_avg."""

    def __init__(
        self, z_dim: int, w_dim: int, num_ws: int, num_classes: int = 0, layers: int = 8,
        lr_multiplier: float = 0.01, w_avg_beta: float = 0.995,
    ):  # fmt: skip
        super().__init__()
        self.z_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, w_dim, num_ws, w_avg_beta
        self.embed = FullyConnected(num_classes, w_dim, act=False) if num_classes > 1 else None
        dims = [z_dim + (w_dim if self.embed else 0)] + [w_dim] * layers
        self.layers = nn.Sequential(
            *[FullyConnected(a, b, lr_multiplier=lr_multiplier) for a, b in zip(dims[:-1], dims[1:])]
        )
        self.num_classes = num_classes
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(
        self, z: torch.Tensor, y: torch.Tensor | None = None, psi: float = 1.0, cutoff: int | None = None,
        update_w_avg: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        """z (B, z_dim) -> ws (B, num_ws, w_dim), in float32 also under autocast (as stylegan2-ada
        keeps its mapping network in fp32): w_avg and truncation stay exact."""
        with torch.autocast(z.device.type, enabled=False):
            x = normalize_2nd_moment(z.float())
            if self.embed is not None:
                onehot = one_hot(y, self.num_classes)
                x = torch.cat([x, normalize_2nd_moment(self.embed(onehot))], dim=1)
            w = self.layers(x)
        if update_w_avg:
            self.w_avg.copy_(w.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        if psi != 1.0:  # truncation toward the average w, in the first `cutoff` layers
            cutoff = self.num_ws if cutoff is None else cutoff
            ws[:, :cutoff] = self.w_avg.lerp(ws[:, :cutoff], psi)
        return ws


def modulated_conv2d(
    x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True, padding: int = 0
) -> torch.Tensor:
    """x (B, I, H, W), weight (O, I, k, k) already scaled, styles (B, I) -> (B, O, H, W).

    Equivalent to a per-sample conv with w'_oik = s_i w_oik / sigma_o, sigma_o = sqrt(sum_ik w'^2 + 1e-8),
    written as activations x s -> shared conv -> outputs / sigma (no per-sample weights are built)."""
    x = x * styles.to(x.dtype)[:, :, None, None]
    out = F.conv2d(x, weight.to(x.dtype), padding=padding)
    if demodulate:
        sigma_inv = (
            (weight.square().sum(dim=(2, 3))[None] * styles.square()[:, None, :]).sum(dim=2).add(1e-8).rsqrt()
        )
        out = out * sigma_inv.to(out.dtype)[:, :, None, None]
    return out


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (after 2x up-sampling when `up`), noise, bias, leaky ReLU."""

    def __init__(self, cin: int, cout: int, w_dim: int, resolution: int, up: bool = False):
        super().__init__()
        self.affine = FullyConnected(w_dim, cin, bias_init=1.0, act=False)
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.weight_gain = 1.0 / math.sqrt(cin * 9)
        self.up, self.resolution = up, resolution
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "random",
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`noise` (B, 1, R, R): this layer's random-mode noise, drawn by the caller (see
        Generator.draw_noise) so that a compiled forward holds no random generator; None draws it."""
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = modulated_conv2d(x, self.weight * self.weight_gain, self.affine(w), padding=1)
        if noise_mode == "random":
            if noise is None:
                noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device)
            x = x + noise.to(x.dtype) * self.noise_strength.to(x.dtype)
        elif noise_mode == "const":
            x = x + (self.noise_const * self.noise_strength).to(x.dtype)
        return F.leaky_relu(x + self.bias.to(x.dtype)[None, :, None, None], 0.2) * SQRT2


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB, without demodulation (the skip generator's per-resolution output)."""

    def __init__(self, cin: int, w_dim: int, channels: int = 3):
        super().__init__()
        self.affine = FullyConnected(w_dim, cin, bias_init=1.0, act=False)
        self.weight = nn.Parameter(torch.randn(channels, cin, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.weight_gain = 1.0 / math.sqrt(cin)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return x + self.bias.to(x.dtype)[None, :, None, None]


class SynthesisNetwork(nn.Module):
    """A learned 4x4 constant, then per resolution two modulated convs and a toRGB; RGB outputs are
    up-sampled and summed (the skip architecture). Consumes ws: (B, num_ws, w_dim)."""

    def __init__(self, resolution: int, w_dim: int, channel_base: int, channel_max: int):
        super().__init__()
        self.resolutions = _resolutions(resolution)
        ch = {r: stylegan2_channels(r, channel_base, channel_max) for r in self.resolutions}
        self.const = nn.Parameter(torch.randn(ch[4], 4, 4))
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        for r in self.resolutions:
            if r == 4:
                self.convs.append(SynthesisLayer(ch[4], ch[4], w_dim, 4))
            else:
                self.convs.append(SynthesisLayer(ch[r // 2], ch[r], w_dim, r, up=True))
                self.convs.append(SynthesisLayer(ch[r], ch[r], w_dim, r))
            self.to_rgbs.append(ToRGB(ch[r], w_dim))
        # One w per conv, plus the last toRGB's (each toRGB shares the w of the conv after it).
        self.num_ws = len(self.convs) + 1

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
            y = self.to_rgbs[i](x, ws[:, layer])
            rgb = (
                y
                if rgb is None
                else F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False) + y
            )
        return rgb


class Generator(nn.Module):
    """z (B, z_dim) [, y (B,)] -> images (B, 3, R, R) in about [-1, 1]."""

    def __init__(
        self, resolution: int, z_dim: int = 512, w_dim: int = 512, num_classes: int = 0,
        channel_base: int = 32768, channel_max: int = 512, mapping_layers: int = 8,
    ):  # fmt: skip
        super().__init__()
        self.z_dim, self.w_dim, self.resolution = z_dim, w_dim, resolution
        self.synthesis = SynthesisNetwork(resolution, w_dim, channel_base, channel_max)
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
        (B, num_ws, w_dim), for the path length regularizer."""
        ws = self.mapping(z, y, psi, cutoff, update_w_avg=update_w_avg)
        if mix_z is not None and mix_cutoff is not None and mix_cutoff < self.num_ws:
            ws = mix_styles(ws, self.mapping(mix_z, y, psi, cutoff), mix_cutoff)
        images = self.synthesis(ws, noise_mode, noise)
        return (images, ws) if return_ws else images

    def draw_noise(
        self, batch: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> list[torch.Tensor]:
        """Per-layer noise for `forward(noise=...)`, drawn outside the (possibly compiled) forward."""
        return self.synthesis.draw_noise(batch, generator, device)


def mix_styles(ws: torch.Tensor, other: torch.Tensor, cutoff: int) -> torch.Tensor:
    """Layers [0, cutoff) keep ws; layers [cutoff, num_ws) take the other latent's w."""
    layer = torch.arange(ws.shape[1], device=ws.device)[None, :, None]
    return torch.where(layer < cutoff, ws, other)


_FIR = (1.0, 3.0, 3.0, 1.0)


def fir_filter(dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The separable [1, 3, 3, 1] low-pass filter as a 4x4 kernel with unit sum."""
    f = torch.tensor(_FIR, dtype=torch.float64)
    return (f[:, None] * f[None, :] / f.sum() ** 2).to(dtype=dtype, device=device)


def _fir(x: torch.Tensor, pad: int, stride: int, kernel: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise [1, 3, 3, 1] filtering; pass the kernel (a module buffer) to avoid a host-to-device copy."""
    c = x.shape[1]
    kernel = fir_filter(x.dtype, x.device) if kernel is None else kernel.to(x.dtype)
    return F.conv2d(F.pad(x, (pad,) * 4), kernel.expand(c, 1, 4, 4), stride=stride, groups=c)


def downsample2(x: torch.Tensor, kernel: torch.Tensor | None = None) -> torch.Tensor:
    """Low-pass with [1, 3, 3, 1], keep every second pixel: (H, W) -> (H/2, W/2)."""
    return _fir(x, pad=1, stride=2, kernel=kernel)


class EqualizedConv(nn.Module):
    """Equalized-lr conv (+ bias, leaky ReLU x sqrt2). With `down`, a 3x3 conv is blur -> stride-2 conv
    and a 1x1 conv is filtered down-sampling -> conv, as in the paper's D."""

    def __init__(
        self, cin: int, cout: int, kernel: int, down: bool = False, bias: bool = True, act: bool = True
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(cin * kernel * kernel)
        self.down, self.act, self.kernel = down, act, kernel
        if down:  # on the module's device, so filtering needs no copy from the host in the step
            self.register_buffer("fir", fir_filter(), persistent=False)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        if self.down and self.kernel > 1:
            x = F.conv2d(_fir(x, pad=(self.kernel + 1) // 2, stride=1, kernel=self.fir), w, b, stride=2)
        elif self.down:
            x = F.conv2d(downsample2(x, self.fir), w, b)
        else:
            x = F.conv2d(x, w, b, padding=self.kernel // 2)
        if self.act:
            x = F.leaky_relu(x, 0.2) * SQRT2
        return x * gain if gain != 1.0 else x


class DiscriminatorBlock(nn.Module):
    """Residual: two 3x3 convs (the second down-sampling) beside a 1x1 down-sampled skip, summed and
    scaled by 1/sqrt2 to keep the variance (Fig. 7c)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0 = EqualizedConv(cin, cin, 3)
        self.conv1 = EqualizedConv(cin, cout, 3, down=True)
        self.skip = EqualizedConv(cin, cout, 1, down=True, bias=False, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x, gain=math.sqrt(0.5)) + self.conv1(self.conv0(x), gain=math.sqrt(0.5))


class Discriminator(nn.Module):
    """images (B, 3, R, R) [, y] -> (B,) logits: fromRGB, residual blocks down to 4x4, then minibatch
    standard deviation, a 3x3 conv, a dense layer and the output (a projection onto the label's
    embedding when conditional)."""

    def __init__(
        self, resolution: int, num_classes: int = 0, channel_base: int = 32768, channel_max: int = 512,
        mbstd_group: int = 4, cmap_dim: int = 0,
    ):  # fmt: skip
        super().__init__()
        resolutions = _resolutions(resolution)
        ch = {r: stylegan2_channels(r, channel_base, channel_max) for r in resolutions}
        self.resolution, self.mbstd_group = resolution, mbstd_group
        self.parts = 1  # the trainer passes reals and fakes in one batch; mbstd keeps them apart
        self.from_rgb = EqualizedConv(3, ch[resolution], 1)
        self.blocks = nn.Sequential(
            *[DiscriminatorBlock(ch[r], ch[r // 2]) for r in reversed(resolutions[1:])]
        )
        self.conv = EqualizedConv(ch[4] + 1, ch[4], 3)
        self.fc = FullyConnected(ch[4] * 16, ch[4])
        self.num_classes = num_classes if num_classes > 1 else 0
        self.cmap_dim = (cmap_dim or ch[4]) if self.num_classes else 1
        self.out = FullyConnected(ch[4], self.cmap_dim, act=False)
        self.embed = FullyConnected(self.num_classes, self.cmap_dim, act=False) if self.num_classes else None

    def forward(self, images: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = self.blocks(self.from_rgb(images))
        x = minibatch_stddev(x, self.mbstd_group, self.parts)
        x = self.fc(self.conv(x).flatten(1).float())
        x = self.out(x)
        if self.embed is None:
            return x.squeeze(1)
        cmap = normalize_2nd_moment(self.embed(one_hot(y, self.num_classes)))
        return (x * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)
