"""Hugging Face Accelerate: `accelerator.prepare` on G, D and both optimizers, so `accelerate launch`
works with the user's own accelerate config (see launch/accelerate.yaml).

bigtrain's loaders already give every rank its own shards, so the loader is not passed to `prepare`
(Accelerate would shard an already sharded stream). Mixed precision stays bigtrain's own bf16 autocast.
"""

from __future__ import annotations

from ..config import Config
from .base import Backend


class AccelerateBackend(Backend):
    name = "accelerate"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        from accelerate import Accelerator

        # cpu=True is what makes a multi-process CPU run synchronise (else each rank trains alone).
        self.accelerator = Accelerator(cpu=self.device.type == "cpu", mixed_precision="no")
        if self.accelerator.num_processes != self.world_size:
            raise RuntimeError(f"Accelerate sees {self.accelerator.num_processes} processes, WORLD_SIZE says {self.world_size}")

    def wrap(self, G, D, opt_g, opt_d) -> None:
        super().wrap(G, D, opt_g, opt_d)
        self.g_train, self.d_train, self.prepared_g, self.prepared_d = self.accelerator.prepare(G, D, opt_g, opt_d)

    def optimizer(self, which: str):
        return self.prepared_g if which == "g" else self.prepared_d

    def accumulating(self, which: str, last: bool):
        if self.distributed and not last:
            return self.accelerator.no_sync(self.train_module(which))
        return super().accumulating(which, last)

    def backward(self, loss, which: str) -> None:
        self.accelerator.backward(loss)

    def close(self) -> None:
        self.accelerator.end_training()
