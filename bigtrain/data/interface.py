"""What the trainer asks of a loader: every loader (CPU shards, DALI, streaming DALI) declares it."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .manifest import Manifest


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

    @property
    def skipped_corrupt(self) -> int: ...

    @property
    def read_retries(self) -> int: ...

    @property
    def skipped_shards(self) -> int: ...
