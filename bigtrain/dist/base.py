"""The Backend interface: what the trainer asks of a distributed engine, and the one-process default.

The trainer never touches DDP, DeepSpeed or Accelerate directly. It asks the backend for
- the modules to call in each phase (`d_train`, `g_train`, and the plain `G`/`D` for no-grad or
  frozen use: D is called unwrapped in the G step, so none of D's gradients are all-reduced there),
- `backward`, `step`, `zero_grad` per network, `accumulating` for micro-batches that must not sync,
- collectives (its `Collectives` base: sums, means, gathers, flags, buffer broadcast, barrier); code
  that has no backend (`bigtrain eval`'s metric suite) takes them from the default process group,
- optimizer state for checkpoints.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..config import Config, ConfigError


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA GPU is available here; use train.device=cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def launch_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun / deepspeed / accelerate launchers, else (0, 1, 0)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


class Collectives:
    """Every collective bigtrain calls, over the default process group; each is the identity (no
    communication) for one process. Every rank must make the same calls in the same order."""

    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank, self.world_size, self.device = rank, world_size, device

    @classmethod
    def of_process_group(cls, device: torch.device) -> Collectives:
        """The default process group's ranks, or one process when there is none."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), device)
        return cls(0, 1, device)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks, in place."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over ranks, as a new tensor (`tensor` is left as it is)."""
        if not self.distributed:
            return tensor
        total = tensor.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total / self.world_size

    def all_gather_object(self, obj: object) -> list:
        """Every rank's (picklable) `obj`, in rank order."""
        if not self.distributed:
            return [obj]
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """All ranks' rows concatenated in rank order, on the CPU (row counts may differ by rank)."""
        if not self.distributed:
            return rows
        counts = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(counts, torch.tensor([rows.shape[0]], device=self.device))
        most = int(max(c.item() for c in counts))
        padded = torch.zeros(most, *rows.shape[1:], dtype=rows.dtype, device=self.device)
        padded[: rows.shape[0]] = rows.to(self.device)
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded)
        return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts)]).cpu()

    def flags_any(self, *flags: bool | torch.Tensor) -> list[bool]:
        """Each flag true on any rank -> true on every rank: one small collective and exactly one host
        sync (one `.item()`). Python flags become device tensors by a fill, never a host-to-device copy
        (a blocking copy would be a second sync on CUDA)."""
        t = torch.stack(
            [
                f.to(self.device, torch.float32).reshape(())
                if isinstance(f, torch.Tensor)
                else torch.full((), float(f), device=self.device)
                for f in flags
            ]
        )
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        bits = torch.pow(2.0, torch.arange(len(flags), device=self.device, dtype=torch.float32))
        code = int((t.clamp(0, 1) * bits).sum().item())
        return [bool(code >> i & 1) for i in range(len(flags))]

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BN statistics) to every rank, so replicas are identical at checkpoints."""
        if self.distributed:
            for b in module.buffers():
                dist.broadcast(b, src=0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


class Backend(Collectives):
    """One process, no wrapping: also what every backend does at world size 1 (no overhead)."""

    name = "single"
    supports_grad_hooks = True  # p.grad is the full gradient after backward (closed-form regularizers)

    def __init__(self, cfg: Config):
        self.cfg = cfg
        rank, world_size, self.local_rank = launch_env()
        super().__init__(rank, world_size, pick_device(cfg.train.device, self.local_rank))

    # ----------------------------------------------------------------- wrapping

    def convert(self, G: nn.Module) -> nn.Module:
        """Cross-replica BatchNorm for G (BigGAN's "cross-replica BN") when `dist.sync_bn`."""
        if self.distributed and self.cfg.dist.sync_bn:
            if self.device.type != "cuda":
                raise ConfigError("dist.sync_bn=true needs CUDA GPUs (torch's SyncBatchNorm has no CPU kernel)")
            return nn.SyncBatchNorm.convert_sync_batchnorm(G)
        return G

    def wrap(self, G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer) -> None:
        self.G, self.D, self.opt_g, self.opt_d = G, D, opt_g, opt_d
        self.g_train, self.d_train = G, D

    def train_module(self, which: str) -> nn.Module:
        """The (wrapped) network trained in step `which` ("g" or "d")."""
        return self.g_train if which == "g" else self.d_train

    def optimizer(self, which: str) -> torch.optim.Optimizer:
        return self.opt_g if which == "g" else self.opt_d

    # ----------------------------------------------------------------- one optimizer step

    def accumulating(self, which: str, last: bool):
        """Context for one micro-batch; non-last micro-batches skip the gradient all-reduce."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, which: str) -> None:
        loss.backward()

    def step(self, which: str) -> None:
        self.optimizer(which).step()

    def zero_grad(self, which: str) -> None:
        self.optimizer(which).zero_grad(set_to_none=True)

    # ----------------------------------------------------------------- checkpoint state

    def optimizer_state(self) -> dict:
        return {"opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict()}

    def load_optimizer_state(self, state: dict) -> None:
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])

    def save_engine_state(self, folder: Path) -> None:
        """Engines that shard state across ranks write their parts into the checkpoint's staging
        folder here (every rank calls it); the others keep everything in state.pt."""

    def load_engine_state(self, folder: Path) -> None:
        pass

    def close(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
