"""Virtual batch normalization in G (Salimans et al. 2016, section 3.4; bigtrain/models/vbn.py): the
paper's per-example statistics, an example's independence of its batch mates, the families that have
BatchNorm in G, training with accumulation (two ranks: tests/test_two_ranks.py), and the reference batch across a resume."""

import copy
import math

import pytest
import torch
from torch import nn

from bigtrain.config import ConfigError, load_config
from bigtrain.eval.generate import load_generator
from bigtrain.interop import export_checkpoint
from bigtrain.interop.common import WeightsError
from bigtrain.models import FAMILIES, build_models
from bigtrain.models.layers import frozen_state
from bigtrain.models.vbn import VirtualBatchNorm
from bigtrain.train.loop import Trainer
from conftest import REPO, assert_same_networks

BATCH = 16
REF = 8  # the tests' reference batch (the paper's is the minibatch size)


def _recipe(recipe: str, *overrides: str):
    return load_config(REPO / "configs" / recipe, list(overrides))


def _train_cfg(recipe, data, run_dir, iterations, *extra):
    return _recipe(
        recipe, f"data.path={data}", f"train.run_dir={run_dir}", "track.enabled=false", "eval.every_kimg=0",
        f"train.batch={BATCH}", "data.num_workers=0", f"train.total_kimg={iterations * BATCH / 1000}",
        f"model.vbn={REF}", *extra,
    )  # fmt: skip


# --------------------------------------------------------------------------- the layer


def test_an_example_is_normalized_by_the_papers_formula_on_a_tiny_tensor():
    """One channel, 2 x 1 pixels; reference rows (1, 3) and (5, 7), the example (0, 2). By hand:
    mu_R = 4, E_R[a^2] = (1 + 9 + 25 + 49) / 4 = 21; mu_x = 1, E_x[a^2] = 2; with weights 1/3 and 2/3,
    mu = 1/3 + 8/3 = 3 and E[a^2] = 2/3 + 42/3 = 44/3, so sigma^2 = 44/3 - 9 = 17/3 (the six values
    0..7 pooled: one more member of the reference batch). The reference rows: (a - 4) / sqrt(21 - 16).
    Then gamma 2, beta 0.5. A (B, F) input: an example's statistics are its own value."""
    eps = 1e-5
    vbn = VirtualBatchNorm(1, reference=2, eps=eps)
    x = torch.tensor([1.0, 3.0, 5.0, 7.0, 0.0, 2.0]).view(3, 1, 2, 1)
    want_example = torch.tensor([0.0 - 3.0, 2.0 - 3.0]) / math.sqrt(17 / 3 + eps)
    want_reference = (torch.tensor([1.0, 3.0, 5.0, 7.0]) - 4.0) / math.sqrt(5 + eps)
    got = vbn(x).flatten()
    assert torch.allclose(got[4:], want_example, atol=1e-6), (got[4:], want_example)
    assert torch.allclose(got[:4], want_reference, atol=1e-6), (got[:4], want_reference)

    affine = VirtualBatchNorm(1, 2, eps, nn.Parameter(torch.tensor([2.0])), nn.Parameter(torch.tensor([0.5])))
    got = affine(x).flatten()[4:]
    assert torch.allclose(got, 2.0 * want_example + 0.5, atol=1e-6), (got, 2.0 * want_example + 0.5)

    # (B, F): reference 1, 3 (mu_R 2, E_R[a^2] 5); the example 5: mu = 5/3 + 4/3 = 3, E[a^2] = 25/3 + 10/3
    flat = VirtualBatchNorm(1, reference=2, eps=eps)(torch.tensor([[1.0], [3.0], [5.0]]))
    want = (5.0 - 3.0) / math.sqrt(35 / 3 - 9 + eps)
    assert abs(flat[2, 0].item() - want) < 1e-6, (flat[2, 0].item(), want)
    with pytest.raises(ValueError, match="reference batch"):
        vbn(x[:2])  # the reference rows alone: no example


# --------------------------------------------------------------------------- in the families' G

# The families whose G has BatchNorm, small; SN-GAN's standard CNN has a BatchNorm1d on features.
BN_FAMILIES = {
    "biggan": ("biggan/digits32.yaml", []),
    "dcgan": ("dcgan/digits32.yaml", []),
    "sngan_resnet": ("sngan/digits32.yaml", []),
    "sngan_standard_cnn": ("sngan/digits32.yaml", ["model.sngan.arch=standard_cnn", "model.sngan.ch=32"]),
    "sagan": ("sagan/digits32.yaml", ["model.sagan.ch=8"]),
    "ebgan": ("ebgan/digits32.yaml", ["model.ebgan.g_ch=8"]),
}


def _first_example_with_other_batch_mates(G: nn.Module, z_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """G's output for example 0 in two batches of 6 that share only example 0 (SN and BN state frozen)."""
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(6, z_dim, generator=g), torch.randint(0, 10, (6,), generator=g)
    z2, y2 = z.clone(), y.clone()
    z2[1:], y2[1:] = 3.0 * torch.randn(5, z_dim, generator=g), torch.randint(0, 10, (5,), generator=g)
    with torch.no_grad(), frozen_state(G, batchnorm=True):
        return G(z, y)[0], G(z2, y2)[0]


@pytest.mark.parametrize("family", BN_FAMILIES)
def test_an_example_s_output_does_not_depend_on_its_batch_mates_and_does_with_plain_batchnorm(family):
    """In training mode (BN on batch statistics), G's image for one example with other batch mates:
    equal with VBN (measured: bit-identical in all six; bar 1e-5 for float rounding elsewhere), different
    with plain BN (measured: 0.21 (EBGAN) to 1.47 (SN-GAN ResNet); bar 1e-3). G_ema's copy (eval mode)
    gives VBN's training output (measured: identical)."""
    recipe, overrides = BN_FAMILIES[family]
    for vbn in (REF, 0):
        cfg = _recipe(recipe, f"model.vbn={vbn}", *overrides)
        torch.manual_seed(0)
        G, _ = build_models(cfg.model, 10)
        G.train()
        a, b = _first_example_with_other_batch_mates(G, cfg.model.z_dim)
        diff = (a - b).abs().max().item()
        if vbn:
            assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in G.modules()), (
                "a BN is left"
            )
            assert diff < 1e-5, f"{family} with VBN: example 0 moved by {diff:.3g} with other batch mates"
            ema = copy.deepcopy(G).eval()
            c, _ = _first_example_with_other_batch_mates(ema, cfg.model.z_dim)
            assert (c - a).abs().max() < 1e-5, f"{family}: G_ema's VBN differs by {(c - a).abs().max():.3g}"
        else:
            assert diff > 1e-3, f"{family} with plain BN: example 0 moved only {diff:.3g}"


@pytest.mark.parametrize("family", ["progan", "stylegan2", "cgan", "began"])
def test_families_without_batchnorm_in_g_refuse_it(family):
    cfg = _recipe(f"{family}/digits32.yaml", f"model.vbn={REF}")
    with pytest.raises(ConfigError, match=rf"model\.vbn={REF}: {family}'s G has no BatchNorm"):
        build_models(cfg.model, 10)


def test_bad_values_name_the_key():
    for overrides, message in [
        (["model.vbn=-1"], r"model\.vbn=-1 must be"),
        ([f"model.vbn={REF}", "dist.sync_bn=true"], r"model\.vbn=8 and dist\.sync_bn=true"),
    ]:
        with pytest.raises(ConfigError, match=message):
            _recipe("biggan/digits32.yaml", *overrides)


def test_off_the_networks_and_the_random_stream_are_those_of_before():
    """model.vbn=0 builds the family's G as it is: the same tensors, no hook, the global generator where
    the family's build leaves it."""
    cfg = _recipe("biggan/digits32.yaml")
    assert cfg.model.vbn == 0
    torch.manual_seed(3)
    G, D = build_models(cfg.model, 10)
    after = torch.rand(1)
    torch.manual_seed(3)
    G0, D0 = FAMILIES["biggan"].build(cfg.model, 10)
    assert torch.equal(after, torch.rand(1)), "building drew more random numbers"
    for a, b in ((G, G0), (D, D0)):
        assert a.state_dict().keys() == b.state_dict().keys()
        assert all(torch.equal(x, b.state_dict()[k]) for k, x in a.state_dict().items())
    assert not G._forward_pre_hooks and not G._forward_hooks, "a hook on G with VBN off"


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("recipe", ["dcgan/digits32.yaml", "biggan/digits32.yaml"])
def test_trains_two_iterations_with_accumulation(demo_shards, tmp_path, recipe):
    trainer = Trainer(_train_cfg(recipe, demo_shards, tmp_path, 2, "train.accum=2"))
    vbns = [m for m in trainer.G.modules() if isinstance(m, VirtualBatchNorm)]
    assert vbns and all(m.reference == REF for m in vbns), "G's BatchNorms are not virtual"
    assert trainer.run() == "finished" and trainer.iteration == 2
    metrics = trainer.log_metrics(elapsed=1.0, images=2 * BATCH)
    losses = {k: metrics[k] for k in ("loss_d", "loss_g")}
    assert all(math.isfinite(v) for v in losses.values()), f"{recipe} with VBN: {losses}"


def test_resume_is_exact_and_the_reference_batch_comes_from_the_checkpoint(demo_shards, tmp_path):
    """4 iterations straight and 2 + 2 with a resume: every tensor the same (the reference batch's z and
    labels in G and G_ema included). Resumed under another train.seed, whose own draw differs, G and
    G_ema still hold the checkpoint's reference batch; `bigtrain sample`'s G_ema from the checkpoint
    holds it too and samples as the trainer's G_ema does; `bigtrain export` refuses VBN."""
    recipe = "biggan/digits32.yaml"
    whole = Trainer(_train_cfg(recipe, demo_shards, tmp_path / "whole", 4))
    whole.run()
    Trainer(_train_cfg(recipe, demo_shards, tmp_path / "split", 2)).run()
    resumed = Trainer(_train_cfg(recipe, demo_shards, tmp_path / "split", 4), resume=True)
    resumed.run()
    assert_same_networks(whole, resumed, "with VBN on")

    saved = whole.G.vbn_reference
    fresh = Trainer(_train_cfg(recipe, demo_shards, tmp_path / "other", 4, "train.seed=5"))
    assert not torch.equal(fresh.G.vbn_reference.z, saved.z), "another seed drew the same reference batch"
    reseeded = Trainer(_train_cfg(recipe, demo_shards, tmp_path / "whole", 6, "train.seed=5"), resume=True)
    for net in (reseeded.G, reseeded.ema.model):
        assert torch.equal(net.vbn_reference.z, saved.z) and torch.equal(net.vbn_reference.y, saved.y)

    sampler = load_generator(str(tmp_path / "whole"))
    assert torch.equal(sampler.G.vbn_reference.z, saved.z)
    z, y = torch.randn(4, whole.cfg.model.z_dim), torch.arange(4)
    with torch.no_grad():
        want = whole.ema.model(z, y)
    got = sampler(z, y)
    assert (got - want).abs().max() < 1e-6, f"the sampled G_ema differs by {(got - want).abs().max():.3g}"
    with pytest.raises(WeightsError, match="virtual batch normalization"):
        export_checkpoint(str(tmp_path / "whole"), "biggan-pytorch", tmp_path / "export")
