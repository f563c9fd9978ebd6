"""DCGAN (Radford, Metz & Chintala 2016, "Unsupervised Representation Learning with Deep Convolutional
Generative Adversarial Networks"): all-convolutional G and D, BatchNorm in both, ReLU and a tanh output in
G, LeakyReLU in D. Two architectures (`model.dcgan.arch`):

- `examples`: the 64x64 pair exactly as pytorch/examples' dcgan/main.py builds it (nz = model.z_dim,
  ngf = g_ch, ndf = d_ch): G projects z, seen as a 1x1 map, to 4x4 with a transposed conv, then four
  stride-2 transposed convs 4x4 reach 64x64; D mirrors it with stride-2 convs and a 4x4 valid conv to one
  score. No biases; BN everywhere except G's output and D's input (the paper's section 3); LeakyReLU 0.2.
  Init as its `weights_init`: conv weights N(0, 0.02), BN weights N(1, 0.02), BN biases 0. At
  nz 100, ngf = ndf = 64: G 3,576,704 and D 2,765,568 parameters.
- `standard_cnn`: the "standard CNN" of the SN-GAN paper (Miyato et al. 2018, appendix B.4, Table 3) with
  BatchNorm in D, which PyTorch-StudioGAN trains as DCGAN on CIFAR-10 (src/models/deep_conv.py): G a dense
  layer to (R/8)x(R/8)x8ch, three 4x4 stride-2 transposed convs with BN and ReLU, a 3x3 conv to RGB and
  tanh; D three blocks of (3x3 conv, 4x4 stride-2 conv), a 3x3 conv to 8 d_ch, all with BN and LeakyReLU,
  global sum pooling and a dense layer to one score. Biases everywhere, BN eps 1e-4 and orthogonal init
  (StudioGAN's ops.batchnorm_2d and MODEL.g_init/d_init). At z 128, g_ch = d_ch = 64, 32x32: G 3,812,355
  and D 2,931,009 parameters. 32x32 (CIFAR-10) and 48x48 (the paper's STL-10, R/8 = 6).

Both are unconditional: labels are ignored. With AC-GAN's auxiliary classifier (model.aux_classifier) G
also reads the one-hot label beside z, as AC-GAN's G does (Odena et al. 2017, section 3). With InfoGAN's
latent codes (regularize.info; models/codes.py) G's input layer reads [noise, codes], as the InfoGAN
paper's DCGAN-like MNIST G reads their concatenation, and D has a Q head: a dense layer on its features.

D returns the logit, the score before the reference's final Sigmoid: bigtrain's losses take logits
(objective/adversarial.py), and softplus on the logit is the reference's BCE on the sigmoid, exactly.

BatchNorm in D normalizes each of the `parts` sets of its batch (reals, fakes) on its own: both references
score reals and fakes in separate D calls, so D's batch statistics never mix them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .codes import LatentCodes, code_dim, q_outputs
from .heads import aux_classes, d_heads
from .layers import MinibatchDiscrimination, assert_shape, one_hot
from .roles import DiscriminatorRole, DOutput, GeneratorRole

RESOLUTIONS = {"examples": (64,), "standard_cnn": (32, 48)}
D_LEAK = {"examples": 0.2, "standard_cnn": 0.1}  # pytorch/examples; the SN-GAN paper's Table 3
WIDTHS = (8, 4, 2, 1)  # G's widths, 4x4 to the output, in multiples of g_ch; D's reversed, of d_ch


@dataclass
class Section:
    """model.dcgan: the DCGAN knobs."""

    arch: str = field(default="examples", metadata={"choices": tuple(RESOLUTIONS)})
    g_ch: int = 64  # G's width multiplier (pytorch/examples' ngf): widths 8, 4, 2, 1 x g_ch
    d_ch: int = 64  # D's (ndf): widths 1, 2, 4, 8 x d_ch
    # D's LeakyReLU slope; -1: the arch's own (examples 0.2; standard_cnn 0.1, the SN-GAN paper's
    # Table 3); 0: ReLU, as StudioGAN's DCGAN (its MODEL.d_act_fn default).
    d_leak: float = -1.0

    def check(self, key: str, m) -> None:
        check(self, m.resolution, key)


def check(s: Section, resolution: int, key: str = "model.dcgan") -> None:
    if s.arch not in RESOLUTIONS:
        raise ConfigError(f"{key}.arch={s.arch!r}: one of {tuple(RESOLUTIONS)}")
    if resolution not in RESOLUTIONS[s.arch]:
        other = [a for a, r in RESOLUTIONS.items() if resolution in r]
        hint = f" ({key}.arch={other[0]} builds it)" if other else ""
        raise ConfigError(
            f"model.resolution={resolution}: DCGAN's {s.arch} architecture is for "
            f"{' or '.join(map(str, RESOLUTIONS[s.arch]))} px{hint}"
        )
    for name in ("g_ch", "d_ch"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{key}.{name}={getattr(s, name)} must be > 0")
    if s.d_leak != -1.0 and not 0.0 <= s.d_leak < 1.0:
        raise ConfigError(f"{key}.d_leak={s.d_leak} must be in [0, 1) (0: ReLU), or -1 for the arch's own")


LATENT_CODES = True  # build takes InfoGAN's codes


def build(m, num_classes: int, codes: LatentCodes | None = None) -> tuple[nn.Module, nn.Module]:
    """Unconditional; with the auxiliary classifier G also reads the label (AC-GAN); with latent codes
    G's z is wider by their columns and D has a Q head (InfoGAN)."""
    s = m.dcgan
    check(s, m.resolution)
    leak = D_LEAK[s.arch] if s.d_leak == -1.0 else s.d_leak
    classes = aux_classes(m, num_classes)
    z_dim, heads = m.z_dim + code_dim(codes), d_heads(m, num_classes)
    if codes is not None:
        heads["q_outputs"] = q_outputs(codes)
    if s.arch == "examples":
        g = ExamplesGenerator(z_dim, s.g_ch, classes)
        d = ExamplesDiscriminator(s.d_ch, leak, **heads)
    else:
        g = StandardGenerator(m.resolution, z_dim, s.g_ch, classes)
        d = StandardDiscriminator(m.resolution, s.d_ch, leak, **heads)
    return g, d


def per_set_norm(bn: nn.Module, h: torch.Tensor, parts: int) -> torch.Tensor:
    """BatchNorm with each of the `parts` contiguous sets of the batch normalized by its own statistics
    (the running statistics take one update per set, as one D call per set gives)."""
    if parts <= 1 or not bn.training:
        return bn(h)
    return torch.cat([bn(chunk) for chunk in h.chunk(parts)])


def _init_examples(module: nn.Module) -> None:
    """pytorch/examples' weights_init: N(0, 0.02) conv weights, N(1, 0.02) BN weights, 0 BN biases; the
    heads bigtrain adds (dense layers) take N(0, 0.02) weights and 0 biases too."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0.0, 0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)


def _init_ortho(module: nn.Module) -> None:
    """StudioGAN's ops.init_weights(..., "ortho"): orthogonal conv and dense weights, 0 biases; BN keeps
    torch's (1, 0)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.orthogonal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _with_label(z: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.cat([z, one_hot(y, num_classes).to(z.dtype)], dim=1) if num_classes else z


class _Heads(DiscriminatorRole):
    """What every DCGAN D adds to its features: minibatch discrimination before the output layer, AC-GAN's
    classifier and InfoGAN's Q head beside it (models/heads.py, models/codes.py)."""

    class_tensors = (r"classifier\.",)  # AC-GAN's head

    def _heads(self, features: int, kernels: int, kernel_dims: int, classes: int, q_outputs: int = 0) -> None:
        self.minibatch = MinibatchDiscrimination(features, kernels, kernel_dims) if kernels else None
        self.classifier = nn.Linear(features, classes) if classes else None
        self.q_head = nn.Linear(features, q_outputs) if q_outputs else None  # InfoGAN's Q

    def _outputs(self, logits: torch.Tensor, features: torch.Tensor, all_outputs: bool):
        if not all_outputs:
            return logits
        classes = None if self.classifier is None else self.classifier(features)
        return DOutput(logits, features, classes, None if self.q_head is None else self.q_head(features))


# --------------------------------------------------------------------------- pytorch/examples, 64x64


class ExamplesGenerator(GeneratorRole):
    """z (B, nz) as a 1x1 map -> 4x4 x 8ngf -> 8x8 x 4ngf -> 16x16 x 2ngf -> 32x32 x ngf -> 64x64 x 3,
    transposed convs 4x4 (the first valid, the rest stride 2, padding 1), BN and ReLU between, tanh out."""

    class_tensors = (r"input\.weight$",)  # reads the one-hot label with AC-GAN's classifier

    def __init__(self, z_dim: int = 100, ch: int = 64, num_classes: int = 0):
        super().__init__()
        self.z_dim, self.num_classes = z_dim, num_classes
        widths = [ch * w for w in WIDTHS]
        self.input = nn.ConvTranspose2d(z_dim + num_classes, widths[0], 4, 1, 0, bias=False)
        self.ups = nn.ModuleList(
            nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False) for a, b in zip(widths, widths[1:])
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(w) for w in widths)
        self.output = nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1, bias=False)
        _init_examples(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        assert_shape(z, (None, self.z_dim), "DCGAN G latent z")
        h = _with_label(z, y, self.num_classes)
        h = F.relu(self.norms[0](self.input(h[:, :, None, None])))
        for up, norm in zip(self.ups, self.norms[1:]):
            h = F.relu(norm(up(h)))
        return torch.tanh(self.output(h))


class ExamplesDiscriminator(_Heads):
    """64x64 x 3 -> 32x32 x ndf -> 16x16 x 2ndf -> 8x8 x 4ndf -> 4x4 x 8ndf -> one logit: stride-2 convs
    4x4, BN after all but the first, LeakyReLU, then a 4x4 valid conv. The features are the 4x4 x 8ndf
    activation, flattened (the output conv is a dense layer on them). With minibatch discrimination a
    dense layer on its B outputs joins the output conv: together one dense layer on [features, o(x)]."""

    def __init__(
        self, ch: int = 64, leak: float = 0.2, minibatch_kernels: int = 0, minibatch_kernel_dims: int = 5,
        aux_classes: int = 0, q_outputs: int = 0,
    ):  # fmt: skip
        super().__init__()
        self.leak = leak
        widths = [ch * w for w in reversed(WIDTHS)]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 4, 2, 1, bias=False) for a, b in zip([3, *widths], widths))
        self.norms = nn.ModuleList(nn.BatchNorm2d(w) for w in widths[1:])  # none on the input layer
        self.output = nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False)
        features = widths[-1] * 4 * 4
        self._heads(features, minibatch_kernels, minibatch_kernel_dims, aux_classes, q_outputs)
        self.minibatch_output = nn.Linear(minibatch_kernels, 1, bias=False) if minibatch_kernels else None
        _init_examples(self)

    def input_blocks(self) -> list[nn.Module]:
        """The first conv, then each later conv with its BN."""
        return [self.convs[0], *(nn.ModuleList([c, n]) for c, n in zip(self.convs[1:], self.norms))]

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, parts: int = 1, all_outputs: bool = False
    ) -> torch.Tensor | DOutput:
        assert_shape(x, (None, 3, 64, 64), "DCGAN D input")
        h = F.leaky_relu(self.convs[0](x), self.leak)
        for conv, norm in zip(self.convs[1:], self.norms):
            h = F.leaky_relu(per_set_norm(norm, conv(h), parts), self.leak)
        logits = self.output(h).flatten()
        features = h.flatten(1)
        if self.minibatch is not None:
            closeness = self.minibatch(features, parts)[:, features.shape[1] :]
            logits = logits + self.minibatch_output(closeness).squeeze(1)
        return self._outputs(logits, features, all_outputs)


# --------------------------------------------------------------------------- SN-GAN's standard CNN, BN


class StandardGenerator(GeneratorRole):
    """z -> dense -> (R/8)^2 x 8ch -> three (4x4 stride-2 transposed conv, BN, ReLU) to R x R x ch ->
    3x3 conv -> tanh (SN-GAN Table 3a; StudioGAN's deep_conv.Generator). No BN or activation after the
    dense layer, as both."""

    class_tensors = (r"input\.weight$",)  # reads the one-hot label with AC-GAN's classifier

    def __init__(self, resolution: int = 32, z_dim: int = 128, ch: int = 64, num_classes: int = 0):
        super().__init__()
        self.resolution, self.z_dim, self.num_classes = resolution, z_dim, num_classes
        self.bottom = resolution // 8
        self.widths = widths = [ch * w for w in WIDTHS]
        self.input = nn.Linear(z_dim + num_classes, widths[0] * self.bottom**2)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(a, b, 4, 2, 1) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm2d(w, eps=1e-4) for w in widths[1:])
        self.output = nn.Conv2d(widths[-1], 3, 3, 1, 1)
        _init_ortho(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        assert_shape(z, (None, self.z_dim), "DCGAN G latent z")
        h = self.input(_with_label(z, y, self.num_classes))
        h = h.view(z.shape[0], self.widths[0], self.bottom, self.bottom)
        for up, norm in zip(self.ups, self.norms):
            h = F.relu(norm(up(h)))
        return torch.tanh(self.output(h))


class StandardBlock(nn.Module):
    """3x3 conv, BN, LeakyReLU, 4x4 stride-2 conv, BN, LeakyReLU (StudioGAN's DiscBlock without SN)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv0 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.bn0 = nn.BatchNorm2d(out_ch, eps=1e-4)
        self.conv1 = nn.Conv2d(out_ch, out_ch, 4, 2, 1)
        self.bn1 = nn.BatchNorm2d(out_ch, eps=1e-4)

    def forward(self, x: torch.Tensor, leak: float, parts: int) -> torch.Tensor:
        h = F.leaky_relu(per_set_norm(self.bn0, self.conv0(x), parts), leak)
        return F.leaky_relu(per_set_norm(self.bn1, self.conv1(h), parts), leak)


class StandardDiscriminator(_Heads):
    """R x R x 3 -> three StandardBlocks (d_ch, 2 d_ch, 4 d_ch; each halves the side) -> 3x3 conv to 8 d_ch,
    BN, LeakyReLU -> sum over positions -> dense -> one logit (SN-GAN Table 3b with BN in place of SN, and
    StudioGAN's global sum pooling where the paper's dense layer reads the flattened map). The features
    are the sum-pooled 8 d_ch."""

    def __init__(
        self, resolution: int = 32, ch: int = 64, leak: float = 0.1, minibatch_kernels: int = 0,
        minibatch_kernel_dims: int = 5, aux_classes: int = 0, q_outputs: int = 0,
    ):  # fmt: skip
        super().__init__()
        self.resolution, self.leak = resolution, leak
        widths = [ch * w for w in reversed(WIDTHS)]
        self.blocks = nn.ModuleList(StandardBlock(a, b) for a, b in zip([3, *widths[:2]], widths[:3]))
        self.last_conv = nn.Conv2d(widths[2], widths[3], 3, 1, 1)
        self.last_bn = nn.BatchNorm2d(widths[3], eps=1e-4)
        self._heads(widths[3], minibatch_kernels, minibatch_kernel_dims, aux_classes, q_outputs)
        self.linear = nn.Linear(widths[3] + minibatch_kernels, 1)
        _init_ortho(self)

    def input_blocks(self) -> list[nn.Module]:
        """The three down-blocks, then the last conv with its BN."""
        return [*self.blocks, nn.ModuleList([self.last_conv, self.last_bn])]

    def forward(
        self, x: torch.Tensor, y: torch.Tensor | None = None, parts: int = 1, all_outputs: bool = False
    ) -> torch.Tensor | DOutput:
        assert_shape(x, (None, 3, self.resolution, self.resolution), "DCGAN D input")
        h = x
        for block in self.blocks:
            h = block(h, self.leak, parts)
        h = F.leaky_relu(per_set_norm(self.last_bn, self.last_conv(h), parts), self.leak)
        features = h.sum(dim=(2, 3))
        widened = features if self.minibatch is None else self.minibatch(features, parts)
        logits = self.linear(widened).squeeze(1)
        return self._outputs(logits, features, all_outputs)
