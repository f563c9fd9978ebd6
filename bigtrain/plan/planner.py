"""The plan of a recipe on a GPU kind and world size: per-rank memory (state, each phase's peak, fixed
terms), the largest micro-batch that fits, and time per iteration from the roofline."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, ConfigError, validate
from .gpus import gpu_kind, host_memory
from .roofline import iteration_seconds, phase_seconds
from .trace import IterationTrace, Trace, trace


@dataclass
class Plan:
    gpu: str
    gpu_name: str
    world_size: int
    precision: str
    channels_last: bool
    resolution: int
    batch: int  # global images per step
    micro_batch: int
    accum: int
    state: dict[str, int]  # bytes of weights, gradients, optimizer state, G_ema
    phases: dict[str, int]  # each phase's peak of live bytes (state included)
    peak_phase: str
    traced_peak: int  # most live tensor bytes of the traced iteration
    fixed: dict[str, int]  # fixed terms added to the traced peak
    predicted: int  # predicted peak of allocated bytes (max_memory_allocated)
    usable: int  # the device's memory less what lives outside the allocator
    fits: bool
    fit_micro_batch: int  # the largest micro-batch that fits (0: not even one image)
    fit_accum: int  # the accumulation that keeps the effective batch with it
    s_per_iter: float
    img_per_s: float
    s_per_kimg: float
    phase_seconds: dict[str, float] = field(default_factory=dict)
    efficiency: str = "modelled"

    def to_json(self) -> dict:
        return dict(self.__dict__)


def zero_stage(cfg: Config) -> int:
    if cfg.dist.backend != "deepspeed":
        return 0
    try:
        data = json.loads(Path(cfg.dist.deepspeed_config).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"dist.deepspeed_config={cfg.dist.deepspeed_config} cannot be read: {e}") from None
    return int(data.get("zero_optimization", {}).get("stage", 0))


def make_plan(cfg: Config, gpu: str = "h100", world_size: int = 1, traced: Trace | None = None) -> Plan:
    """Plan `cfg` for one of `world_size` ranks on GPU kind `gpu` (`cpu`: a CPU run in fp32)."""
    kind, spec, eff = gpu_kind(gpu)
    if world_size < 1:
        raise ConfigError(f"world size {world_size} must be at least 1")
    validate(cfg, world_size=world_size)  # a batch not divisible by world size x accum: one sentence
    traced = traced or trace(cfg, gpu=kind != "cpu", world_size=world_size)
    it: IterationTrace = traced.peak
    state = {
        "G weights": it.params["G"],
        "D weights": it.params["D"],
        "G_ema weights": it.params["G_ema"],
        "G gradients": it.grads["G"],
        "D gradients": it.grads["D"],
        "G optimizer": it.optimizer["G"],
        "D optimizer": it.optimizer["D"],
    }
    stage, fixed = zero_stage(cfg), {}
    if stage >= 1 and world_size > 1:  # ZeRO partitions: each rank keeps 1/W of them
        fixed["ZeRO optimizer partition"] = -int(
            (it.optimizer["G"] + it.optimizer["D"]) * (1 - 1 / world_size)
        )
    if stage >= 2 and world_size > 1:
        fixed["ZeRO gradient partition"] = -int((it.grads["G"] + it.grads["D"]) * (1 - 1 / world_size))
    phases = {p.name: p.peak_bytes for p in it.phases}
    peak_phase = max(it.phases, key=lambda p: p.peak_bytes)
    state_bytes = sum(state.values())
    activations = max(it.peak_bytes - state_bytes, 0)
    if kind != "cpu":
        if world_size > 1 and stage == 0:
            # DDP's buckets hold the trained network's gradients for the whole step (gradients are
            # views into them), where one process allocates them as backward produces them.
            net = peak_phase.network.upper() or "G"
            fixed["DDP buckets"] = it.grads[net]
        fixed["cuDNN/cuBLAS workspace"] = spec.workspace
        fixed["allocator rounding and slack"] = int(eff.allocator_slack * activations)
    predicted = it.peak_bytes + sum(fixed.values())
    usable = (spec.memory - spec.cuda_context) if kind != "cpu" else host_memory()
    per_rank = traced.batch // world_size
    fixed_only = predicted - activations * (1 + (eff.allocator_slack if kind != "cpu" else 0))
    per_image = activations * (1 + (eff.allocator_slack if kind != "cpu" else 0)) / max(it.micro_batch, 1)
    most = int((usable - fixed_only) // per_image) if per_image > 0 else per_rank
    fit_micro = max((m for m in range(1, per_rank + 1) if per_rank % m == 0 and m <= most), default=0)
    t_iter = iteration_seconds(it.phases, spec, eff)
    images = traced.n_disc_steps * traced.batch
    t_iter *= traced.accum / traced.traced_accum  # the trace ran at most 2 micro-batches per step
    img_per_s = images / t_iter if t_iter > 0 else 0.0
    return Plan(
        gpu=kind, gpu_name=spec.name, world_size=world_size, precision=traced.precision,
        channels_last=traced.channels_last, resolution=it.resolution, batch=traced.batch,
        micro_batch=it.micro_batch, accum=traced.accum, state=state, phases=phases,
        peak_phase=peak_phase.name, traced_peak=it.peak_bytes, fixed=fixed, predicted=predicted,
        usable=usable, fits=predicted <= usable, fit_micro_batch=fit_micro,
        fit_accum=per_rank // fit_micro if fit_micro else 0, s_per_iter=t_iter, img_per_s=img_per_s,
        s_per_kimg=1000 / img_per_s if img_per_s else 0.0,
        phase_seconds={p.name: phase_seconds(p, spec, eff) for p in it.phases},
        efficiency=spec.measured or "modelled",
    )  # fmt: skip


def planned_peak(cfg: Config, device, world_size: int) -> int | None:
    """The plan's predicted peak for a run starting on `device` (train.plan_check): the GPU kind from
    the device's name; None, with a note, for a GPU the planner has no entry for."""
    import logging

    import torch

    from .gpus import kind_of

    kind = "cpu" if device.type != "cuda" else kind_of(torch.cuda.get_device_name(device))
    if kind is None:
        logging.getLogger(__name__).info(
            "train.plan_check: no plan for %s", torch.cuda.get_device_name(device)
        )
        return None
    plan = make_plan(cfg, kind, world_size)
    return plan.traced_peak if kind == "cpu" else plan.predicted
