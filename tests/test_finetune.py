"""Fine-tuning from existing weights (train.init_from) and FreezeD (model.freeze_d)."""

import copy
import logging
import re
import shutil
import subprocess

import pytest
import torch

from bigtrain.checksums import file_digest
from bigtrain.config import ConfigError, load_config, to_dict
from bigtrain.models import build_models
from bigtrain.train.checkpoint import (
    STATE_FILE,
    begin_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from bigtrain.train.ema import ema_beta
from bigtrain.train.init_from import init_networks
from bigtrain.train.loop import Trainer
from conftest import PYTHON, REPO, assert_same_networks, cli_env

RECIPES = {"biggan": REPO / "configs" / "biggan" / "digits32.yaml", "stylegan2": REPO / "configs" / "stylegan2" / "digits32.yaml"}  # fmt: skip
# Narrow networks, so that a few iterations take a second or two.
NARROW = {
    "biggan": [],
    "stylegan2": [
        "model.stylegan2.fmap_base=256",
        "model.stylegan2.fmap_max=16",
        "model.stylegan2.w_dim=32",
        "model.z_dim=32",
    ],
}


def _cfg(family, data, run_dir, *extra):
    return load_config(RECIPES[family], [f"data.path={data}", f"train.run_dir={run_dir}", "track.enabled=false",
                                         "eval.every_kimg=0", "train.batch=8", "data.num_workers=0",
                                         *NARROW[family], *extra])  # fmt: skip


def _states(trainer) -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: {k: v.clone() for k, v in net.state_dict().items()}
        for name, net in (("G", trainer.G), ("D", trainer.D), ("G_ema", trainer.ema.model))
    }


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, demo_shards):
    """A tiny BigGAN run on the digits (10 classes), 2 iterations: the weights to fine-tune from."""
    run = tmp_path_factory.mktemp("source") / "run"
    Trainer(_cfg("biggan", demo_shards, run, "train.total_kimg=0.016", "train.seed=3")).run()
    return run


def test_init_from_starts_a_new_run_from_the_sources_weights(demo_shards, source_run, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    ckpt = latest_checkpoint(source_run)
    source = load_checkpoint(ckpt)
    trainer = Trainer(_cfg("biggan", demo_shards, tmp_path / "new", f"train.init_from={source_run}"))
    for name, state in _states(trainer).items():
        assert state.keys() == source[name].keys()
        for key, value in state.items():
            assert torch.equal(value, source[name][key]), f"{name}.{key} is not the source's"
    assert trainer.opt_g.state_dict()["state"] == {} and trainer.opt_d.state_dict()["state"] == {}
    assert trainer.images == 0 and trainer.iteration == 0 and trainer.g_inputs.draws == 0
    record = {"path": str(ckpt.resolve()), "sha256": file_digest(ckpt / STATE_FILE)}
    assert trainer.init_from == record
    assert "EMA ramp-up off" in caplog.text
    # The state.pt and the checkpoint folder name the same source.
    G, D = build_models(trainer.cfg.model, 10)
    for path in (ckpt, ckpt / STATE_FILE):
        assert init_networks(str(path), {"G": G, "D": D, "G_ema": copy.deepcopy(G)}, 10, "biggan") == record
    # EMA ramp-up off (the recipe's ema.rampup 0.05 would make G_ema a copy of G at 0.008 kimg).
    before = next(trainer.ema.model.parameters()).clone()
    trainer.train_step()
    beta = ema_beta(8, trainer.cfg.ema.halflife_kimg, trainer.kimg, 0.0)
    assert beta > 0.9
    torch.testing.assert_close(
        next(trainer.ema.model.parameters()), before.lerp(next(trainer.G.parameters()), 1 - beta)
    )
    assert trainer.save() is not None
    assert load_checkpoint(tmp_path / "new")["init_from"] == record


def test_init_from_a_missing_path_is_one_clear_error(demo_shards, tmp_path):
    missing = tmp_path / "nothing-here"
    with pytest.raises(ConfigError, match=rf"^train.init_from={missing} does not exist \(give a checkpoint"):
        Trainer(_cfg("biggan", demo_shards, tmp_path / "new", f"train.init_from={missing}"))


def _five_class_source(run_dir, cfg, num_classes: int = 5, with_d: bool = True):
    """A checkpoint of networks built by hand for `num_classes` classes (seed 11)."""
    torch.manual_seed(11)
    G, D = build_models(cfg.model, num_classes)
    state = {"G": G.state_dict(), "G_ema": G.state_dict(), "num_classes": num_classes, "config": to_dict(cfg)}
    if with_d:
        state["D"] = D.state_dict()
    begin_checkpoint(run_dir, "step-00000001")
    save_checkpoint(run_dir, "step-00000001", state, to_dict(cfg))
    return state


@pytest.mark.parametrize("source_classes", [5, 1])
def test_another_class_count_rebuilds_exactly_the_class_tensors(
    demo_shards, tmp_path, caplog, source_classes
):
    """5 classes (or unconditional) -> the digits' 10: BigGAN's shared embedding (and, from an
    unconditional G, the conditional BNs' gain and bias maps, whose input then lacks the embedding) and
    D's projection embedding are as built, named in one warning; every other tensor is the source's."""
    cfg = _cfg("biggan", demo_shards, tmp_path / "new", f"train.init_from={tmp_path / 'src'}")
    source = _five_class_source(tmp_path / "src", cfg, source_classes)
    torch.manual_seed(cfg.train.seed)
    built_G, built_D = build_models(cfg.model, 10)
    built = {"G": built_G.state_dict(), "G_ema": built_G.state_dict(), "D": built_D.state_dict()}
    caplog.set_level(logging.WARNING)
    trainer = Trainer(cfg)
    class_keys = {"G": r"shared\.", "G_ema": r"shared\.", "D": r"embed\."}
    if source_classes == 1:
        class_keys["G"] = class_keys["G_ema"] = r"shared\.|blocks\.\d+\.bn\d\.(gain|bias)\."
    expected = {f"{n}.{k}" for n, state in built.items() for k in state if re.match(class_keys[n], k)}
    # uncond.: G's 3 blocks x 2 BNs x gain, bias x (weight, u, v), twice (G, G_ema)
    assert len(expected) == (5 if source_classes == 5 else 5 + 2 * 3 * 2 * 2 * 3), sorted(expected)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    named = set(warnings[0].split("tensors ")[1].split(" start as built")[0].split(", "))
    assert named == expected, sorted(named ^ expected)
    for name, state in _states(trainer).items():
        for key, value in state.items():
            want = built[name][key] if f"{name}.{key}" in expected else source[name][key]
            assert torch.equal(value, want), f"{name}.{key}"


def test_a_shape_difference_outside_the_class_tensors_is_a_config_error(demo_shards, source_run, tmp_path):
    with pytest.raises(
        ConfigError, match=r"^train.init_from=.*: G\.linear\.bias has shape \(512,\) there and \(1024,\) in this run's model \("
    ):  # fmt: skip
        Trainer(
            _cfg(
                "biggan", demo_shards, tmp_path / "new", f"train.init_from={source_run}", "model.biggan.ch=16"
            )
        )


def test_a_source_without_d_leaves_d_as_built(demo_shards, tmp_path, caplog):
    cfg = _cfg("stylegan2", demo_shards, tmp_path / "new")
    source = _five_class_source(tmp_path / "src", cfg, 10, with_d=False)
    torch.manual_seed(0)
    G, D = build_models(cfg.model, 10)
    G_ema, D_built = copy.deepcopy(G), copy.deepcopy(D.state_dict())
    caplog.set_level(logging.INFO)
    init_networks(str(tmp_path / "src"), {"G": G, "D": D, "G_ema": G_ema}, 10, "stylegan2")
    assert "has no D weights: D starts as built" in caplog.text
    assert all(torch.equal(v, D_built[k]) for k, v in D.state_dict().items())
    assert all(torch.equal(v, source["G"][k]) for k, v in G_ema.state_dict().items())


@pytest.mark.parametrize(
    "family, extra",
    [("stylegan2", []), ("biggan", ["regularize.unrolled.steps=1"])],  # BigGAN: SN everywhere, and the unroll
)
def test_freeze_d_keeps_the_first_blocks_bit_identical(demo_shards, tmp_path, family, extra):
    trainer = Trainer(_cfg(family, demo_shards, tmp_path / "run", "model.freeze_d=2", *extra))
    frozen = trainer.D.input_blocks()[:2]
    frozen_ids = {id(t) for block in frozen for t in [*block.parameters(), *block.buffers()]}
    start = {k: v.detach().clone() for k, v in trainer.D.state_dict(keep_vars=True).items()}
    assert frozen_ids and all(id(v) in frozen_ids or v.requires_grad for v in trainer.D.parameters())
    in_optimizer = {id(p) for group in trainer.opt_d.param_groups for p in group["params"]}
    assert not in_optimizer & frozen_ids
    assert in_optimizer == {id(p) for p in trainer.D.parameters() if id(p) not in frozen_ids}
    for _ in range(3):  # the first G step and R1's lazy step included
        trainer.train_step()
    moved = []
    for key, value in trainer.D.state_dict(keep_vars=True).items():
        if id(value) in frozen_ids:
            assert torch.equal(value, start[key]), f"frozen D.{key} changed"
            assert not value.requires_grad and value.grad is None, f"frozen D.{key} has a gradient"
        elif isinstance(value, torch.nn.Parameter):
            moved.append(not torch.equal(value, start[key]))
    assert all(moved) and len(moved) > 5, f"{moved.count(False)} of D's trainable tensors did not move"
    # The G step's D.requires_grad_(False) / (True) gave back the trainable part only; D.train() keeps
    # the frozen blocks in eval mode (spectral norm paused).
    assert all(p.requires_grad for p in trainer.D.parameters() if id(p) not in frozen_ids)
    trainer.D.train()
    layers = [m for block in frozen for m in block.modules() if not isinstance(m, torch.nn.ModuleList)]
    assert layers and not any(m.training for m in layers)  # (a grouping ModuleList is made per call)
    if family == "biggan":  # the power iteration runs in the other blocks only
        assert not torch.equal(
            trainer.D.blocks[2].conv1.parametrizations.weight[0]._u,
            start["blocks.2.conv1.parametrizations.weight.0._u"],
        )
    with pytest.raises(ConfigError, match=r"model.freeze_d=5 but this D has \d blocks"):
        Trainer(_cfg(family, demo_shards, tmp_path / "bad", "model.freeze_d=5"))


def _split_run_equals_whole(family, data, tmp_path, args, before_resume=lambda: None) -> None:
    """4 iterations straight against 2, stop, `before_resume()`, --resume, 2 more: the same weights and
    data position."""
    whole = Trainer(_cfg(family, data, tmp_path / "whole", "train.total_kimg=0.032", *args))
    whole.run()
    Trainer(_cfg(family, data, tmp_path / "split", "train.total_kimg=0.016", *args)).run()
    before_resume()
    second = Trainer(_cfg(family, data, tmp_path / "split", "train.total_kimg=0.032", *args), resume=True)
    assert second.iteration == 2 and second.init_from == whole.init_from
    second.run()
    assert second.iteration == whole.iteration == 4
    assert_same_networks(whole, second)
    assert second.loader.state_dict() == whole.loader.state_dict()


def test_a_fine_tuning_run_resumes_exactly(demo_shards, source_run, tmp_path):
    """init_from + freeze_d, split and resumed: the same weights. The source is gone before the resume:
    a checkpoint in the run folder wins over train.init_from."""
    source = tmp_path / "source"
    shutil.copytree(source_run, source)
    args = [f"train.init_from={source}", "model.freeze_d=2"]
    _split_run_equals_whole(
        "biggan", demo_shards, tmp_path, args, before_resume=lambda: shutil.rmtree(source)
    )


def test_two_ddp_ranks_with_frozen_d_blocks(tmp_path):
    """Two torchrun ranks (gloo): DDP takes the frozen blocks out of its buckets (it would stop on a
    parameter that needs a gradient and gets none); the ranks end equal and the frozen blocks as built."""
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "scripts" / "train_rank.py"), str(tmp_path), "1", "3", "model.freeze_d=2"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for key in r0:
        assert torch.equal(r0[key], r1[key]), f"{key} differs between the two ranks"
    cfg = load_config(RECIPES["biggan"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the script: the orthogonal initialization rounds by thread count
    try:
        torch.manual_seed(cfg.train.seed)
        _, D = build_models(cfg.model, 10)
    finally:
        torch.set_num_threads(threads)
    frozen = [k for k in D.state_dict() if k.startswith(("blocks.0.", "attention.0.", "blocks.1."))]
    assert len(frozen) > 10
    for key in frozen:
        assert torch.equal(r0[f"D.{key}"], D.state_dict()[key]), f"frozen D.{key} changed"
    assert not torch.equal(r0["D.blocks.2.conv1.parametrizations.weight.original"], D.state_dict()["blocks.2.conv1.parametrizations.weight.original"])  # fmt: skip


# The tiny stylegan2-ada-pytorch snapshot written by its own code (tests/data/reference_formats), and
# the StyleGAN2 digits recipe set to its architecture (what its recipe.yaml header lists).
SNAPSHOT = REPO / "tests/data/reference_formats/sg2ada-cond32/network-snapshot-000012.pkl"
SNAPSHOT_MODEL = ["model.stylegan2.fmap_base=128", "model.stylegan2.fmap_max=16", "model.z_dim=32", "model.stylegan2.w_dim=32",
                  "model.stylegan2.mapping_layers=2", "model.stylegan2.mbstd_group=4", "model.stylegan2.conv_clamp=256"]  # fmt: skip
FINE_TUNE_KIMG = 2
# fd_digits of the imported (random-weight) snapshot and after 2 kimg of fine-tuning, freeze_d=2,
# measured over train.seed 0-2 x {ATEN default 1 thread, avx2 2 threads} (AMD EPYC Zen 3): from
# 65,906-66,206 to 17,367-18,664, end/start 0.26 to 0.28; the test runs seed 0.
FD_RATIO_BAR = 0.5


def test_fine_tuning_an_imported_snapshot_on_the_digits(demo_shards, tmp_path):
    """`bigtrain import` a snapshot, then `train.init_from` it with `model.freeze_d=2`: D's first two
    blocks end bit-identical to the imported ones, the rest of D and G moved, and fd_digits falls."""
    from bigtrain.interop import import_weights

    imported = import_weights(str(SNAPSHOT), tmp_path / "imported")
    cfg = load_config(RECIPES["stylegan2"], [
        f"data.path={demo_shards}", f"train.run_dir={tmp_path / 'run'}", "track.enabled=false",
        "data.num_workers=0", f"train.init_from={imported}", "model.freeze_d=2", *SNAPSHOT_MODEL,
        f"train.total_kimg={FINE_TUNE_KIMG}", f"eval.every_kimg={FINE_TUNE_KIMG}", "eval.num_samples=500",
    ])  # fmt: skip
    trainer = Trainer(cfg)
    source = load_checkpoint(imported)
    frozen = _names_in(trainer.D, trainer.D.input_blocks()[:2])
    assert frozen and all(torch.equal(v, source["D"][k]) for k, v in trainer.D.state_dict().items())
    trainer.run()
    end = trainer.D.state_dict()
    changed = {k for k, v in end.items() if not torch.equal(v, source["D"][k])}
    assert not frozen & changed, f"frozen D tensors changed: {sorted(frozen & changed)[:4]}"
    trainable = {k for k, p in trainer.D.named_parameters() if p.requires_grad}
    assert trainable and trainable <= changed, (
        f"trainable D tensors that did not move: {sorted(trainable - changed)[:4]}"
    )
    assert any(not torch.equal(v, source["G"][k]) for k, v in trainer.G.state_dict().items())
    start, after = trainer.metric_history[0]["fd_digits"], trainer.metric_history[-1]["fd_digits"]
    print(f"fine-tuned snapshot fd_digits at 0 kimg {start:.2f}, at {FINE_TUNE_KIMG} kimg {after:.2f}")
    assert after < FD_RATIO_BAR * start, (
        f"fd_digits went from {start:.2f} to {after:.2f}; expected below {FD_RATIO_BAR * start:.2f}"
    )


def _names_in(net, blocks) -> set[str]:
    """The state-dict names in `net` of every parameter and buffer of `blocks` (modules, or groups of them)."""
    ids = {id(v) for block in blocks for v in block.state_dict(keep_vars=True).values()}
    return {k for k, v in net.state_dict(keep_vars=True).items() if id(v) in ids}


def test_fine_tuning_an_imported_snapshot_resumes_exactly(demo_shards, tmp_path):
    """The same from a snapshot `bigtrain import` wrote."""
    from bigtrain.interop import import_weights

    imported = import_weights(str(SNAPSHOT), tmp_path / "imported")
    args = [f"train.init_from={imported}", "model.freeze_d=2", *SNAPSHOT_MODEL]
    _split_run_equals_whole("stylegan2", demo_shards, tmp_path, args)
