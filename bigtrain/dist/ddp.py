"""torch DistributedDataParallel: NCCL on GPU, gloo on CPU, initialized from torchrun's environment.

G and D are wrapped separately. The D step calls the wrapped D (its gradients are all-reduced) and a
plain G under no_grad; the G step calls the wrapped G and the plain, frozen D, so no D gradient is
computed or communicated there. Micro-batches before the last one run under `no_sync`.
"""

from __future__ import annotations

import datetime
import inspect

import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Config
from .base import Backend


class DDPBackend(Backend):
    name = "ddp"

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=cfg.dist.timeout_minutes))
        if self.distributed:
            assert dist.get_world_size() == self.world_size, "WORLD_SIZE disagrees with the process group"
            assert dist.get_rank() == self.rank, "RANK disagrees with the process group"

    def wrap(self, G, D, opt_g, opt_d) -> None:
        super().wrap(G, D, opt_g, opt_d)
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # Buffers are not broadcast at every forward: SN vectors follow identical weights on every
            # rank, and BN statistics are synchronized at checkpoints and before evaluation.
            no_buffer_sync = (
                {"forward_sync_buffers": False}  # newer torch: the same switch, renamed
                if "forward_sync_buffers" in inspect.signature(DDP).parameters
                else {"broadcast_buffers": False}
            )
            self.g_train = DDP(G, device_ids=ids, gradient_as_bucket_view=True, **no_buffer_sync)
            self.d_train = DDP(D, device_ids=ids, gradient_as_bucket_view=True, **no_buffer_sync)

    def accumulating(self, which: str, last: bool):
        if self.distributed and not last:
            return self.train_module(which).no_sync()
        return super().accumulating(which, last)


