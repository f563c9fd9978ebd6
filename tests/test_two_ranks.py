"""Two torchrun ranks (gloo) stay identical, and train, in every classic family and with the training
methods (those whose cross-rank reductions need more, consensus, MRGAN and the semi-supervised GAN,
compare two ranks with one process in their own files): one launch per backend trains every run in turn (tests/scripts/runs_rank.py: the slot stream,
batch 8, 2 iterations), and a test per run reads what its ranks saved. One process start for all of
them keeps the suite's time down; the exactness of two ranks against one process is tested once, for
BigGAN, in test_dist.py (and for BEGAN's k_t in test_energy_gans.py)."""

import json

import pytest
import torch
from test_dist import BUFFERS, SCRIPTS, _torchrun

from conftest import REPO

CLASSIC = {
    family: (f"{family}/digits32.yaml", [])
    for family in ("dcgan", "cgan", "sngan", "sagan", "ebgan", "began")
}
# name -> (recipe under configs/, overrides): every run of the DDP launch. SN-GAN's digits recipe is
# the conditional one (projection D); 2 D steps per G step and the linear decay as its CIFAR recipes.
# The methods run on BigGAN's digits recipe; replay's buffer (4 fakes) fills in the first D step and
# replays in the second.
METHODS = {
    "fgan": ("biggan/digits32.yaml", ["loss.name=fgan", "loss.divergence=pearson"]),
    "replay": ("biggan/digits32.yaml", ["regularize.replay.size=4"]),
    "vbn": ("biggan/digits32.yaml", ["model.vbn=8"]),
    "infogan": ("biggan/digits32.yaml", ["regularize.info.categorical=[10]", "regularize.info.continuous=2"]),
}
DDP_RUNS = {
    **CLASSIC,
    "sngan": ("sngan/digits32.yaml", ["train.n_disc_steps=2", "optim.lr_decay=linear"]),
    **METHODS,
}
DEEPSPEED = ["dist.backend=deepspeed", f"dist.deepspeed_config={REPO}/configs/deepspeed/zero1.json"]


def _launch(tmp_path_factory, name, runs, *overrides, **env):
    out = tmp_path_factory.mktemp(name)
    spec = out / "runs.json"
    spec.write_text(json.dumps(runs))
    _torchrun(SCRIPTS / "runs_rank.py", out, spec, *overrides, **env)
    return out


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    return _launch(tmp_path_factory, "ddp", DDP_RUNS)


@pytest.fixture(scope="module")
def deepspeed_runs(tmp_path_factory):
    return _launch(tmp_path_factory, "deepspeed", CLASSIC, *DEEPSPEED, DS_ACCELERATOR="cpu")


def assert_ranks_identical_and_trained(out, name, what):
    r0, r1 = torch.load(out / name / "rank0.pt"), torch.load(out / name / "rank1.pt")
    assert r0.keys() == r1.keys(), f"{what}, {name}: the ranks saved different tensors"
    for key in r0:
        if key.startswith(("D.", "D_start.")) and key.endswith(BUFFERS):
            continue  # D's BN statistics: each rank's own half-batch, never read (D is always in training mode)
        assert torch.equal(r0[key], r1[key]), f"{what}, {name}: {key} differs between the ranks"
    moved = [k for k in r0 if k.startswith("D.") and r0[k].is_floating_point() and not k.endswith(BUFFERS)
             and not torch.equal(r0[k], r0[f"D_start.{k[2:]}"])]  # fmt: skip
    assert moved, f"{what}, {name}: no weight of D changed in training"


@pytest.mark.parametrize("name", DDP_RUNS)
def test_two_ranks_under_ddp_stay_identical(ddp_runs, name):
    assert_ranks_identical_and_trained(ddp_runs, name, "ddp")


def test_the_sngan_run_holds_sn_vectors_and_the_projection(ddp_runs):
    saved = torch.load(ddp_runs / "sngan" / "rank0.pt")
    assert any(k.startswith("D.") and k.endswith("._u") for k in saved), "no SN vectors saved"
    assert any(k.startswith("D.embed.") for k in saved), "not the conditional (projection) D"


def test_the_method_runs_hold_their_state(ddp_runs):
    """What each method's run must hold beyond the networks (its tests are in tests/test_<method>.py)."""
    replay = torch.load(ddp_runs / "replay" / "rank0.pt")["objective.replay_images"]
    assert replay.shape[0] == 2, f"replay's checkpoint holds {replay.shape[0]} ranks' buffers, not 2"
    assert not torch.equal(replay[0], replay[1]), "each rank replays its own fakes, yet the buffers are equal"
    vbn = torch.load(ddp_runs / "vbn" / "rank0.pt")
    assert "G.vbn_reference.z" in vbn and not any(
        k.startswith("G.") and k.endswith("running_mean") for k in vbn
    )


@pytest.mark.parametrize("name", CLASSIC)
def test_two_ranks_under_deepspeed_zero1_stay_identical(deepspeed_runs, name):
    """DeepSpeed's two engines (G and D) with ZeRO 1 on CPU (ZeRO 2's agreement with DDP and exact
    resume are test_dist.py's): BEGAN's k_t averaged over the ranks as
    under DDP, SN vectors and G's BN buffers alike."""
    assert_ranks_identical_and_trained(deepspeed_runs, name, "deepspeed ZeRO 1")
