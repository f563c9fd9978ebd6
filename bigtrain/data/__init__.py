"""Shards (prepare, manifest) and loaders that stream `(x, y)` batches from them."""

from __future__ import annotations

import logging

import torch

from ..config import Config
from .dali import DaliLoader, dali_available
from .loader import ShardLoader
from .manifest import DataError, Manifest, load_manifest
from .writer import prepare

__all__ = ["DaliLoader", "DataError", "Manifest", "ShardLoader", "load_manifest", "make_loader", "prepare"]

log = logging.getLogger(__name__)


def make_loader(
    cfg: Config, batch_size: int, device: torch.device, rank: int = 0, world_size: int = 1
) -> ShardLoader | DaliLoader:
    """The loader `data.loader` names; `auto` takes DALI on CUDA where it is installed."""
    d = cfg.data
    kind = d.loader
    if kind == "auto":
        kind = "dali" if device.type == "cuda" and dali_available() else "webdataset"
        log.info("data.loader=auto: using the %s loader on %s", kind, device)
    common = dict(
        path=d.path, batch_size=batch_size, resolution=cfg.model.resolution, device=device, rank=rank,
        world_size=world_size, seed=cfg.train.seed, shuffle_buffer=d.shuffle_buffer, hflip=d.hflip,
        verify_checksums=d.verify_checksums,
    )  # fmt: skip
    if kind == "dali":
        return DaliLoader(num_threads=max(d.num_workers, 1), **common)
    return ShardLoader(num_workers=d.num_workers, **common)
