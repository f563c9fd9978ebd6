"""The classic families (DCGAN, cGAN, SN-GAN, SAGAN, EBGAN, BEGAN) work where the others do, with no
branch for them in the trainer: accumulation, EMA, checkpoints, `bigtrain sample` and `bigtrain eval`
on each digits recipe. Two ranks under DDP and DeepSpeed are in tests/test_two_ranks.py, `bigtrain plan`
and `k8s render` of the families in tests/test_plan.py and tests/test_k8s.py; each family's own file
tests its networks against the reference and its digits recipe's learning."""

import pytest
import torch

from bigtrain.cli import main
from bigtrain.config import load_config
from bigtrain.train.checkpoint import latest_checkpoint
from bigtrain.train.loop import Trainer
from bigtrain.tune.sweep import load_sweep, space_bundles, trial_config
from conftest import REPO

CLASSIC = ["dcgan", "cgan", "sngan", "sagan", "ebgan", "began"]
CONDITIONAL = ["cgan", "sngan"]
# A knob of each family's own section (model.<name>), which a sweep may search like any other key.
SECTION_KNOB = {"dcgan": ("g_ch", [8, 16]), "cgan": ("g_z_units", [100, 200]), "sngan": ("ch", [8, 16]),
                "sagan": ("ch", [8, 16]), "ebgan": ("d_ch", [8, 16]), "began": ("n", [8, 16])}  # fmt: skip  # their digits recipes: `bigtrain sample --classes` picks the rows' digits


@pytest.mark.parametrize("family", CLASSIC)
def test_accumulation_ema_checkpoint_sample_and_eval(family, demo_shards, tmp_path, capsys):
    """Two iterations at train.accum=2 (micro-batches of 4), EMA from the start, the checkpoint, then
    `bigtrain sample` and `bigtrain eval` on it."""
    cfg = load_config(REPO / "configs" / family / "digits32.yaml", [
        f"data.path={demo_shards}", f"train.run_dir={tmp_path / 'run'}", "track.enabled=false",
        "data.num_workers=0", "train.accum=2", "train.batch=8", "eval.every_kimg=0", "ema.start_kimg=0",
        "ema.halflife_kimg=0.01",
    ])  # fmt: skip
    cfg.train.total_kimg = 2 * cfg.train.n_disc_steps * cfg.train.batch / 1000  # two iterations
    trainer = Trainer(cfg)
    assert trainer.micro_batch == 4
    assert trainer.run() == "finished" and trainer.iteration == 2, trainer.iteration
    assert all(torch.isfinite(p).all() for p in trainer.G.parameters()), f"{family}: non-finite G"
    pairs = zip(trainer.ema.model.parameters(), trainer.G.parameters())
    assert any(not torch.equal(e, g) for e, g in pairs), f"{family}: G_ema equals G, EMA did not average"
    checkpoint = latest_checkpoint(tmp_path / "run")
    grid = tmp_path / "grid.png"
    classes = ["--classes", "3,7"] if family in CONDITIONAL else []
    assert (
        main(["sample", str(checkpoint), "--n", "4", "--out", str(grid), "--standing-stats", "2", *classes])
        == 0
    )
    assert grid.stat().st_size > 100, f"{family}: the grid is {grid.stat().st_size} bytes"
    metrics = ["eval", str(checkpoint), "--metrics", "fd", "--num-samples", "64", "--data", str(demo_shards)]
    assert main(metrics) == 0
    assert "fd_digits" in capsys.readouterr().out


@pytest.mark.parametrize("family", CLASSIC)
def test_a_sweep_searches_a_family_s_own_section(family, tmp_path):
    """`bigtrain tune` checks a sweep whole before any trial: a grid over a key of `model.<family>` on the
    family's digits recipe loads, and each trial's config carries its value (trials then train as any
    run does: the sweeps themselves are tested in test_tune.py)."""
    knob, values = SECTION_KNOB[family]
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"base: {REPO / 'configs' / family / 'digits32.yaml'}\n"
        f"space:\n  model.{family}.{knob}: {{grid: {values}}}\nscheduler: fifo\n"
    )
    spec, base = load_sweep(sweep)
    for value in values:
        cfg = trial_config(base, {f"model.{family}.{knob}": value}, [], space_bundles(spec))
        assert (cfg.model.name, getattr(cfg.model.section, knob)) == (family, value), (family, knob, value)
