"""`bigtrain plan`: the fake-tensor trace of one training iteration against the same iteration on real
tensors (the planner's memory within 10% of the measured live bytes), the plan's figures, and its
one-sentence refusals."""

import subprocess
import time

import pytest
import torch

from bigtrain.config import ConfigError, load_config
from bigtrain.plan.planner import make_plan
from bigtrain.plan.trace import LiveBytes, trace
from conftest import BIGTRAIN, REPO, cli_env

# (recipe, overrides): the digits recipe of every family, and BigGAN ImageNet 128 at a micro-batch of 4
# (2 accumulated micro-batches traced of its 8; G_ema sampled at 4 images: a real 128px sample of 500
# on this CPU takes minutes and adds nothing the test checks).
RECIPES = [
    ("configs/biggan/digits32.yaml", []),
    ("configs/stylegan2/digits32.yaml", []),
    ("configs/progan/digits32.yaml", []),
    ("configs/biggan/imagenet128.yaml", ["train.batch=8", "model.num_classes=1000", "eval.batch=4"]),
]


def test_live_bytes_counts_what_is_allocated_and_freed():
    tracker = LiveBytes()
    kept = torch.zeros(100)
    tracker.register(kept, kept[:10])  # a view of a counted storage adds nothing
    with tracker:
        a = torch.ones(1000)  # 4000 bytes
        b = a * 2  # 4000 more
        v = b.view(10, 100)  # a view: no new storage
        assert tracker.live == 400 + 8000 and tracker.peak == 8400
        del a, b, v
        assert tracker.live == 400
        c = torch.ones(10, dtype=torch.bfloat16)
        assert tracker.live == 420 and tracker.peak == 8400
    del c


@pytest.mark.slow
@pytest.mark.parametrize("recipe,overrides", RECIPES, ids=lambda v: v if isinstance(v, str) else "")
def test_fake_trace_predicts_the_real_peak_within_10_percent(recipe, overrides):
    """The planner's trace (fake tensors: nothing allocated) against the same iteration run on real CPU
    tensors, counted by the same tracker: every phase's peak of live tensor bytes. CPU precision (fp32),
    as the real run here uses."""
    cfg = load_config(REPO / recipe, overrides)
    start = time.perf_counter()
    predicted = trace(cfg, gpu=False, fake=True)
    fake_s = time.perf_counter() - start
    measured = trace(cfg, gpu=False, fake=False)
    for p, m in zip(predicted.iterations, measured.iterations):
        assert p.resolution == m.resolution and p.micro_batch == m.micro_batch
        assert abs(p.peak_bytes - m.peak_bytes) <= 0.1 * m.peak_bytes, (
            f"{recipe} at {p.resolution}px, micro-batch {p.micro_batch}: predicted {p.peak_bytes:,} bytes, "
            f"measured {m.peak_bytes:,} bytes"
        )
        for pp, mp in zip(p.phases, m.phases):
            assert pp.name == mp.name
            assert abs(pp.peak_bytes - mp.peak_bytes) <= 0.1 * mp.peak_bytes, (
                pp.name,
                pp.peak_bytes,
                mp.peak_bytes,
            )
            assert sum(o.flops for o in pp.ops) == sum(o.flops for o in mp.ops), pp.name
    assert fake_s < 60, f"the fake trace of {recipe} took {fake_s:.0f} s"


def test_imagenet128_plan_on_h100_fits_and_8192_per_gpu_does_not():
    cfg = load_config(REPO / "configs/biggan/imagenet128.yaml")
    plan = make_plan(cfg, "h100", world_size=16)  # the recipe as shipped on 2 x 8 H100s
    assert plan.fits and plan.micro_batch == 16 and plan.accum == 8, plan
    assert plan.fit_micro_batch * plan.fit_accum == 128
    assert plan.precision == "bf16" and plan.channels_last
    assert {"D step", "G step", "eval sampling"} <= set(plan.phases)
    assert plan.s_per_iter > 0 and plan.img_per_s > 0
    big = load_config(REPO / "configs/biggan/imagenet128.yaml", ["train.batch=8192", "train.accum=1"])
    refused = make_plan(big, "h100", world_size=1)
    assert not refused.fits and refused.predicted > refused.usable
    assert 0 < refused.fit_micro_batch < 8192 and refused.fit_micro_batch * refused.fit_accum == 8192


@pytest.mark.parametrize("family", ["dcgan", "sngan", "sagan", "cgan", "ebgan", "began"])
def test_the_classic_families_plan_with_their_weights(family):
    """The planner traces any family's Trainer step: the weights it counts are the built networks' (parameters
    and buffers)."""
    from bigtrain.models import build_models

    cfg = load_config(REPO / f"configs/{family}/digits32.yaml", ["model.num_classes=10"])
    plan = make_plan(cfg, "h100")
    G, D = build_models(cfg.model, 10)
    tensors = {"G": [*G.parameters(), *G.buffers()], "D": [*D.parameters(), *D.buffers()]}
    weights = {name: sum(t.numel() * t.element_size() for t in ts) for name, ts in tensors.items()}
    assert plan.fits and plan.s_per_iter > 0 and {"D step", "G step"} <= set(plan.phases), plan
    assert plan.state["G weights"] == weights["G"] and plan.state["D weights"] == weights["D"], (
        f"planned {plan.state['G weights']:,} / {plan.state['D weights']:,} bytes of weights, built {weights}"
    )


def test_lazy_regularizers_have_their_own_phases():
    cfg = load_config(REPO / "configs/stylegan2/digits32.yaml")
    plan = make_plan(cfg, "a100")
    assert list(plan.phases) == ["D step", "R1 step", "G step", "path length step", "eval sampling"]


def run(*args):
    return subprocess.run(
        [BIGTRAIN, *map(str, args)], capture_output=True, text=True, timeout=300, env=cli_env()
    )


def test_cli_prints_the_table_and_one_json_line():
    proc = run("plan", REPO / "configs/biggan/digits32.yaml", "--gpu", "h200")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "predicted peak" in proc.stdout and "G step" in proc.stdout and "modelled" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith('{"plan": ')


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["configs/biggan/digits32.yaml", "--gpu", "v100"], "'v100' is not a GPU kind"),
        (["configs/biggan/digits32.yaml", "train.batch=33", "--gpus-per-node", "2"], "train.batch=33"),
        (["configs/biggan/digits32.yaml", "model.biggan.ch=0"], "model.biggan.ch"),
    ],
    ids=["unknown-gpu", "indivisible-batch", "does-not-build"],
)
def test_bad_input_is_one_sentence(args, fragment):
    proc = run("plan", *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("bigtrain plan: error:") and fragment in last, last


def test_make_plan_refuses_a_world_size_below_one():
    with pytest.raises(ConfigError, match="world size 0"):
        make_plan(load_config(REPO / "configs/biggan/digits32.yaml"), "h100", world_size=0)


def test_k8s_render_refuses_a_per_gpu_batch_that_cannot_fit():
    from bigtrain.k8s.render import RenderOptions, render

    recipe = str(REPO / "configs/biggan/imagenet128.yaml")
    common = dict(kind="pytorchjob", config=recipe, image="registry.example/bigtrain:0.1", gpu="h100")
    over = ["data.path=/data/imagenet128", "train.batch=8192", "train.accum=1"]
    with pytest.raises(ConfigError) as refused:
        render(RenderOptions(**common, nodes=1, gpus_per_node=1, overrides=over))
    message = str(refused.value)
    assert "does not fit a H100" in message and "predicted peak" in message and "usable 78.5 GiB" in message
    assert "train.accum=" in message and "\n" not in message, message
    forced = render(RenderOptions(**common, nodes=1, gpus_per_node=1, overrides=over, force=True))
    assert '"fits": false' in forced[-1]["metadata"]["annotations"]["bigtrain.io/plan"]
    shipped = render(
        RenderOptions(**common, nodes=2, gpus_per_node=8, overrides=["data.path=/data/imagenet128"])
    )
    assert '"fits": true' in shipped[-1]["metadata"]["annotations"]["bigtrain.io/plan"]


def test_training_logs_the_measured_peak_beside_the_plan(tmp_path, demo_shards, caplog):
    from bigtrain.train.loop import Trainer

    overrides = [f"data.path={demo_shards}", f"train.run_dir={tmp_path}", "track.enabled=false",
                 "eval.every_kimg=0", "train.device=cpu", "train.plan_check=true", "train.batch=16"]  # fmt: skip
    trainer = Trainer(load_config(REPO / "configs/biggan/digits32.yaml", overrides))
    assert trainer.planned_peak > 0
    trainer.train_step()
    with caplog.at_level("INFO", logger="bigtrain.train.loop"):
        metrics = trainer.log_metrics(1.0, 16)
    assert metrics["host_rss_peak_gib"] > 0 and metrics["plan_mem_peak_gib"] > 0
    assert "peak memory: measured" in caplog.text
    trainer.train_step()
    assert "plan_mem_peak_gib" not in trainer.log_metrics(1.0, 16)  # the first log point only
