"""The published networks, exactly: each recipe builds the reference implementation's G and D.

The figures are the references' own, measured by building their networks with the recipe's settings:
- BigGAN: ajbrock/BigGAN-PyTorch's BigGAN.py (ImageNet: 1000 classes; CIFAR-10: launch_cifar_ema.sh).
- StyleGAN2: NVlabs/stylegan2-ada-pytorch's training/networks.py at the train.py configs named below;
  GFLOP per image are torch's FlopCounterMode (2 per multiply-add) on one image, noise_mode="const".
- ProGAN: tkarras/progressive_growing_of_gans' feature maps nf(stage) = min(8192 / 2^stage, 512),
  which give 23,086,795 (G) and 23,087,249 (D) parameters at 1024 (the paper's Table 2: 23.1M each).
Outputs on the same weights were compared outside the project (BigGAN to 1e-14 in float64, StyleGAN2 to
1e-6 relative in float32); see README, "Fidelity".
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bigtrain.config import load_config
from bigtrain.models import build_models
from conftest import REPO

# recipe: (classes, G parameters, D parameters, G GFLOP per image or None, the reference's setting)
REFERENCE = {
    "biggan/imagenet128": (
        1000,
        70_433_988,
        87_982_370,
        None,
        "BigGAN-PyTorch, ch 96, 128x128 (paper: 70.4M G)",
    ),
    "biggan/imagenet128_paper": (
        1000,
        70_433_988,
        87_982_370,
        None,
        "the same networks, the paper's update rule",
    ),
    "biggan/imagenet256": (1000, 82_235_844, 99_225_890, None, "BigGAN-PyTorch, ch 96, 256x256, z 140"),
    "biggan/cifar10_32": (10, 4_304_387, 4_207_361, None, "BigGAN-PyTorch launch_cifar_ema.sh"),
    "stylegan2/ffhq1024": (
        1,
        30_370_060,
        29_012_513,
        150.770,
        "stylegan2-ada-pytorch cfg=stylegan2 (config F)",
    ),
    "stylegan2/ffhq256": (1, 24_767_458, 24_001_089, 30.071, "stylegan2-ada-pytorch cfg=paper256"),
    "stylegan2/auto256": (1, 23_191_522, 24_001_089, 30.068, "stylegan2-ada-pytorch cfg=auto at 256"),
    "stylegan2/cifar10_32": (
        10,
        20_215_315,
        23_089_664,
        8.036,
        "stylegan2-ada-pytorch cfg=cifar, conditional",
    ),
    "progan/celebahq1024": (1, 23_086_795, 23_087_249, None, "progressive_growing_of_gans at 1024"),
}


def _build(recipe: str, classes: int, device: str = "cpu"):
    cfg = load_config(REPO / "configs" / f"{recipe}.yaml", [])
    with torch.device(device):  # meta: shapes only, so the 1024x1024 networks cost nothing
        G, D = build_models(cfg.model, classes)
    return cfg, G, D


@pytest.mark.parametrize("recipe", REFERENCE)
def test_parameter_counts_equal_the_reference(recipe):
    classes, g_params, d_params, _, source = REFERENCE[recipe]
    _, G, D = _build(recipe, classes, "meta")
    got = (sum(p.numel() for p in G.parameters()), sum(p.numel() for p in D.parameters()))
    assert got == (g_params, d_params), f"{recipe}: G, D have {got}; {source} has {(g_params, d_params)}"


@pytest.mark.parametrize("recipe", [r for r, ref in REFERENCE.items() if ref[3] is not None])
def test_stylegan2_generator_flops_equal_the_reference(recipe):
    """Transposed-conv up-sampling at the input resolution, as the reference: the interpolate-then-conv
    form cost 1.6-1.9x these figures."""
    classes, _, _, gflop, source = REFERENCE[recipe]
    cfg, G, _ = _build(recipe, classes, "meta")
    z = torch.zeros(1, cfg.model.z_dim, device="meta")
    y = torch.zeros(1, dtype=torch.long, device="meta") if classes > 1 else None
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        G(z, y, noise_mode="const")
    got = counter.get_total_flops() / 1e9
    assert got == pytest.approx(gflop, rel=0.01), f"{recipe}: {got:.3f} GFLOP per image; {source}: {gflop}"


# stylegan2-ada-pytorch's D at cfg=cifar (32x32, channel_base 32768, mbstd 32): (architecture, classes) -> parameters
STYLEGAN2_CIFAR_D = {
    ("resnet", 0): 21_507_073,
    ("resnet", 10): 23_876_096,
    ("orig", 0): 20_720_641,
    ("orig", 10): 23_089_664,
    ("skip", 0): 20_726_785,
    ("skip", 10): 23_095_808,
}


@pytest.mark.parametrize("architecture, classes", STYLEGAN2_CIFAR_D)
def test_stylegan2_discriminator_architectures_equal_the_reference(architecture, classes):
    """Each D layout, unconditional and conditional (the label's own 8-layer mapping network)."""
    from bigtrain.models.stylegan2 import Discriminator

    with torch.device("meta"):
        D = Discriminator(32, classes, 32768, 512, 32, architecture=architecture, conv_clamp=256.0)
    got, want = sum(p.numel() for p in D.parameters()), STYLEGAN2_CIFAR_D[architecture, classes]
    assert got == want, f"{architecture} D with {classes} classes: {got} parameters, the reference {want}"
