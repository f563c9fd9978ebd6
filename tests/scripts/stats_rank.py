"""Under torchrun: each rank holds its share of a fixed feature set; rank 0 writes the combined FID
statistics and the gathered features (for KID and precision/recall) beside the single-process ones."""

import sys

import torch
import torch.distributed as dist

from bigtrain.dist.base import Collectives
from bigtrain.eval.frechet import FeatureStats, all_reduce_stats
from bigtrain.eval.metrics import kernel_inception_distance, precision_recall
from bigtrain.eval.suite import share

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
features = torch.randn(1001, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1
real = torch.randn(400, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 + 1.5
start = sum(share(len(features), r, world) for r in range(rank))
mine_rows = features[start : start + share(len(features), rank, world)]
mine = FeatureStats.empty(16)
mine.add(mine_rows)
collectives = Collectives.of_process_group(torch.device("cpu"))
combined = all_reduce_stats(mine, collectives.all_reduce_sum, torch.device("cpu"))
gathered = collectives.gather_rows(mine_rows)
if rank == 0:
    whole = FeatureStats.empty(16)
    whole.add(features)
    torch.save(
        {
            "count": combined.count,
            "combined": (combined.mean, combined.cov),
            "whole": (whole.mean, whole.cov),
            "gathered_equal": torch.equal(gathered, features),
            "kid": (
                kernel_inception_distance(real, gathered, 5, 300),
                kernel_inception_distance(real, features, 5, 300),
            ),
            "pr": (precision_recall(real, gathered), precision_recall(real, features)),
        },
        sys.argv[1],
    )
dist.destroy_process_group()
