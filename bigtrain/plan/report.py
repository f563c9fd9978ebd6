"""The plan as a table and one JSON line."""

from __future__ import annotations

import json

from .gpus import EFFICIENCY
from .planner import Plan


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:8.2f} GiB"


def table(plan: Plan) -> str:
    rows = [
        f"plan for {plan.gpu_name}, {plan.world_size} rank(s), per rank: batch {plan.batch} = "
        f"{plan.world_size} ranks x micro-batch {plan.micro_batch} x accum {plan.accum}, "
        f"{plan.resolution}x{plan.resolution}, {plan.precision}{', channels_last' if plan.channels_last else ''}",
        "",
        "state (per rank)",
        *(f"  {name:<34}{gib(v)}" for name, v in plan.state.items()),
        "peak of live tensors per phase (state included)",
        *(
            f"  {name:<34}{gib(v)}{'  <- peak' if name == plan.peak_phase else ''}"
            for name, v in plan.phases.items()
        ),
        "fixed terms",
        *(f"  {name:<34}{gib(v)}" for name, v in plan.fixed.items()),
        f"  {'CUDA context (outside the allocator)':<34}{gib(0)}" if plan.gpu == "cpu" else "",
        f"predicted peak (allocated)          {gib(plan.predicted)}",
        f"usable memory                       {gib(plan.usable)}   -> {'fits' if plan.fits else 'DOES NOT FIT'}",
        f"largest micro-batch that fits       {plan.fit_micro_batch:>8} (accum {plan.fit_accum} keeps batch {plan.batch})"
        if plan.fit_micro_batch
        else "largest micro-batch that fits       none: not even one image per rank",
        "",
        f"time ({plan.efficiency}: roofline x efficiency {EFFICIENCY[plan.gpu]})",
        *(f"  {name:<34}{s * 1000:10.1f} ms" for name, s in plan.phase_seconds.items()),
        f"  per iteration                     {plan.s_per_iter:10.3f} s",
        f"  throughput                        {plan.img_per_s:10.1f} img/s  ({plan.s_per_kimg:.2f} s/kimg)",
    ]
    return "\n".join(r for r in rows if r != "")


def json_line(plan: Plan) -> str:
    return json.dumps({"plan": plan.to_json()}, default=str)
