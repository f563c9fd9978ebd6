"""Many processes on this CPU machine: real torchrun workers on gloo, through the project's launcher."""

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bigtrain.config import load_config
from bigtrain.data import ShardLoader, StreamSpec
from bigtrain.data.manifest import Manifest
from bigtrain.train.checkpoint import load_checkpoint
from bigtrain.train.loop import NonFiniteLoss, Trainer
from conftest import PYTHON, REPO, cli_env, free_port

LAUNCH = str(REPO / "launch" / "torchrun.sh")
SCRIPTS = REPO / "tests" / "scripts"
DEMO = REPO / "configs" / "biggan" / "digits32.yaml"
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _torchrun(*args, nproc=2, timeout=600, **env):
    """Run a script under torchrun --standalone; extra keyword arguments go into its environment."""
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        *map(str, args),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**cli_env(), **env})
    assert proc.returncode == 0, proc.stderr[-4000:]


def _launch_env(**extra) -> dict:
    env = cli_env()
    env.update(PYTHON=PYTHON, **{k: str(v) for k, v in extra.items()})
    return env


def two_ranks_and_one_process(out: Path, iterations: int, *overrides) -> tuple[dict, dict, dict]:
    """tests/scripts/train_rank.py as 2 processes x accum 1 (OUT/two) and as 1 process x accum 2 (OUT/one):
    the same global batch, the same data and latents per micro-batch slot. Returns both ranks' tensors
    and the single process's."""
    _torchrun(SCRIPTS / "train_rank.py", out / "two", 1, iterations, *overrides)
    subprocess.run([PYTHON, str(SCRIPTS / "train_rank.py"), str(out / "one"), "2", str(iterations), *overrides],
                   check=True, capture_output=True, env=cli_env())  # fmt: skip
    r0, r1 = torch.load(out / "two" / "rank0.pt"), torch.load(out / "two" / "rank1.pt")
    return r0, r1, torch.load(out / "one" / "rank0.pt")


def assert_ranks_equal_one_process(r0, r1, single, tolerance=1e-6, probe_tolerance=None, skip=None) -> None:
    """Every tensor the same on both ranks, and within `tolerance` (`probe_tolerance` for the probes'
    outputs) of the single process's, but for BN's running statistics (each rank's own half-batch, by
    design) and the keys `skip` names."""
    for key in r0:
        assert torch.equal(r0[key], r1[key]), f"{key} differs between the two ranks"
        if key.endswith(BUFFERS) or (skip is not None and skip(key)):
            continue
        tol = probe_tolerance if probe_tolerance is not None and key.startswith("probe.") else tolerance
        diff = (r0[key].float() - single[key].float()).abs().max().item()
        assert diff <= tol, f"{key}: 2 ranks vs 1 process x accum 2 differ by {diff:.3g} (tolerance {tol:g})"


def test_two_ranks_are_identical_and_equal_one_process_with_the_same_global_batch(tmp_path):
    """2 processes x accum 1 against 1 process x accum 2: the same global batch of 16, the same data
    and latents per micro-batch slot. Tolerance: 1e-6 absolute on every parameter and SN vector."""
    r0, r1, single = two_ranks_and_one_process(tmp_path, 6)
    assert any(k.startswith("G_ema.") for k in r0) and any(k.startswith("D.") for k in r0)
    assert_ranks_equal_one_process(r0, r1, single)


STYLEGAN2 = ["model.name=stylegan2", "model.stylegan2.fmap_base=256", "model.stylegan2.fmap_max=16", "model.stylegan2.w_dim=32",
             "model.stylegan2.mapping_layers=2", "loss.name=nonsat", "regularize.ortho.strength=0", "regularize.r1.gamma=0.2",
             "regularize.r1.interval=2", "regularize.path_length.weight=2", "regularize.path_length.interval=2", "regularize.style_mixing.prob=0.9",
             "augment.diffaugment=color,translation,cutout", "regularize.lecam.weight=0.3",
             "model.aux_classifier=true", "regularize.aux_classifier.weight=1",
             "regularize.feature_matching.weight=0.1", "regularize.zcr.dis=5", "regularize.zcr.gen=0.5",
             "regularize.unrolled.steps=1"]  # fmt: skip


def test_two_ranks_stay_identical_through_stylegan2s_double_backward_regularizers(tmp_path):
    """R1 and path length take gradients of gradients inside DDP's forward/backward; with mixing,
    noise and augmentation drawn per slot, and LeCam's anchors averaged over ranks, both ranks must end
    with the same weights. D declares its features and AC-GAN's class logits through DDP, and R1's pass,
    which does not use the class head, keeps it in DDP's graph. zCR's G part runs the bare G (outside
    DDP's forward) in the G step, and the unrolled GAN scores G's images with D's functional copy there;
    their gradients join the DDP ones before the all-reduce."""
    _torchrun(SCRIPTS / "train_rank.py", tmp_path, 1, 4, *STYLEGAN2)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    checked = 0
    for key in r0:
        if key.startswith("probe.") or key.endswith("w_avg"):
            continue  # each rank's own samples (w_avg tracks the rank's own w, as in stylegan2-ada)
        assert torch.equal(r0[key], r1[key]), f"{key} differs between the two ranks"
        checked += key.startswith("G.synthesis")
    assert checked > 10, f"only {checked} synthesis tensors compared"
    assert "objective.lecam_ema" in r0 and "objective.pl_mean" in r0, sorted(
        k for k in r0 if "objective" in k
    )


# Backend agreement is checked where rounding cannot grow into a different trajectory. With Adam's
# default eps (1e-6) the update lr * g / (sqrt(v) + eps) has a Lipschitz constant of lr / eps in g: a
# gradient that is pure rounding noise (a conv bias feeding BatchNorm has a true gradient of exactly 0)
# becomes a step of about lr in a random direction. DeepSpeed keeps the parameters in one flat buffer,
# so BLAS and oneDNN see other alignments, take other code paths and round differently; after 6 Adam
# iterations the G_ema probe images differed from ddp's by 6.3e-5, 1.7e-3 and 4.0e-3 on three CPUs.
# With eps = 1 the update is lr * g / (sqrt(v) + 1), 1-Lipschitz in g times lr, so engine
# differences stay rounding-sized: measured at most 1.2e-4 of the probes' movement (usually ~1e-6)
# under ATEN_CPU_CAPABILITY=default/avx2 and ONEDNN_MAX_CPU_ISA=SSE41. The orthogonal regularizer is
# strong here, so an engine that dropped it would be off by 1e-2 of the movement, 10x the tolerance.
# Two iterations reach the second D step, where a gradient left over from the G step would show.
LINEAR_REGIME = ["optim.eps=1", "optim.lr_g=0.02", "optim.lr_d=0.02", "regularize.ortho.strength=0.1"]
AGREEMENT_ITERATIONS = 2
AGREEMENT_TOLERANCE = 1e-3  # relative to the change of the same probe in the ddp run


@pytest.fixture(scope="module")
def ddp_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    _torchrun(SCRIPTS / "train_rank.py", out, 1, AGREEMENT_ITERATIONS, *LINEAR_REGIME)
    return torch.load(out / "rank0.pt")


def _assert_agrees_with_ddp(out: Path, reference: dict, what: str) -> dict:
    """Ranks identical; G_ema images and D logits on fixed probes equal ddp's within
    AGREEMENT_TOLERANCE of how far ddp's training moved them. Weights are not compared one by one:
    the biases of convolutions that feed BatchNorm have a zero true gradient, so their updates are
    rounding noise that no output can see. Returns rank 0's tensors."""
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    for key in r0:
        assert torch.equal(r0[key], r1[key]), f"{what}: {key} differs between the ranks"
    for probe in ("G_ema", "D"):
        moved = (reference[f"probe.{probe}"] - reference[f"probe_start.{probe}"]).abs().max().item()
        diff = (r0[f"probe.{probe}"] - reference[f"probe.{probe}"]).abs().max().item()
        assert moved > 1e-3, (
            f"the ddp reference's {probe} probe barely moved ({moved:.3g}): nothing to compare"
        )
        assert diff <= AGREEMENT_TOLERANCE * moved, (
            f"{what}: {probe} probe differs from ddp's by {diff:.3g}, {diff / moved:.3g} of the {moved:.3g} "
            f"that training moved it (tolerance {AGREEMENT_TOLERANCE:g})"
        )
    return r0


def test_accelerate_backend_agrees_with_ddp(tmp_path, ddp_reference):
    _torchrun(
        SCRIPTS / "train_rank.py",
        tmp_path,
        1,
        AGREEMENT_ITERATIONS,
        *LINEAR_REGIME,
        "dist.backend=accelerate",
    )
    _assert_agrees_with_ddp(tmp_path, ddp_reference, "accelerate")


@pytest.mark.parametrize("zero", [2])
def test_deepspeed_backend_agrees_with_ddp_and_resumes_exactly(tmp_path, ddp_reference, zero):
    """Two DeepSpeed engines (G, D) with ZeRO 2 against ddp; then the same run split by a checkpoint
    that holds every rank's optimizer shard must end bit-identical to the whole run. ZeRO 1 (optimizer
    state partitioned, gradients not) trains every classic family on two ranks in test_two_ranks.py; it
    passed this test too when it ran here (a launch of 40 s taken out of the suite's time)."""
    overrides = [
        *LINEAR_REGIME,
        "dist.backend=deepspeed",
        f"dist.deepspeed_config={REPO}/configs/deepspeed/zero{zero}.json",
    ]
    whole, split = tmp_path / "whole", tmp_path / "split"
    _torchrun(SCRIPTS / "train_rank.py", whole, 1, AGREEMENT_ITERATIONS, *overrides, DS_ACCELERATOR="cpu")
    expected = _assert_agrees_with_ddp(whole, ddp_reference, f"deepspeed ZeRO {zero}")
    _torchrun(SCRIPTS / "train_rank.py", split, 1, 1, *overrides, DS_ACCELERATOR="cpu")
    checkpoint = next((split / "run" / "checkpoints").glob("step-*"))
    assert (checkpoint / "deepspeed_G").is_dir() and (checkpoint / "deepspeed_D").is_dir()
    _torchrun(
        SCRIPTS / "train_rank.py",
        split,
        1,
        AGREEMENT_ITERATIONS,
        *overrides,
        DS_ACCELERATOR="cpu",
        RESUME="1",
    )
    assert int(load_checkpoint(split / "run")["iteration"]) == AGREEMENT_ITERATIONS
    resumed = torch.load(split / "rank0.pt")
    for key, value in expected.items():
        if not key.startswith("probe_start."):
            assert torch.equal(resumed[key], value), f"ZeRO {zero}: {key} differs after the resume"


def test_deepspeed_accumulation_agrees_with_ddp(tmp_path, ddp_reference):
    """One process x accum 2 through DeepSpeed's accumulation boundary against 2 ddp processes x
    accum 1 (which equal one process x accum 2 bit for bit, see the first test)."""
    overrides = [
        *LINEAR_REGIME,
        "dist.backend=deepspeed",
        f"dist.deepspeed_config={REPO}/configs/deepspeed/zero2.json",
    ]
    _torchrun(
        SCRIPTS / "train_rank.py",
        tmp_path,
        2,
        AGREEMENT_ITERATIONS,
        *overrides,
        nproc=1,
        DS_ACCELERATOR="cpu",
    )
    (tmp_path / "rank1.pt").symlink_to(tmp_path / "rank0.pt")  # one process: nothing to compare across ranks
    _assert_agrees_with_ddp(tmp_path, ddp_reference, "deepspeed ZeRO 2, accum 2")


def test_distributed_feature_statistics_equal_the_single_process_ones(tmp_path):
    _torchrun(SCRIPTS / "stats_rank.py", tmp_path / "stats.pt", nproc=2)
    out = torch.load(tmp_path / "stats.pt", weights_only=False)
    assert out["count"] == 1001
    for combined, whole in zip(out["combined"], out["whole"]):
        assert np.allclose(combined, whole, rtol=0, atol=1e-9), np.abs(combined - whole).max()
    assert out["gathered_equal"], "features gathered from 2 ranks differ from the single-process set"
    assert out["kid"][0] == out["kid"][1], f"KID distributed {out['kid'][0]} vs single {out['kid'][1]}"
    assert out["pr"][0] == out["pr"][1], (
        f"precision/recall distributed {out['pr'][0]} vs single {out['pr'][1]}"
    )


def test_two_nodes_on_one_machine_train_together(demo_shards, tmp_path):
    run_dir, port = tmp_path / "run", free_port()
    overrides = [f"data.path={demo_shards}", f"train.run_dir={run_dir}", "track.enabled=false", "train.batch=16",
                 "train.total_kimg=0.16", "eval.every_kimg=1000", "eval.num_samples=100", "data.num_workers=1"]  # fmt: skip
    nodes = [
        subprocess.Popen(
            [LAUNCH, str(DEMO), *overrides],
            env=_launch_env(
                NNODES=2,
                NODE_RANK=rank,
                NPROC_PER_NODE=1,
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
                MAX_RESTARTS=0,
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    state = load_checkpoint(run_dir)
    assert state["world_size"] == 2 and int(state["images"]) == 160 and int(state["iteration"]) == 10
    for rank in (0, 1):
        assert state["loader"][rank] == _expected_loader_state(demo_shards, rank, 10, 8)
    assert "fd_digits" in outputs[0]


def _worker_pids(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes, read from their environment."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(
                kv.split("=", 1)
                for kv in (proc / "environ").read_bytes().decode(errors="ignore").split("\0")
                if "=" in kv
            )
            parent = int((proc / "stat").read_text().split(") ")[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == launcher_pid and "RANK" in env and "LOCAL_RANK" in env:
            found[int(env["RANK"])] = int(proc.name)
    return found


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _expected_loader_state(shards, rank: int, batches: int, batch: int) -> dict:
    loader = ShardLoader(StreamSpec(shards, batch, 32, rank=rank, world_size=2, seed=0), num_workers=1)
    for _ in range(batches):
        loader.next_uint8()
    return loader.state_dict()


def test_sigterm_on_one_rank_checkpoints_every_rank_and_resume_continues(demo_shards, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [f"data.path={demo_shards}", f"train.run_dir={run_dir}", "track.enabled=false", "train.batch=16",
                 "eval.every_kimg=0", "data.num_workers=1", "train.log_every=1"]  # fmt: skip
    launcher = subprocess.Popen([LAUNCH, str(DEMO), *overrides, "train.total_kimg=100"], env=_launch_env(MAX_RESTARTS=0, NPROC_PER_NODE=2),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        _wait_for(lambda: len(_worker_pids(launcher.pid)) == 2, 120, "two workers")
        time.sleep(12)  # some iterations
        os.kill(_worker_pids(launcher.pid)[1], signal.SIGTERM)  # only rank 1 is told
        out = launcher.communicate(timeout=300)[0]
    finally:
        launcher.kill()
    assert "SIGTERM: saving a checkpoint" in out, out[-3000:]
    state = load_checkpoint(run_dir)
    stopped = int(state["iteration"])
    assert stopped > 0 and int(state["images"]) == stopped * 16
    for rank in (0, 1):  # each rank's position is its own, and exactly where it stopped
        assert state["loader"][rank] == _expected_loader_state(demo_shards, rank, stopped, 8)
    resumed = subprocess.run([LAUNCH, str(DEMO), *overrides, f"train.total_kimg={(stopped + 4) * 16 / 1000}"],
                             env=_launch_env(MAX_RESTARTS=0, NPROC_PER_NODE=2), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert int(load_checkpoint(run_dir)["iteration"]) == stopped + 4


@pytest.mark.slow
def test_sigkill_of_a_worker_restarts_the_group_from_latest(demo_shards, tmp_path):
    run_dir = tmp_path / "run"
    iterations = 60
    overrides = [f"data.path={demo_shards}", f"train.run_dir={run_dir}", "track.enabled=false", "train.batch=16",
                 "eval.every_kimg=0", "data.num_workers=1", f"train.total_kimg={iterations * 16 / 1000}",
                 "train.ckpt_every_kimg=0.16"]  # fmt: skip
    launcher = subprocess.Popen([LAUNCH, str(DEMO), *overrides], env=_launch_env(MAX_RESTARTS=1, NPROC_PER_NODE=2),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        _wait_for(lambda: (run_dir / "checkpoints" / "latest").is_file(), 300, "a first checkpoint")
        os.kill(_worker_pids(launcher.pid)[1], signal.SIGKILL)
        out = launcher.communicate(timeout=600)[0]
    finally:
        launcher.kill()
    assert launcher.returncode == 0, out[-3000:]
    assert "resumed from" in out, "the restarted group did not resume from the latest checkpoint"
    state = load_checkpoint(run_dir)
    assert int(state["iteration"]) == iterations and int(state["images"]) == iterations * 16
    for rank in (0, 1):
        assert state["loader"][rank] == _expected_loader_state(demo_shards, rank, iterations, 8)


class _NaNAfter:
    """Real-looking batches, then NaN images from call `start` on (a data or numerics fault)."""

    def __init__(self, start: int):
        self.calls, self.start = 0, start
        self.manifest = Manifest("nan", 32, "png", [str(i) for i in range(10)], [])
        self.skipped_corrupt = 0

    def __next__(self):
        self.calls += 1
        x = torch.rand(16, 3, 32, 32) * 2 - 1
        return (x * float("nan") if self.calls >= self.start else x), torch.randint(0, 10, (16,))

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def test_nonfinite_losses_are_skipped_then_stop_with_the_last_good_checkpoint(tmp_path):
    cfg = load_config(DEMO, [f"train.run_dir={tmp_path}", "track.enabled=false", "eval.every_kimg=0", "train.batch=16",
                             "train.total_kimg=10", "train.ckpt_every_kimg=0.08", "train.max_nonfinite_steps=3",
                             "regularize.historical_averaging.d=0.01"])  # fmt: skip
    trainer = Trainer(cfg, loader=_NaNAfter(start=8))
    with pytest.raises(
        NonFiniteLoss, match="3 consecutive non-finite D losses .* last good checkpoint: .*step-00000005"
    ):
        trainer.run()
    assert trainer.skipped_steps == 3
    (average,) = trainer.objective.on("d")  # D's historical average: its start and the 7 steps taken only
    assert average.count == 1 + 7, (
        f"averaged {average.count} parameter sets, expected 8 (skipped steps left out)"
    )
    good = load_checkpoint(tmp_path)
    assert int(good["iteration"]) == 5
    assert all(torch.isfinite(v).all() for v in good["G"].values() if v.is_floating_point())


def test_launcher_usage_and_missing_master(tmp_path):
    usage = subprocess.run([LAUNCH], env=_launch_env(), capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
    missing = subprocess.run([LAUNCH, str(DEMO)], env=_launch_env(NNODES=2), capture_output=True, text=True)
    assert missing.returncode != 0 and "MASTER_ADDR" in missing.stderr


@pytest.mark.parametrize("launcher", ["accelerate", "deepspeed"])
def test_other_launchers_start_two_processes(demo_shards, tmp_path, launcher):
    run_dir = tmp_path / "run"
    overrides = [f"data.path={demo_shards}", f"train.run_dir={run_dir}", "track.enabled=false", "eval.every_kimg=0",
                 "train.batch=16", "train.total_kimg=0.08", "data.num_workers=1"]  # fmt: skip
    if launcher == "accelerate":
        accelerate = str(Path(PYTHON).parent / "accelerate")
        cmd = [accelerate, "launch", "--config_file", str(REPO / "launch" / "accelerate.yaml"), "--num_processes", "2",
               "-m", "bigtrain.cli", "train", str(DEMO), *overrides, "dist.backend=accelerate"]  # fmt: skip
        env = cli_env()
    else:
        cmd = [str(REPO / "launch" / "deepspeed.sh"), str(DEMO), *overrides]
        env = _launch_env(NPROC_PER_NODE=2, DS_ACCELERATOR="cpu", MASTER_PORT=free_port())
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(run_dir)
    assert state["world_size"] == 2 and state["config"]["dist"]["backend"] == launcher
    assert int(state["iteration"]) == 5
