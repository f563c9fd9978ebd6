"""EBGAN (Zhao, Mathieu & LeCun 2017, "Energy-based Generative Adversarial Network"): D is an
auto-encoder whose output is the energy of each image, its reconstruction error
D(x) = ||Dec(Enc(x)) - x|| (eq. 13, Figure 1), which the EBGAN margin loss
(bigtrain/objective/energy.py) pushes down on reals and up to the margin m on fakes.

The deep convolutional networks of the paper's 64x64 experiments (section 4.3 and appendix C), in its
notation ((64)4c2s: 64 feature maps, 4x4 kernel, stride 2; "-" between layers):

    G: (512)4c-(256)4c2s-(128)4c2s-(64)4c2s-(3)4c2s          (DCGAN's generator, dcgan/main.py)
    D: (64)4c2s-(128)4c2s-(256)4c2s-(128)4c2s-(64)4c2s-(3)4c2s (encoder: strided convolutions;
                                                               decoder: fractional-strided ones)

with `g_ch` = `d_ch` = 64. Appendix C's text could not be read here: D's string is as recalled and as
kozistr/Awesome-GANs and khanrc/tf.gans-comparison build it; G's is the DCGAN section 4.3 compares
with ("we train a DCGAN model under the same configuration"). DCGAN's guidance (Radford et al. 2015)
fixes what the strings leave open, as pytorch/examples' dcgan/main.py builds it: BatchNorm after every
layer but G's output and D's input (and here D's output), ReLU in G, LeakyReLU 0.2 in the encoder
(DCGAN's rule, LeakyReLU in all of D, would put it in the decoder too: ReLU there is bigtrain's
choice), tanh on images (G's output and the reconstruction), no biases, weights N(0, 0.02) and BN
scales N(1, 0.02). At another resolution R, G keeps its halving widths, g_ch at R/2, and starts at 4x4
(32 px: (256)4c-(128)4c2s-(64)4c2s-(3)4c2s); D keeps its three stages each way, so its code is 4 d_ch
maps at R/8.

D's BatchNorm normalizes each set of a batch (reals, fakes, ...: `parts`) with its own statistics, as
when D is called on each set alone.

The energy: `l2`, the norm of eq. 13 (a root of the sum of squares over channels and pixels), the
scale at which the paper's margins (10 on MNIST, section 4.1; 20 on CelebA, 80 on LSUN, appendix C as
recalled) are reconstruction errors an auto-encoder reaches; or `mse`, the mean squared error over them
(Figure 1 names D's last block "MSE"; its values lie in [0, 4] for images in [-1, 1], so its margin is
on that scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .heads import aux_classes, d_heads
from .layers import MinibatchDiscrimination, assert_shape, one_hot
from .roles import DiscriminatorRole, DOutput, GeneratorRole

ENERGIES = ("l2", "mse")


@dataclass
class Section:
    """model.ebgan: EBGAN's knobs (appendix C's 64x64 networks: g_ch = d_ch = 64)."""

    g_ch: int = 64  # G's widest layer is g_ch x 2^(log2(R) - 3) at 4x4, halving to g_ch at R/2
    d_ch: int = 64  # D's encoder: d_ch, 2 d_ch, 4 d_ch maps; its decoder: 2 d_ch, d_ch, 3
    energy: str = field(default="l2", metadata={"choices": ENERGIES})  # see the module docstring

    def check(self, key: str, m) -> None:
        for name in ("g_ch", "d_ch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{key}.{name}={getattr(self, name)} must be > 0")
        _check_resolution(m.resolution)


def build(m, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Unconditional, as in the paper. With the auxiliary classifier (model.aux_classifier), G takes the
    one-hot label beside z, as ProGAN's does for AC-GAN."""
    s = m.ebgan
    g = Generator(m.resolution, m.z_dim, s.g_ch, aux_classes(m, num_classes))
    return g, Discriminator(m.resolution, s.d_ch, s.energy, **d_heads(m, num_classes))


def _check_resolution(resolution: int) -> None:
    if resolution < 8 or resolution & (resolution - 1):
        raise ConfigError(f"model.resolution={resolution}: EBGAN needs a power of two >= 8")


def _dcgan_init(module: nn.Module) -> None:
    """DCGAN's weights_init: convolutions N(0, 0.02); BatchNorm scales N(1, 0.02), shifts 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def _up(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    """(out_ch)4c2s in the decoding direction: a 4x4 fractional-strided convolution, x2 in size."""
    return nn.ConvTranspose2d(in_ch, out_ch, 4, 2, 1, bias=False)


class PartsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over each of `parts` contiguous sets of the batch separately (in training; in eval mode
    the running statistics apply to all alike)."""

    def forward(self, x: torch.Tensor, parts: int = 1) -> torch.Tensor:
        if parts == 1 or not self.training:
            return super().forward(x)
        return torch.cat([super(PartsBatchNorm2d, self).forward(chunk) for chunk in x.chunk(parts)])


class Generator(GeneratorRole):
    """z (B, z_dim) -> (B, 3, R, R): a DCGAN generator, (8 g_ch)4c-(4 g_ch)4c2s-...-(g_ch)4c2s-(3)4c2s at
    64 px."""

    class_tensors = (r"layers\.0\.weight$",)  # the first layer reads the one-hot label beside z (AC-GAN)

    def __init__(self, resolution: int, z_dim: int = 100, g_ch: int = 64, num_classes: int = 0):
        super().__init__()
        _check_resolution(resolution)
        self.num_classes = num_classes
        ups = int(math.log2(resolution)) - 2  # 4x4 -> R
        widths = [g_ch * 2 ** (ups - 1 - i) for i in range(ups)]  # ..., 4 g_ch, 2 g_ch, g_ch
        self.layers = nn.ModuleList([nn.ConvTranspose2d(z_dim + num_classes, widths[0], 4, 1, 0, bias=False)])
        self.layers.extend(_up(a, b) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList([nn.BatchNorm2d(w) for w in widths])
        self.to_rgb = _up(widths[-1], 3)
        _dcgan_init(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            z = torch.cat([z, one_hot(y, self.num_classes).to(z.dtype)], dim=1)
        x = z[:, :, None, None]
        for layer, norm in zip(self.layers, self.norms):
            x = F.relu(norm(layer(x)))
        return torch.tanh(self.to_rgb(x))


class Discriminator(DiscriminatorRole):
    """images -> their energy (B,): the reconstruction error of the auto-encoder (`energy`: l2 or mse).
    Declared features: the code, the encoder's output flattened (B, 4 d_ch (R/8)^2), which the
    pull-away term reads. Minibatch discrimination (off: 0 kernels) appends its closeness features to
    the code as constant maps before the decoder; AC-GAN's classifier is a linear layer on the code."""

    class_tensors = (r"classifier\.",)

    def __init__(
        self, resolution: int, d_ch: int = 64, energy: str = "l2", minibatch_kernels: int = 0,
        minibatch_kernel_dims: int = 5, aux_classes: int = 0,
    ):  # fmt: skip
        super().__init__()
        _check_resolution(resolution)
        if energy not in ENERGIES:
            raise ConfigError(f"model.ebgan.energy={energy!r} is not one of {', '.join(ENERGIES)}")
        self.resolution, self.energy = resolution, energy
        enc = [3, d_ch, 2 * d_ch, 4 * d_ch]
        self.encoder = nn.ModuleList(nn.Conv2d(a, b, 4, 2, 1, bias=False) for a, b in zip(enc, enc[1:]))
        self.encoder_norms = nn.ModuleList(
            [nn.Identity(), PartsBatchNorm2d(enc[2]), PartsBatchNorm2d(enc[3])]
        )
        code_dim = enc[3] * (resolution // 8) ** 2
        self.minibatch = (
            MinibatchDiscrimination(code_dim, minibatch_kernels, minibatch_kernel_dims)
            if minibatch_kernels
            else None
        )
        dec = [enc[3] + minibatch_kernels, 2 * d_ch, d_ch]
        self.decoder = nn.ModuleList(_up(a, b) for a, b in zip(dec, dec[1:]))
        self.decoder_norms = nn.ModuleList([PartsBatchNorm2d(2 * d_ch), PartsBatchNorm2d(d_ch)])
        self.to_rgb = _up(d_ch, 3)
        self.classifier = nn.Linear(code_dim, aux_classes) if aux_classes else None
        _dcgan_init(self)

    def input_blocks(self) -> list[nn.Module]:
        """Each encoder layer with its BatchNorm, then each hidden decoder layer with its BatchNorm; the
        last decoder layer (to RGB) is D's output layer."""
        pairs = [*zip(self.encoder, self.encoder_norms), *zip(self.decoder, self.decoder_norms)]
        return [nn.ModuleList(pair) for pair in pairs]

    def _norm(self, norm: nn.Module, h: torch.Tensor, parts: int) -> torch.Tensor:
        return norm(h, parts) if isinstance(norm, PartsBatchNorm2d) else norm(h)

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, parts: int = 1, all_outputs: bool = False
    ) -> torch.Tensor | DOutput:
        assert_shape(x, (None, 3, self.resolution, self.resolution), "EBGAN D input")
        h = x
        for conv, norm in zip(self.encoder, self.encoder_norms):
            h = F.leaky_relu(self._norm(norm, conv(h), parts), 0.2)
        code = h.flatten(1)
        if self.minibatch is not None:  # the closeness features o(x) as constant maps beside the code
            closeness = self.minibatch(code, parts)[:, code.shape[1] :]
            h = torch.cat([h, closeness[:, :, None, None].expand(-1, -1, *h.shape[2:])], dim=1)
        for conv, norm in zip(self.decoder, self.decoder_norms):
            h = F.relu(self._norm(norm, conv(h), parts))
        error = (torch.tanh(self.to_rgb(h)).float() - x.float()).flatten(1)
        energy = (
            error.square().mean(dim=1) if self.energy == "mse" else torch.linalg.vector_norm(error, dim=1)
        )
        if not all_outputs:
            return energy
        return DOutput(energy, code, None if self.classifier is None else self.classifier(code))
