"""A deterministic in-memory data stream for the torchrun scripts: random images and labels sliced by
slot like the trainer's latents (slot = call * world + rank), so 1 process x accum 2 sees exactly what
2 processes x accum 1 see."""

import torch

from bigtrain.data.manifest import Manifest
from bigtrain.seeds import seed_for


class SlotLoader:
    def __init__(self, batch: int, rank: int, world: int):
        self.batch, self.rank, self.world, self.calls = batch, rank, world, 0
        self.manifest = Manifest("slots", 32, "png", [str(i) for i in range(10)], [])
        self.skipped_corrupt = 0

    def __next__(self):
        g = torch.Generator().manual_seed(seed_for(99, self.calls * self.world + self.rank))
        self.calls += 1
        x = torch.rand(self.batch, 3, 32, 32, generator=g) * 2 - 1
        return x, torch.randint(0, 10, (self.batch,), generator=g)

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]

    def close(self) -> None:
        pass
