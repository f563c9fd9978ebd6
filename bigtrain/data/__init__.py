"""Shards (prepare, manifest) and loaders that stream `(x, y)` batches from them."""

from __future__ import annotations

import logging

import torch

from ..config import Config
from .dali import DaliLoader, dali_available
from .loader import ShardLoader
from .manifest import DataError, Manifest, load_manifest
from .remote import is_url
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
        kind = "dali" if device.type == "cuda" and dali_available() and not is_url(d.path) else "webdataset"
        log.info("data.loader=auto: using the %s loader on %s", kind, device)
    if kind == "dali" and is_url(d.path):
        raise DataError(
            f"data.loader=dali reads local files, and data.path is the URL {d.path}; use data.loader=webdataset "
            "(or auto), which streams shards from it, or copy the shards to a local folder"
        )
    common = dict(
        path=d.path, batch_size=batch_size, resolution=cfg.model.resolution, device=device, rank=rank,
        world_size=world_size, seed=cfg.train.seed, shuffle_buffer=d.shuffle_buffer, hflip=d.hflip,
        verify_checksums=d.verify_checksums,
    )  # fmt: skip
    if kind == "dali":
        return DaliLoader(num_threads=max(d.num_workers, 1), **common)
    return ShardLoader(num_workers=d.num_workers, retries=d.retries, retry_backoff_s=d.retry_backoff_s,
                       max_bad_shards=d.max_bad_shards, **common)  # fmt: skip
