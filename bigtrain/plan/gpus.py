"""The GPU kinds a plan is made for: memory, peak rates, fixed memory terms, and the efficiency factors
of the roofline. Every efficiency is "modelled" (fitted to the anchors in the README's "Plan before
you launch") until a measurement on that kind replaces it; `measured` names that measurement."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ConfigError

GiB = 2**30
MiB = 2**20


@dataclass(frozen=True)
class GPU:
    name: str
    memory: int  # bytes torch reports as the device's total memory
    bf16_flops: float  # dense tensor-core peak, FLOP/s
    tf32_flops: float  # fp32 convolutions (cuDNN allows TF32 by default)
    fp32_flops: float  # fp32 matmuls (torch keeps TF32 off for them by default)
    bandwidth: float  # memory bytes/s
    cuda_context: int  # bytes outside the caching allocator: CUDA context, cuBLAS/cuDNN handles
    workspace: int  # cuDNN/cuBLAS workspaces inside the allocator (counted by max_memory_allocated)
    measured: str = ""  # the measurement the efficiencies come from; "" = modelled


GPUS = {
    "h100": GPU("H100 SXM 80GB", int(79.1 * GiB), 989e12, 494e12, 67e12, 3.35e12, 600 * MiB, 512 * MiB),
    "h200": GPU("H200 SXM 141GB", int(139.8 * GiB), 989e12, 494e12, 67e12, 4.8e12, 600 * MiB, 512 * MiB),
    "a100": GPU("A100 SXM 80GB", int(79.2 * GiB), 312e12, 156e12, 19.5e12, 2.0e12, 500 * MiB, 512 * MiB),
    # A CPU run: memory is the host's, no fixed terms; rates of a small server, not fitted.
    "cpu": GPU("CPU (host memory)", 0, 0.2e12, 0.2e12, 0.2e12, 20e9, 0, 0),
}


@dataclass(frozen=True)
class Efficiency:
    """The share of a peak the operators reach, and the fixed cost of one operator (launch, small
    kernels), fitted to the anchors (README: Plan before you launch)."""

    matmul: float  # share of the tensor-core peak reached by convolutions, matmuls and attention
    memory: float  # share of the memory bandwidth reached by elementwise ops, norms and copies
    op_overhead_s: float  # seconds per operator call that no rate explains (launch, tails)
    allocator_slack: float  # caching-allocator rounding and fragmentation: share of the activation peak


# One table for every GPU kind, fitted on H100 anchors (README: Plan before you launch): matmul and
# memory to BigGAN-PyTorch's ImageNet-128 step at batch 256 (0.98 s fp32, 0.728 s bf16: both within
# 0.3%), the slack to its 61.3 GiB fp32 peak. H200 and A100 reuse it until measured there.
_H100_FIT = Efficiency(matmul=0.41, memory=0.45, op_overhead_s=1e-5, allocator_slack=0.15)
EFFICIENCY = {
    "h100": _H100_FIT,
    "h200": _H100_FIT,
    "a100": _H100_FIT,
    "cpu": Efficiency(matmul=0.5, memory=0.5, op_overhead_s=2e-6, allocator_slack=0.0),  # not fitted
}


def gpu_kind(name: str) -> tuple[str, GPU, Efficiency]:
    """The kind named `name` (case-insensitive), or one sentence naming the kinds there are."""
    key = name.lower()
    if key not in GPUS:
        raise ConfigError(f"--gpu {name!r} is not a GPU kind the planner knows: {', '.join(GPUS)}")
    return key, GPUS[key], EFFICIENCY[key]


def host_memory() -> int:
    """This machine's memory in bytes (the `cpu` kind's usable memory)."""
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def kind_of(device_name: str) -> str | None:
    """The kind of a CUDA device from its name ("NVIDIA H100 80GB HBM3" -> "h100"), or None."""
    return next((kind for kind in GPUS if kind != "cpu" and kind in device_name.lower()), None)
