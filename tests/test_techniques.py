"""Each technique of the objective switched on in every family's digits recipe: it trains, and its state
resumes exactly. A technique's equation is tested on its own in test_objective.py."""

import math

import pytest
import torch

from bigtrain.config import load_config
from bigtrain.models.vbn import VirtualBatchNorm
from bigtrain.train.loop import Trainer
from conftest import REPO, assert_same_networks

# technique -> (the part that shows it is on: a loss's name or a regularizer's title, its overrides)
TECHNIQUES = {
    "minimax": ("minimax", ["loss.name=minimax"]),
    "label_smoothing": ("nonsat", ["loss.name=nonsat", "loss.real_label=0.9"]),
    "lsgan": ("lsgan", ["loss.name=lsgan", "loss.lsgan_a=-1", "loss.lsgan_c=0"]),
    "rasgan": ("rasgan", ["loss.name=rasgan"]),
    "ralsgan": ("ralsgan", ["loss.name=ralsgan"]),
    "rahinge": ("rahinge", ["loss.name=rahinge"]),
    "lecam": ("LeCam", ["regularize.lecam.weight=0.3"]),
    "cr": ("consistency", ["regularize.consistency.real=10"]),
    "bcr": ("consistency", ["regularize.consistency.real=10", "regularize.consistency.fake=10"]),
    "wgan_weight_clip": (
        "weight clipping",
        [
            "loss.name=wgan",
            "regularize.weight_clip.value=0.01",
            "regularize.gradient_penalty.weight=0",
            "regularize.gradient_penalty.drift=0",
            "optim.name=rmsprop",
            "optim.lr_g=5e-5",
            "optim.lr_d=5e-5",
        ],
    ),
    "instance_noise": ("instance noise", ["augment.instance_noise=0.1", "augment.instance_noise_kimg=1"]),
    "minibatch_discrimination": ("minibatch discrimination", ["model.minibatch_kernels=20"]),
    "historical_averaging": (
        "historical averaging of D",
        ["regularize.historical_averaging.g=0.01", "regularize.historical_averaging.d=0.01"],
    ),
    "ada": ("ADA", ["augment.ada=bgc", "augment.ada_kimg=100"]),  # StyleGAN2's R1 runs through the pipeline
    "unrolled": ("unrolled D", ["regularize.unrolled.steps=2"]),
    "zcr": ("latent consistency of D", ["regularize.zcr.dis=5", "regularize.zcr.gen=0.5"]),
    # MRGAN (Che et al. 2017): an encoder, lambda_1 on the mean squared error of G(E(x)), lambda_2 on
    # -log D(G(E(x))) (bigtrain/objective/mode_regularized.py)
    "mrgan": (
        "mode regularizer",
        ["regularize.mode_regularized.geometric=1", "regularize.mode_regularized.mode=0.1"],
    ),
    # f-GAN's Pearson chi^2 row (its GAN row is nonsat's D loss; the rows with exp(v) terms, KL, reverse KL,
    # Neyman, Hellinger, Jeffrey, start near 1e12 on BigGAN's initial D logits)
    "fgan": ("fgan", ["loss.name=fgan", "loss.divergence=pearson"]),
    "replay": ("experience replay", ["regularize.replay.size=256"]),  # 8 of the sweep's batches of 32
    # The paper's recipe: RMSProp (its code: TF's, decay 0.9), lr 1e-4, gamma 10 (ProGAN's phases keep their lr).
    "consensus": (
        "consensus optimization of D",
        [
            "regularize.consensus.gamma=10",
            "optim.name=rmsprop",
            "optim.beta2=0.9",
            "optim.lr_g=1e-4",
            "optim.lr_d=1e-4",
        ],
    ),  # fmt: skip
    "feature_matching": ("feature matching", ["regularize.feature_matching.weight=0.1"]),
    "feature_matching_alone": (
        "feature matching",
        ["regularize.feature_matching.weight=1", "regularize.feature_matching.replace=true"],
    ),
    # The digits are conditional (10 classes); ProGAN's G then takes the label, as its paper's code.
    "aux_classifier": (
        "auxiliary classifier (D)",
        ["model.aux_classifier=true", "regularize.aux_classifier.weight=1"],
    ),
    # InfoGAN's MNIST codes (Chen et al. 2016): a 10-way categorical and two continuous ones beside z
    "infogan": ("InfoGAN (D)", ["regularize.info.categorical=[10]", "regularize.info.continuous=2"]),
    # Salimans et al.'s semi-supervised GAN: D's class head as K of K + 1 classes, 10 labelled digits per
    # class, G by feature matching alone (ProGAN's G takes the label with the head: random, read by no loss).
    "semi_supervised": (
        "semi-supervised GAN",
        [
            "model.aux_classifier=true",
            "regularize.semi_supervised.weight=1",
            "data.labelled_per_class=10",
            "loss.name=nonsat",
            "regularize.feature_matching.weight=1",
            "regularize.feature_matching.replace=true",
        ],
    ),  # fmt: skip
}
# Techniques of some families only, switched on in the BigGAN digits recipe (the sweep's base) alone; as above.
BIGGAN_TECHNIQUES = {
    # G's BatchNorms made virtual (models/vbn.py): StyleGAN2 and ProGAN have none in G
    "vbn": ("virtual batch norm", ["model.vbn=32"]),
}
# ADA's p moved every D step, 0.016 at a time, from 0.5: a short run sees it move both ways (sweeps keep
# the technique's own settings above).
ADA_MOVING = ["augment.ada_p=0.5", "augment.ada_interval=1", "augment.ada_kimg=1"]
# Replay's buffer shrunk to one D step's fakes, so that the second D step replays (256: still filling).
REPLAY_FULL = ["regularize.replay.size=16"]
RECIPES = ["biggan/digits32.yaml", "stylegan2/digits32.yaml", "progan/digits32.yaml"]
BATCH = 16


def _cfg(recipe, data, run_dir, iterations, *extra):
    return load_config(REPO / "configs" / recipe, [
        f"data.path={data}", f"train.run_dir={run_dir}", "track.enabled=false", "eval.every_kimg=0",
        f"train.batch={BATCH}", "data.num_workers=0", f"train.total_kimg={iterations * BATCH / 1000}", *extra,
    ])  # fmt: skip


def _parts_on(trainer) -> list[str]:
    """The names of what is on in a trainer: the loss, the regularizers' titles, the rest by name."""
    parts = [trainer.objective.loss.name, *(r.title for r in trainer.objective.regularizers)]
    parts += ["instance noise"] if trainer.cfg.augment.instance_noise else []
    parts += ["minibatch discrimination"] if trainer.D.minibatch is not None else []
    parts += ["ADA"] if trainer.ada is not None else []
    parts += (
        ["virtual batch norm"] if any(isinstance(m, VirtualBatchNorm) for m in trainer.G.modules()) else []
    )
    return parts


@pytest.mark.parametrize("recipe", [RECIPES[0]])
@pytest.mark.parametrize("technique", BIGGAN_TECHNIQUES)
def test_a_biggan_only_technique_trains_two_iterations(demo_shards, tmp_path, recipe, technique):
    title, overrides = BIGGAN_TECHNIQUES[technique]
    trainer = Trainer(_cfg(recipe, demo_shards, tmp_path, 2, *overrides))
    assert title in _parts_on(trainer), f"{technique} is not on in {recipe}: {_parts_on(trainer)}"
    assert trainer.run() == "finished" and trainer.iteration == 2, f"{recipe} with {technique} stopped early"
    metrics = trainer.log_metrics(elapsed=1.0, images=2 * BATCH)
    losses = {k: metrics[k] for k in ("loss_d", "loss_g")}
    assert all(math.isfinite(v) for v in losses.values()), f"{recipe} with {technique}: {losses}"


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("technique", TECHNIQUES)
def test_a_technique_trains_two_iterations_in_every_family(demo_shards, tmp_path, recipe, technique):
    title, overrides = TECHNIQUES[technique]
    overrides = overrides + {"ada": ADA_MOVING, "replay": REPLAY_FULL}.get(technique, [])
    trainer = Trainer(_cfg(recipe, demo_shards, tmp_path, 2, *overrides))
    parts = _parts_on(trainer)
    assert title in parts, f"{technique} is not on in {recipe}: {parts}"
    assert trainer.run() == "finished" and trainer.iteration == 2, f"{recipe} with {technique} stopped early"
    metrics = trainer.log_metrics(elapsed=1.0, images=2 * BATCH)  # the mean over the two iterations
    losses = {k: metrics[k] for k in ("loss_d", "loss_g")}
    assert all(math.isfinite(v) for v in losses.values()), f"{recipe} with {technique}: {losses}"
    if technique == "ada":  # p is logged (to MLflow when tracking is on) and moved from its start
        assert metrics["ada_p"] != 0.5 and abs(metrics["ada_p"] - 0.5) <= 2 * 0.016 + 1e-6, metrics["ada_p"]
    if technique == "replay":  # the second D step's fakes partly came from the buffer (logged)
        assert 0 < metrics["replay_fraction"] <= 0.5, metrics["replay_fraction"]


def test_stateful_techniques_resume_exactly(demo_shards, tmp_path):
    """LeCam's anchors, the historical averages and ADA's p are checkpoint state."""
    on = TECHNIQUES["lecam"][1] + TECHNIQUES["historical_averaging"][1] + TECHNIQUES["ada"][1] + ADA_MOVING
    whole = Trainer(_cfg(RECIPES[0], demo_shards, tmp_path / "whole", 4, *on))
    whole.run()
    Trainer(_cfg(RECIPES[0], demo_shards, tmp_path / "split", 2, *on)).run()
    resumed = Trainer(_cfg(RECIPES[0], demo_shards, tmp_path / "split", 4, *on), resume=True)
    resumed.run()
    assert_same_networks(whole, resumed, "with LeCam on")
    (a,), (b,) = ([r for r in t.objective.regularizers if r.title == "LeCam"] for t in (whole, resumed))
    assert a.updates == b.updates == 4 and a.ema.equal(b.ema), (a.updates, b.updates, a.ema, b.ema)
    for network in ("g", "d"):
        (a,), (b,) = (
            [r for r in t.objective.on(network) if r.title.startswith("historical")] for t in (whole, resumed)
        )
        assert a.count == b.count == 5 and all(x.equal(b.average[n]) for n, x in a.average.items()), network
    assert whole.ada.steps == resumed.ada.steps == 4 and whole.ada.p.equal(resumed.ada.p), (
        whole.ada.p,
        resumed.ada.p,
    )


def _after_one_g_step(data, run_dir, *overrides) -> dict:
    """G's weights after one G step of a fresh BigGAN digits trainer (same seed: same G, D, data, z)."""
    trainer = Trainer(_cfg(RECIPES[0], data, run_dir, 1, *overrides))
    trainer.D.requires_grad_(False)
    trainer._g_step([trainer._real()])
    return {name: p.detach().clone() for name, p in trainer.G.named_parameters()}


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)


def test_feature_matching_alone_trains_g_on_its_term_only(demo_shards, tmp_path):
    """Feature matching alone (the paper's form): G's step is the same whatever the adversarial loss,
    which it then does not train on; added to the loss, it is not."""
    fm, alone = ["regularize.feature_matching.weight=1"], ["regularize.feature_matching.replace=true"]
    steps = {}
    for loss in ("hinge", "nonsat"):
        for replace in (False, True):
            overrides = [f"loss.name={loss}", *fm, *(alone if replace else [])]
            steps[loss, replace] = _after_one_g_step(demo_shards, tmp_path / f"{loss}{replace}", *overrides)
    assert _same(steps["hinge", True], steps["nonsat", True]), "feature matching alone depends on loss.name"
    assert not _same(steps["hinge", False], steps["nonsat", False]), "G's step ignores the adversarial loss"
    assert not _same(steps["hinge", False], steps["hinge", True]), "replace=true changed nothing"


def test_aux_classifier_term_reaches_g_s_step(demo_shards, tmp_path):
    """AC-GAN's cross-entropy on the fakes is part of G's loss: its weight changes G's step."""
    ac = "model.aux_classifier=true"
    weights = [
        _after_one_g_step(demo_shards, tmp_path / f"ac{w}", ac, f"regularize.aux_classifier.weight={w}")
        for w in (1, 2)
    ]
    assert not _same(*weights), "AC-GAN's weight does not reach G's step"
