"""StyleGAN2: modulated convolution, regularizers, style mixing, truncation, augmentation, training."""

import math

import pytest
import torch
import torch.nn.functional as F

from bigtrain.models.stylegan2 import (
    Discriminator,
    Generator,
    MappingNetwork,
    downsample2,
    fir_filter,
    from_stylegan2_ada,
    mix_styles,
    modulated_conv2d,
    normalize_2nd_moment,
    upsample2,
)
from conftest import REPO, assert_same_networks

RECIPE = REPO / "configs" / "stylegan2" / "digits32.yaml"


def _small(resolution: int, num_classes: int = 0) -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    G = Generator(resolution, 32, 32, num_classes, channel_base=512, channel_max=32, mapping_layers=2)
    return G, Discriminator(resolution, num_classes, channel_base=512, channel_max=32)


def test_demodulation_gives_unit_output_variance_for_unit_input():
    torch.manual_seed(0)
    x = torch.randn(8, 64, 24, 24)
    weight = torch.randn(48, 64, 3, 3) * 3.0  # any scale: demodulation removes it
    styles = torch.rand(8, 64) * 4 + 0.1
    out = modulated_conv2d(x, weight, styles, demodulate=True)
    std = out.std(dim=(2, 3))  # per sample and output feature map
    assert std.mean().item() == pytest.approx(1.0, abs=0.05), f"mean output std {std.mean():.3f}, expected 1"
    assert (std - 1).abs().max().item() < 0.2, f"an output map has std {std.max():.3f} / {std.min():.3f}"


def test_the_non_fused_form_equals_per_sample_modulated_weights():
    """Activations x s -> shared conv -> x 1/sigma equals the paper's w'' = w' / sigma per sample."""
    torch.manual_seed(1)
    x, weight, styles = torch.randn(3, 5, 6, 6), torch.randn(4, 5, 3, 3), torch.randn(3, 5)
    ours = modulated_conv2d(x, weight, styles, padding=1)
    for b in range(3):
        w = weight * styles[b][None, :, None, None]
        w = w / (w.square().sum(dim=(1, 2, 3), keepdim=True) + 1e-8).sqrt()
        expected = F.conv2d(x[b : b + 1], w, padding=1)
        assert torch.allclose(ours[b : b + 1], expected, atol=1e-5), (
            f"sample {b}: {(ours[b] - expected).abs().max()}"
        )


def test_style_mixing_crosses_at_the_drawn_layer():
    G, _ = _small(32)
    z, z2 = torch.randn(4, 32), torch.randn(4, 32)
    plain = G.mapping(z)
    other = G.mapping(z2)
    for cutoff in (1, 3, G.num_ws - 1):
        _, ws = G(z, mix_z=z2, mix_cutoff=cutoff, return_ws=True)
        assert torch.equal(ws[:, :cutoff], plain[:, :cutoff]), cutoff
        assert torch.equal(ws[:, cutoff:], other[:, cutoff:]), cutoff
    assert torch.equal(mix_styles(plain, other, G.num_ws), plain)


def test_truncation_psi_zero_is_w_avg_and_one_is_identity():
    torch.manual_seed(4)
    mapping = MappingNetwork(16, 16, num_ws=6, layers=2)
    mapping.w_avg.copy_(torch.randn(16))
    z = torch.randn(5, 16)
    plain = mapping(z)
    assert torch.equal(mapping(z, psi=1.0), plain)
    assert torch.allclose(mapping(z, psi=0.0), mapping.w_avg.expand(5, 6, 16))
    half = mapping(z, psi=0.5, cutoff=2)
    assert torch.allclose(half[:, :2], mapping.w_avg.lerp(plain[:, :2], 0.5))
    assert torch.equal(half[:, 2:], plain[:, 2:]), "layers past the cutoff must not be truncated"


def test_w_avg_tracks_only_in_the_g_step():
    G, _ = _small(8)
    z = torch.randn(16, 32)
    G(z)
    assert torch.count_nonzero(G.mapping.w_avg) == 0
    G(z, update_w_avg=True)
    w = G.mapping.layers(normalize_2nd_moment(z))
    assert torch.allclose(G.mapping.w_avg, 0.005 * w.mean(0), atol=1e-6), "w_avg = mean(w).lerp(w_avg, 0.995)"


@pytest.mark.parametrize("resolution", [32, 64, 128, 256, 512, 1024])
def test_shapes_at_every_resolution(resolution):
    torch.manual_seed(0)
    G = Generator(resolution, 16, 16, 3, channel_base=4096, channel_max=16, mapping_layers=1)
    D = Discriminator(resolution, 3, channel_base=4096, channel_max=16)
    z, y = torch.randn(2, 16), torch.tensor([0, 2])
    with torch.no_grad():
        images = G(z, y)
        assert images.shape == (2, 3, resolution, resolution)
        assert D(images, y).shape == (2,)
    assert G.num_ws == 2 * int(math.log2(resolution)) - 2


def test_conditional_d_projects_onto_the_label():
    _, D = _small(8, num_classes=4)
    x = torch.randn(2, 3, 8, 8)
    a, b = D(x, torch.tensor([0, 0])), D(x, torch.tensor([1, 1]))
    assert not torch.allclose(a, b), "the label does not change a conditional D's score"


def _fir_by_definition(padded: torch.Tensor, gain: float) -> torch.Tensor:
    """Convolve every channel with the 4x4 [1, 3, 3, 1] filter x gain, one output pixel at a time."""
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = (f[:, None] * f[None, :] / 64 * gain).flip((0, 1))  # convolution: the kernel is flipped
    h, w = padded.shape[-2] - 3, padded.shape[-1] - 3
    out = torch.zeros(*padded.shape[:2], h, w)
    for i in range(h):
        for j in range(w):
            out[:, :, i, j] = (padded[:, :, i : i + 4, j : j + 4] * kernel).sum(dim=(-2, -1))
    return out


def test_upsampling_is_zero_insertion_padding_and_the_fir_filter_borders_included():
    """The toRGB skip (upfirdn2d up=2, pad 2/1, gain 4) and the up-sampling modulated conv (stride-2
    transposed conv, then the filter with pad 1 and gain 4), against the operations written out."""
    torch.manual_seed(7)
    x = torch.randn(2, 3, 5, 5)
    zeros_inserted = torch.zeros(2, 3, 10, 10)
    zeros_inserted[:, :, ::2, ::2] = x
    padded = F.pad(zeros_inserted, (2, 1, 2, 1))
    expected = _fir_by_definition(padded, gain=4.0)
    got = upsample2(x, fir_filter())
    assert got.shape == (2, 3, 10, 10) and torch.allclose(got, expected, atol=1e-6), (
        (got - expected).abs().max()
    )
    assert not torch.allclose(
        got, F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False), atol=1e-3
    )

    weight, styles = torch.randn(4, 3, 3, 3), torch.rand(2, 3) + 0.5
    got = modulated_conv2d(x, weight, styles, demodulate=False, up=True, kernel=fir_filter())
    # Transposed conv, stride 2 = zeros inserted, padded by k - 1 = 2, convolved (flipped kernel).
    scaled = zeros_inserted[:, :, :9, :9] * styles[:, :, None, None]
    transposed = F.conv2d(F.pad(scaled, (2, 2, 2, 2)), weight.flip((2, 3)))  # (2, 4, 11, 11)
    expected = _fir_by_definition(F.pad(transposed, (1, 1, 1, 1)), gain=4.0)
    assert got.shape == (2, 4, 10, 10) and torch.allclose(got, expected, atol=1e-5), (
        (got - expected).abs().max()
    )


def test_stylegan2_ada_weights_map_one_to_one():
    """Every tensor of stylegan2-ada-pytorch's G and D (names and shapes recorded from its networks.py
    in tests/data) has its place in bigtrain's networks, with the same shape, and nothing is left over."""
    import json

    recorded = json.loads((REPO / "tests" / "data" / "stylegan2_ada_state_dict_keys.json").read_text())
    c = recorded["config"]
    G = Generator(
        c["img_resolution"],
        c["z_dim"],
        c["w_dim"],
        c["c_dim"],
        c["channel_base"],
        c["channel_max"],
        c["mapping_layers"],
    )
    reference = {k: torch.zeros(shape) for k, shape in recorded["G"].items()}
    G.load_state_dict(from_stylegan2_ada(reference, c["img_resolution"]))  # strict: same names, same shapes
    for architecture in ("resnet", "orig", "skip"):
        D = Discriminator(
            c["img_resolution"], c["c_dim"], c["channel_base"], c["channel_max"], architecture=architecture
        )
        reference = {k: torch.zeros(shape) for k, shape in recorded[f"D_{architecture}"].items()}
        D.load_state_dict(from_stylegan2_ada(reference, c["img_resolution"]))


def test_lazy_regularization_steps_follow_stylegan2_adas_phases(demo_shards, tmp_path):
    """stylegan2-ada runs Gmain every iteration, Greg (path length) every G_reg_interval, Dmain, and
    Dreg (R1) every D_reg_interval, each its own optimizer step with lr x k/(k+1) and betas^(k/(k+1)).
    bigtrain takes D's steps first; per network the sequence, rates and betas must be the same."""
    from bigtrain.config import load_config
    from bigtrain.train.loop import Trainer

    cfg = load_config(RECIPE, [f"data.path={demo_shards}", f"train.run_dir={tmp_path}", "track.enabled=false",
                               "eval.every_kimg=0", "train.batch=8", "data.num_workers=0", "regularize.r1.interval=4",
                               "regularize.path_length.interval=2", "model.stylegan2.fmap_base=256", "model.stylegan2.fmap_max=16"])  # fmt: skip
    trainer = Trainer(cfg)
    steps, step = [], trainer.backend.step

    def recording_step(which):
        group = trainer.backend.optimizer(which).param_groups[0]
        steps.append((which, trainer._phase_now, group["lr"], group["betas"]))
        step(which)

    trainer.backend.step = recording_step
    original_guarded = trainer._guarded_step

    def guarded(which, loss, check_stop=False, phase=""):
        trainer._phase_now = phase or "main"
        original_guarded(which, loss, check_stop, phase)

    trainer._guarded_step = guarded
    iterations = 8
    for _ in range(iterations):
        trainer.train_step()
    expected = []
    for i in range(iterations):
        expected += [("d", "main")] + ([("d", "R1")] if i % 4 == 0 else [])
        expected += [("g", "main")] + ([("g", "path length")] if i % 2 == 0 else [])
    assert [(w, p) for w, p, _, _ in steps] == expected
    for which, _, lr, betas in steps:
        k = 4 if which == "d" else 2
        assert lr == pytest.approx(2.5e-3 * k / (k + 1)) and betas == pytest.approx(
            (0.0, 0.99 ** (k / (k + 1)))
        )


def test_cifar_recipe_scales_g_like_stylegan2_adas_g_reg_interval_without_path_length(demo_shards, tmp_path):
    """stylegan2-ada's cifar config turns path length off but keeps G_reg_interval 4, so its G optimizer
    has lr x 4/5 and betas ^ 4/5 (training_loop.py's mb_ratio); D's follow R1's interval 16."""
    from bigtrain.config import ConfigError, load_config
    from bigtrain.train.loop import Trainer

    recipe = REPO / "configs" / "stylegan2" / "cifar10_32.yaml"
    small = [f"data.path={demo_shards}", f"train.run_dir={tmp_path}", "track.enabled=false", "eval.every_kimg=0",
             "data.num_workers=0", "model.stylegan2.fmap_base=256", "model.stylegan2.fmap_max=16", "model.stylegan2.w_dim=32", "model.z_dim=32"]  # fmt: skip
    trainer = Trainer(load_config(recipe, small))
    assert not trainer.objective.lazy("g")
    for opt, lr, k in ((trainer.opt_g, 0.0025, 4), (trainer.opt_d, 0.0025, 16)):
        (group,) = opt.param_groups
        assert group["lr"] == pytest.approx(lr * k / (k + 1))
        assert group["betas"] == pytest.approx((0.0, 0.99 ** (k / (k + 1))))
    with pytest.raises(
        ConfigError, match="optim.g_reg_interval=2 but the lazy path length of G steps every 4"
    ):
        Trainer(load_config(recipe, [*small, "regularize.path_length.weight=2", "optim.g_reg_interval=2"]))


def test_conv_clamp_bounds_every_convolution_output():
    torch.manual_seed(8)
    G = Generator(16, 16, 16, 0, channel_base=256, channel_max=16, mapping_layers=1, conv_clamp=0.5)
    D = Discriminator(16, 0, channel_base=256, channel_max=16, conv_clamp=0.5)
    outputs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o)) for m in [*G.modules(), *D.modules()]
             if type(m).__name__ in ("SynthesisLayer", "ToRGB", "Conv2dLayer") and getattr(m, "conv_clamp", 0)]  # fmt: skip
    with torch.no_grad():
        images = G(torch.randn(4, 16) * 10)
        D(images)
    for hook in hooks:
        hook.remove()
    assert len(outputs) == len(hooks) > 10 and all(o.abs().max() <= 0.5 for o in outputs)
    assert any(o.abs().max() == 0.5 for o in outputs), "the clamp never engaged: the test proves nothing"


def test_downsample_is_the_filtered_half():
    x = torch.ones(1, 2, 8, 8)
    y = downsample2(x)
    assert y.shape == (1, 2, 4, 4)
    assert torch.allclose(y[..., 1:-1, 1:-1], torch.ones(1, 2, 2, 2)), "a constant must stay constant inside"


def _run_cfg(data, run_dir, total_kimg, *extra):
    from bigtrain.config import load_config

    return load_config(RECIPE, [f"data.path={data}", f"train.run_dir={run_dir}", "track.enabled=false",
                                f"train.total_kimg={total_kimg}", "data.num_workers=0", *extra])  # fmt: skip


def test_resume_gives_identical_weights_with_every_regularizer_on(demo_shards, tmp_path):
    """R1, path length (with its running mean), style mixing, noise inputs and DiffAugment all draw
    or carry state: a run split by a checkpoint must still equal the straight run bit for bit."""
    from bigtrain.train.loop import Trainer

    extra = ["train.batch=8", "eval.every_kimg=0", "regularize.r1.interval=4", "regularize.path_length.interval=2",
             "augment.diffaugment=color,translation,cutout", "ema.halflife_kimg=0.02"]  # fmt: skip
    whole = Trainer(_run_cfg(demo_shards, tmp_path / "whole", 0.096, *extra))
    whole.run()
    first = Trainer(_run_cfg(demo_shards, tmp_path / "split", 0.048, *extra))
    first.run()
    second = Trainer(_run_cfg(demo_shards, tmp_path / "split", 0.096, *extra), resume=True)
    assert (
        second.iteration == 6
        and second.objective.state_dict()["pl_mean"].item()
        == first.objective.state_dict()["pl_mean"].item()
        != 0
    )
    second.run()
    assert_same_networks(whole, second, "after resume")
    assert torch.equal(whole.objective.state_dict()["pl_mean"], second.objective.state_dict()["pl_mean"]), (
        whole.objective.state_dict()["pl_mean"],
        second.objective.state_dict()["pl_mean"],
    )
    assert whole.opt_d.param_groups[0]["lr"] == pytest.approx(2.5e-3 * 4 / 5), "lazy R1 scales D's lr"
    assert second.opt_g.param_groups[0]["lr"] == pytest.approx(2.5e-3 * 2 / 3), "lazy PL scales G's lr"
    assert second.opt_g.param_groups[0]["betas"][1] == pytest.approx(0.99 ** (2 / 3))


@pytest.mark.slow
def test_the_digits_recipe_learns(demo_shards, tmp_path):
    """The StyleGAN2 recipe, shortened: the Frechet distance falls clearly, as for BigGAN."""
    from bigtrain.train.loop import Trainer

    trainer = Trainer(_run_cfg(demo_shards, tmp_path / "run", 2, "eval.every_kimg=2"))
    trainer.run()
    start, end = trainer.metric_history[0]["fd_digits"], trainer.metric_history[-1]["fd_digits"]
    print(f"stylegan2 fd_digits at 0 kimg {start:.2f}, at 2 kimg {end:.2f}")  # shown by `make test-cpus`
    assert end < 0.5 * start, (
        f"fd_digits went from {start:.2f} to {end:.2f}; expected below {0.5 * start:.2f}"
    )
    assert trainer.objective.state_dict()["pl_mean"].item() > 0, "the path length regularizer never ran"
    assert torch.count_nonzero(trainer.ema.model.mapping.w_avg) > 0, "G_ema has no w_avg to truncate toward"
