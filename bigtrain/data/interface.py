"""What the trainer asks of a loader: every loader (CPU shards, DALI, streaming DALI) declares it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from .manifest import Manifest


@dataclass(frozen=True)
class StreamSpec:
    """What every loader is asked for: rank `rank` of `world_size`'s part of the shards at `path`, in
    batches of `batch_size` images at `resolution` on `device`, ordered and shuffled from `seed`; and how
    shards behind a URL are read. Each loader takes one, plus its own workers (and cache) settings."""

    path: str | Path
    batch_size: int
    resolution: int
    device: torch.device | str = "cpu"
    rank: int = 0
    world_size: int = 1
    seed: int = 0
    shuffle_buffer: int = 512  # samples held for in-stream shuffling (per worker); 0: shard order
    hflip: bool = False  # random horizontal flip
    verify_checksums: bool = True  # sha256 of this rank's local shards against the manifest, at start
    retries: int = 4  # a remote shard: attempts after a transient fault
    retry_backoff_s: float = 0.5  # the first wait, doubled per retry
    max_bad_shards: float = 0.1  # the fraction of a worker's shards that may stay unreadable per epoch


@runtime_checkable
class Loader(Protocol):
    """An infinite, resumable stream of `(x, y)` batches: x float32 in [-1, 1] (B, 3, R, R) and y int64
    (B,), on the training device. A benchmark's stand-in loader needs the same members."""

    manifest: Manifest

    def __iter__(self) -> Loader: ...

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]: ...

    def state_dict(self) -> dict:
        """The position, for a checkpoint."""
        ...

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position `state_dict` gave."""
        ...

    def reconfigure(self, resolution: int | None = None, batch_size: int | None = None) -> None:
        """A new training phase's resolution or batch size, continuing from the same position."""
        ...

    def close(self) -> None:
        """Stop reading ahead (worker processes, threads, a shard cache); the position stays."""
        ...

    @property
    def skipped_corrupt(self) -> int: ...

    @property
    def read_retries(self) -> int: ...

    @property
    def skipped_shards(self) -> int: ...
