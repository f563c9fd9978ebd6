"""Under torchrun: each rank reduces the statistics of its slice of a fixed feature set; rank 0 writes
the combined mean/cov and the single-process ones to OUT (a .pt file)."""

import sys

import torch
import torch.distributed as dist

from bigtrain.eval.frechet import FeatureStats, all_reduce_stats

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
features = torch.randn(1001, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1
mine = FeatureStats.empty(16)
mine.add(features[rank::world])


def reduce_sum(t):
    dist.all_reduce(t)
    return t


combined = all_reduce_stats(mine, reduce_sum, torch.device("cpu"))
if rank == 0:
    whole = FeatureStats.empty(16)
    whole.add(features)
    torch.save(
        {
            "count": combined.count,
            "combined": (combined.mean, combined.cov),
            "whole": (whole.mean, whole.cov),
        },
        sys.argv[1],
    )
dist.destroy_process_group()
