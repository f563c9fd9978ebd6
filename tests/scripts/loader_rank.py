"""Run under torchrun (args: SHARDS OUT webdataset|dali): each rank reads batches from the shards and rank 0 writes what every rank saw."""

import json
import os
import sys

import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bigtrain.data import ShardLoader, StreamSpec  # noqa: E402
from conftest import image_id  # noqa: E402

shards, out = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
loader = ShardLoader(StreamSpec(shards, 10, 8, rank=rank, world_size=world, seed=5), num_workers=2)
ids = [i for _ in range(10) for i in image_id(loader.next_uint8()[0])]  # exactly one epoch per rank
gathered = [None] * world
dist.all_gather_object(gathered, {"rank": rank, "ids": ids})
if rank == 0:
    with open(out, "w") as f:
        json.dump(gathered, f)
dist.destroy_process_group()
