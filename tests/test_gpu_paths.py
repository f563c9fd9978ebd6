"""The GPU code paths, run on the CPU so that CI checks them for BigGAN, StyleGAN2 and ProGAN:
torch.compile of G and D (no graph break; outputs and gradients equal to eager), bf16 autocast and
channels_last (outputs close to fp32 / contiguous memory), and the training step's host syncs.

Tolerances, and why:
- compile, fp32: inductor fuses and reorders the same float32 arithmetic, so results differ by
  rounding: measured up to 1.5e-5 on images in [-1, 1] and 6e-6 relative on gradients. Bound: 1e-4.
- channels_last, fp32: other convolution kernels, same arithmetic: measured up to 2e-5. Bound: 1e-4.
- bf16 autocast: bf16 keeps 8 significant bits (unit roundoff 2^-9 = 2e-3) and the convolutions'
  inputs are rounded at every layer, so ten layers give about 1e-2 relative error in L2 (measured
  1.1e-2 to 1.5e-2). Bound: 5e-2.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode

from bigtrain.config import load_config
from bigtrain.models import build_models
from bigtrain.train.loop import Trainer
from conftest import REPO

# Each family at its smallest: the recipe's layers, few channels, 16x16 where the family allows it.
FAMILIES = {
    "biggan": ("configs/biggan/digits32.yaml", []),
    "stylegan2": (
        "configs/stylegan2/digits32.yaml",
        [
            "model.resolution=16",
            "model.stylegan2.fmap_base=256",
            "model.stylegan2.fmap_max=16",
            "model.stylegan2.w_dim=16",
            "model.z_dim=16",
            "regularize.r1.interval=2",
            "regularize.path_length.interval=2",
            "augment.diffaugment=color,translation",
        ],
    ),  # fmt: skip
    "progan": (
        "configs/progan/digits32.yaml",
        [
            "model.resolution=16",
            "model.progan.fmap_base=128",
            "model.progan.fmap_max=16",
            "model.z_dim=16",
            "train.phases=[{resolution: 8, batch: 8}, {resolution: 16, fade_kimg: 1, batch: 8}]",
        ],
    ),  # fmt: skip
}
COMPILE_TOLERANCE = 1e-4
# Gradients of the compiled nets against eager ones (relative L2), measured under `make test-cpus`'s
# settings: at most 2.2e-6 everywhere except BigGAN G under ATEN_CPU_CAPABILITY=default with 1 thread
# and native oneDNN, 1.26e-4 (deterministic; its BatchNorm backward subtracts near-equal sums, which
# amplifies reordered rounding). The bound is 8x that; a missing or mis-scaled term gives 1e-2 and up.
COMPILE_GRAD_TOLERANCE = 1e-3
CHANNELS_LAST_TOLERANCE = 1e-4
BF16_TOLERANCE = 5e-2


def _config(family: str, data, run_dir, *extra):
    recipe, overrides = FAMILIES[family]
    return load_config(REPO / recipe, [f"data.path={data}", f"train.run_dir={run_dir}", "track.enabled=false",
                                       "eval.every_kimg=0", "train.batch=8", "data.num_workers=0",
                                       "train.log_every=1000", *overrides, *extra])  # fmt: skip


def _networks(family: str, *extra: str) -> tuple[torch.nn.Module, torch.nn.Module, int]:
    cfg = _config(family, "unused", "unused", *extra)
    torch.manual_seed(0)
    G, D = build_models(cfg.model, 10)
    if family == "progan":
        for net in (G, D):
            net.set_phase(16, 0.5)  # mid fade-in: both resolutions' paths are live
    return G.train(), D.train(), cfg.model.z_dim


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


def _g_kwargs(G: torch.nn.Module, batch: int) -> dict:
    if hasattr(G, "draw_noise"):  # StyleGAN2: per-pixel noise, drawn outside the network
        return {"noise": G.draw_noise(batch, torch.Generator().manual_seed(3))}
    return {}


@pytest.mark.parametrize("family", FAMILIES)
def test_networks_trace_without_graph_breaks(family):
    """Every call the trainer makes of G and D is one graph for torch.compile."""
    G, D, z_dim = _networks(family)
    z, y = torch.randn(8, z_dim), torch.randint(0, 10, (8,))
    x = torch.rand(16, 3, D.resolution, D.resolution) * 2 - 1
    calls = [("G", G, (z, y), {**_g_kwargs(G, 8), "update_w_avg": True} if family == "stylegan2" else {})]
    if family == "stylegan2":  # style mixing at a random layer, and the path-length pass's ws
        calls.append(("G mixing", G, (z, y), {**_g_kwargs(G, 8), "mix_z": torch.randn(8, z_dim), "mix_cutoff": 2,
                                              "return_ws": True}))  # fmt: skip
    # reals and fakes in one batch, as the D step passes them; and with its declared outputs, for
    # feature matching and AC-GAN's class head
    calls.append(("D", D, (x, torch.randint(0, 10, (16,))), {"parts": 2}))
    G_ac, D_ac, _ = _networks(family, "model.aux_classifier=true", "regularize.aux_classifier.weight=1")
    calls.append(("D all outputs", D_ac, (x, torch.randint(0, 10, (16,))), {"parts": 2, "all_outputs": True}))
    if family == "progan":  # AC-GAN's ProGAN G reads the one-hot label
        calls.append(("G conditional", G_ac, (z, y), {}))
    for what, net, args, kwargs in calls:
        explanation = torch._dynamo.explain(net)(*args, **kwargs)
        reasons = [str(r.reason).splitlines()[0] for r in explanation.break_reasons]
        assert explanation.graph_break_count == 0, (
            f"{family} {what}: {explanation.graph_break_count} graph breaks: {reasons}"
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_channels_last_and_bf16_outputs_match_fp32(family):
    G, D, z_dim = _networks(family)
    z, y = torch.randn(16, z_dim), torch.randint(0, 10, (16,))
    kwargs = _g_kwargs(G, 16)
    if family == "stylegan2":
        kwargs["noise_mode"] = "random"
    G.eval(), D.eval()  # no SN power iteration or BN statistics update between the calls compared
    with torch.no_grad():
        images = G(z, y, **kwargs)
        scores = D(images, y)
        G_cl = copy.deepcopy(G).to(memory_format=torch.channels_last)
        D_cl = copy.deepcopy(D).to(memory_format=torch.channels_last)
        images_cl = G_cl(z, y, **kwargs)
        scores_cl = D_cl(images.contiguous(memory_format=torch.channels_last), y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            images_bf16 = G(z, y, **kwargs)
            scores_bf16 = D(images, y)
    for what, value, reference, tolerance in [
        ("G channels_last", images_cl, images, CHANNELS_LAST_TOLERANCE),
        ("D channels_last", scores_cl, scores, CHANNELS_LAST_TOLERANCE),
        ("G bf16", images_bf16, images, BF16_TOLERANCE),
        ("D bf16", scores_bf16, scores, BF16_TOLERANCE),
    ]:
        error = _relative(value, reference)
        assert error <= tolerance, f"{family} {what}: relative L2 error {error:.3g} (tolerance {tolerance:g})"
    assert _relative(images_bf16, images) > 1e-4, f"{family}: bf16 autocast changed nothing (was it applied?)"


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_training_equals_eager(family, demo_shards, tmp_path):
    """Three compiled training iterations (channels_last) run with no graph break; then the compiled
    G and D equal eager copies of themselves on the same inputs, outputs and gradients."""
    torch._dynamo.reset()
    counters.clear()
    cfg = _config(family, demo_shards, tmp_path, "train.compile=true", "train.channels_last=on",
                  "train.total_kimg=0.024")  # fmt: skip
    trainer = Trainer(cfg)
    assert trainer.run() == "finished" and trainer.iteration == 3
    breaks = {str(k).splitlines()[0]: v for k, v in counters["graph_break"].items()}
    assert not breaks, f"{family}: graph breaks in compiled training: {breaks}"
    assert counters["stats"]["unique_graphs"] >= 2, (
        f"{family}: G and D were not both compiled: {dict(counters['stats'])}"
    )

    z, y, kwargs = trainer.g_inputs(trainer.micro_batch, training_g=True)
    x = torch.rand(2 * z.shape[0], 3, trainer.D.resolution, trainer.D.resolution) * 2 - 1
    x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (x.shape[0],))
    for what, compiled, eager_net, args, kw in [
        ("G", trainer.g_train, copy.deepcopy(trainer.G), (z, y), kwargs),
        ("D", trainer.d_train, copy.deepcopy(trainer.D), (x, labels), {"parts": 2}),
    ]:
        original = trainer.G if what == "G" else trainer.D
        expected = eager_net(*args, **kw)
        got = compiled(*args, **kw)
        weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(5))
        grads_expected = torch.autograd.grad(
            (expected * weights).sum(), list(eager_net.parameters()), allow_unused=True
        )
        grads_got = torch.autograd.grad((got * weights).sum(), list(original.parameters()), allow_unused=True)
        error = _relative(got, expected)
        assert error <= COMPILE_TOLERANCE, (
            f"{family} compiled {what}: relative error {error:.3g} in its outputs"
        )
        pairs = [(a, b) for a, b in zip(grads_got, grads_expected) if b is not None]
        assert pairs and all(a is not None for a, _ in pairs), f"{family} compiled {what}: gradients missing"
        flat_got, flat_expected = (torch.cat([t.flatten() for t in ts]) for ts in zip(*pairs))
        error = _relative(flat_got, flat_expected)
        print(f"{family} compiled {what}: relative error {error:.3g} in its gradients")  # `make test-cpus`
        assert error <= COMPILE_GRAD_TOLERANCE, (
            f"{family} compiled {what}: relative error {error:.3g} in its gradients (bound {COMPILE_GRAD_TOLERANCE:g})"
        )


class HostSyncCounter(TorchDispatchMode):
    """Counts the operators that make the host wait for the device: `.item()`, `bool(t)`, `int(t)`,
    `float(t)` reach aten._local_scalar_dense; nonzero and masked_select size their output from data."""

    SYNCING = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2"}

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in self.SYNCING:
            self.calls.append(func._schema.name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("check_finite", [True, False])
def test_the_step_syncs_once_per_optimizer_step_or_never(family, check_finite, demo_shards, tmp_path):
    """With train.check_finite the non-finite check reads one flag per optimizer step (D, G and, for
    StyleGAN2, the lazy R1 and path-length steps); without it the step never waits for the device.
    Run in bf16 with channels_last, as on a GPU."""
    cfg = _config(family, demo_shards, tmp_path, f"train.check_finite={str(check_finite).lower()}",
                  "train.precision=bf16", "train.channels_last=on", "train.total_kimg=1")  # fmt: skip
    trainer = Trainer(cfg)
    trainer.train_step()  # first step outside the count: lazy initialization is not the steady state
    optimizer_steps, step = [], trainer.backend.step
    trainer.backend.step = lambda which: (optimizer_steps.append(which), step(which))
    iterations = 2  # the second has StyleGAN2's R1 and path-length steps (intervals 2)
    with HostSyncCounter() as counter:
        for _ in range(iterations):
            trainer.train_step()
    expected = len(optimizer_steps) if check_finite else 0
    assert len(optimizer_steps) >= iterations * (cfg.train.n_disc_steps + 1)
    assert len(counter.calls) == expected, (
        f"{family}, check_finite={check_finite}: {len(counter.calls)} host syncs in {iterations} iterations "
        f"({len(optimizer_steps)} optimizer steps), expected {expected}: {counter.calls}"
    )
    params = [p for net in (trainer.G, trainer.D) for p in net.parameters()]
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params), (
        "bf16 leaked into weights"
    )
