"""Progressive GAN: model, phase schedule, and growing inside the trainer."""

import pytest
import torch
import torch.nn.functional as F

from bigtrain.models.progan import Discriminator, Generator, minibatch_stddev, pixel_norm
from bigtrain.train.phases import Phase, PhaseSchedule, PhaseState
from conftest import assert_same_networks


def _schedule():
    return PhaseSchedule([
        Phase(4, 0, 10, 64, 1e-3, 1e-3),
        Phase(8, 20, 10, 32, 1e-3, 1e-3),
        Phase(16, 40, 0, 16, 5e-4, 5e-4),
    ])  # fmt: skip


def test_schedule_at_boundaries_and_mid_fade():
    s = _schedule()
    assert s.at(0.0) == s.at(9.999) == PhaseState(0, 4, 1.0, 64, 1e-3, 1e-3, 0.0)
    at_8 = s.at(10.0)
    assert (at_8.index, at_8.resolution, at_8.alpha, at_8.batch) == (1, 8, 0.0, 32), at_8
    assert s.at(20.0).alpha == pytest.approx(0.5) and s.at(30.0).alpha == 1.0 and s.at(39.9).resolution == 8
    for kimg, expected in [(40.0, 0.0), (50.0, 0.25), (60.0, 0.5), (80.0, 1.0), (500.0, 1.0)]:
        state = s.at(kimg)
        assert state.resolution == 16 and state.alpha == pytest.approx(expected), (kimg, state)
    assert s.at(55.0).lr_g == 5e-4 and s.at(55.0).batch == 16


def test_schedule_refuses_impossible_phases():
    with pytest.raises(ValueError, match="must double"):
        PhaseSchedule([Phase(4, 0, 1, 8, 1e-3, 1e-3), Phase(16, 1, 1, 8, 1e-3, 1e-3)])
    with pytest.raises(ValueError, match="nothing to fade in"):
        PhaseSchedule([Phase(4, 5, 1, 8, 1e-3, 1e-3)])


@pytest.mark.parametrize("final", [8, 32])
def test_shapes_at_every_phase(final):
    torch.manual_seed(0)
    G, D = (
        Generator(final, z_dim=32, fmap_base=256, fmap_max=32),
        Discriminator(final, fmap_base=256, fmap_max=32),
    )
    z = torch.randn(8, 32)
    for r in G.resolutions:
        for alpha in (0.0, 0.3, 1.0):
            G.set_phase(r, alpha)
            D.set_phase(r, alpha)
            images = G(z)
            assert images.shape == (8, 3, r, r), (r, alpha, images.shape)
            assert D(images).shape == (8,)


def test_alpha_zero_is_the_old_path_and_one_the_new_block_exactly():
    torch.manual_seed(1)
    G, D = Generator(16, z_dim=32, fmap_base=256, fmap_max=32), Discriminator(16, fmap_base=256, fmap_max=32)
    z = torch.randn(4, 32)
    G.set_phase(8, 1.0)
    old = F.interpolate(G(z), scale_factor=2, mode="nearest")
    G.set_phase(16, 0.0)
    assert torch.equal(G(z), old), "G at alpha 0 must be the up-sampled 8x8 output"
    G.set_phase(16, 1.0)
    full = G(z)
    G.set_phase(16, 1e-6)
    assert (G(z) - full).abs().max() > 0 and torch.allclose(G(z), old, atol=1e-4)

    x = torch.randn(4, 3, 16, 16)
    D.set_phase(8, 1.0)
    old_d = D(F.avg_pool2d(x, 2))
    D.set_phase(16, 0.0)
    assert torch.equal(D(x), old_d), "D at alpha 0 must score the down-sampled image with the 8x8 path"
    D.set_phase(16, 1.0)
    assert not torch.equal(D(x), old_d)


def test_pixel_norm_and_minibatch_stddev():
    x = torch.randn(8, 16, 4, 4) * 5
    assert torch.allclose(pixel_norm(x).pow(2).mean(dim=1), torch.ones(8, 4, 4), atol=1e-4)
    y = minibatch_stddev(x, group_size=4)
    assert y.shape == (8, 17, 4, 4)
    groups = x.reshape(4, 2, 16, 4, 4)  # strided groups: sample i joins group i mod 2
    expected = groups.std(dim=0, unbiased=False).mean(dim=(1, 2, 3))
    assert torch.allclose(y[0, 16, 0, 0], expected[0], atol=1e-5) and torch.allclose(
        y[1, 16, 0, 0], expected[1], atol=1e-5
    )


# ----------------------------------------------------------------------------- growing in the trainer

PROGAN = "configs/progan/digits32.yaml"


def _phased(data, run_dir, total_kimg, phases, *extra):
    from bigtrain.config import load_config
    from conftest import REPO

    return load_config(REPO / PROGAN, [f"data.path={data}", f"train.run_dir={run_dir}", "track.enabled=false",
                                       f"train.total_kimg={total_kimg}", f"train.phases={phases}", *extra])  # fmt: skip


def test_a_checkpoint_taken_mid_fade_resumes_identically(demo_shards, tmp_path, capsys):
    from bigtrain.train.loop import Trainer

    phases = "[{resolution: 4, stable_kimg: 0.064, batch: 16}, {resolution: 8, fade_kimg: 0.128, batch: 8}]"
    extra = ["model.resolution=8", "eval.every_kimg=0", "ema.halflife_kimg=0.05"]
    whole = Trainer(_phased(demo_shards, tmp_path / "whole", 0.192, phases, *extra))
    whole.run()
    first = Trainer(_phased(demo_shards, tmp_path / "split", 0.128, phases, *extra))
    first.run()
    stopped = first.schedule.at(first.kimg)
    assert (stopped.resolution, stopped.alpha) == (8, 0.5), stopped  # halfway through the fade-in
    second = Trainer(_phased(demo_shards, tmp_path / "split", 0.192, phases, *extra), resume=True)
    assert second.phase == stopped and second.batch == 8, (second.phase, stopped)
    assert second.loader.resolution == 8 and second.micro_batch == 8
    second.run()
    assert_same_networks(whole, second, "after a mid-fade resume")
    assert whole.opt_g.state_dict()["state"].keys() == second.opt_g.state_dict()["state"].keys()

    from bigtrain.eval.generate import load_generator
    from bigtrain.train.checkpoint import latest_checkpoint

    gen = load_generator(str(latest_checkpoint(tmp_path / "split")))
    z, y = gen.latents(2, 0.0, torch.Generator().manual_seed(0))
    assert gen(z, y).shape == (2, 3, 8, 8), "a checkpoint samples at the resolution its phase reached"
    from bigtrain.cli import main

    checkpoint = latest_checkpoint(tmp_path / "split")
    assert (
        main(["eval", str(checkpoint), "--metrics", "fd", "--num-samples", "64", "--data", str(demo_shards)])
        == 0
    )
    assert "fd_digits_8px" in capsys.readouterr().out, "bigtrain eval does not score an 8x8 phase at 8x8"


@pytest.mark.slow
def test_a_run_across_two_phase_boundaries_lowers_the_frechet_distance(demo_shards, tmp_path):
    """4x4 -> 8x8 -> 16x16 with fade-ins; each evaluation is against the reals at its phase's
    resolution, so the last (16x16) must be closer to its reals than the untrained 4x4 G was to its."""
    from bigtrain.train.loop import Trainer

    lr = "lr_g: 2.0e-3, lr_d: 2.0e-3"
    phases = (f"[{{resolution: 4, stable_kimg: 1.5, batch: 16, {lr}}}, "
              f"{{resolution: 8, fade_kimg: 1.5, stable_kimg: 1.5, batch: 16, {lr}}}, "
              f"{{resolution: 16, fade_kimg: 1.5, stable_kimg: 1.5, batch: 16, {lr}}}]")  # fmt: skip
    trainer = Trainer(
        _phased(
            demo_shards,
            tmp_path / "run",
            9,
            phases,
            "model.resolution=16",
            "eval.every_kimg=9",
            "data.num_workers=0",
        )
    )
    trainer.run()
    first, last = trainer.metric_history[0], trainer.metric_history[-1]
    assert (first["eval_resolution"], last["eval_resolution"]) == (4, 16), (first, last)
    start, end = first["fd_digits_4px"], last["fd_digits_16px"]
    print(f"progan fd_digits_4px at 0 kimg {start:.2f}, fd_digits_16px at 9 kimg {end:.2f}")  # make test-cpus
    assert end < 0.9 * start, f"fd fell only from {start:.2f} (4x4, untrained) to {end:.2f} (16x16)"
    grids = sorted((tmp_path / "run" / "samples").glob("*.png"))
    assert len(grids) == 2, grids


def test_shards_below_the_final_resolution_are_refused_at_load(demo_shards, tmp_path):
    from bigtrain.data.manifest import DataError
    from bigtrain.train.loop import Trainer

    phases = "[{resolution: 32, batch: 16}, {resolution: 64, fade_kimg: 1, batch: 16}]"
    with pytest.raises(DataError, match="64"):
        Trainer(_phased(demo_shards, tmp_path / "run", 1, phases, "model.resolution=64", "eval.every_kimg=0"))


def test_phase_config_errors_name_the_key():
    from bigtrain.config import ConfigError, load_config
    from conftest import REPO

    with pytest.raises(ConfigError, match=r"train\.phases\[1\]\.resolution=32 must double"):
        load_config(
            REPO / PROGAN,
            ["train.phases=[{resolution: 4}, {resolution: 32, fade_kimg: 1}]", "model.resolution=32"],
        )
    with pytest.raises(ConfigError, match="grows to 16, but model.resolution is 32"):
        load_config(REPO / PROGAN, ["train.phases=[{resolution: 8}, {resolution: 16, fade_kimg: 1}]"])
    with pytest.raises(ConfigError, match="train.phases needs a growing model"):
        load_config(REPO / "configs/biggan/digits32.yaml", ["train.phases=[{resolution: 32}]"])
