"""Time of the traced operators on a GPU kind: each operator takes the longer of its FLOPs at the
tensor-core rate and its bytes at the memory rate (both scaled by the fitted efficiencies), plus a
fixed cost per operator. Collectives (DDP's all-reduce, overlapped with backward) and the input
pipeline are not modelled."""

from __future__ import annotations

import torch

from .gpus import GPU, Efficiency
from .trace import OpRecord, PhaseTrace

CONVOLUTIONS = ("aten.convolution", "aten.convolution_backward", "aten._convolution")


def op_seconds(op: OpRecord, gpu: GPU, eff: Efficiency) -> float:
    if op.dtype in (torch.bfloat16, torch.float16):
        peak = gpu.bf16_flops
    elif op.name in CONVOLUTIONS:
        peak = gpu.tf32_flops  # cuDNN's default for fp32 convolutions
    else:
        peak = gpu.fp32_flops
    compute = op.flops / (peak * eff.matmul) if op.flops else 0.0
    memory = op.bytes / (gpu.bandwidth * eff.memory)
    return max(compute, memory) + eff.op_overhead_s


def phase_seconds(phase: PhaseTrace, gpu: GPU, eff: Efficiency) -> float:
    return sum(op_seconds(op, gpu, eff) for op in phase.ops)


def iteration_seconds(phases: list[PhaseTrace], gpu: GPU, eff: Efficiency) -> float:
    """One training iteration on average: main steps every iteration, a lazy step 1/interval of them;
    sampling (interval 0) is not part of the iteration."""
    return sum(phase_seconds(p, gpu, eff) / p.interval for p in phases if p.interval > 0)
