"""Shards (prepare, manifest) and loaders that stream `(x, y)` batches from them."""

from __future__ import annotations

import logging

import torch

from ..config import Config
from .dali import DaliLoader, dali_available
from .dali_stream import DaliStreamLoader
from .index import is_shard_pattern, manifest_for_pattern
from .interface import Loader
from .loader import ShardLoader
from .manifest import DataError, Manifest, load_manifest
from .remote import is_url, shard_cache_dir
from .writer import prepare

__all__ = [
    "DaliLoader",
    "DaliStreamLoader",
    "DataError",
    "Loader",
    "Manifest",
    "ShardLoader",
    "load_manifest",
    "make_loader",
    "prepare",
]

log = logging.getLogger(__name__)


def make_loader(
    cfg: Config, batch_size: int, device: torch.device, rank: int = 0, world_size: int = 1
) -> Loader:
    """The loader `data.loader` names; `auto` takes DALI on CUDA where it is installed. Shards behind
    a URL are streamed: by the CPU loader, or for DALI through a node-local shard cache."""
    d = cfg.data
    if is_shard_pattern(d.path):  # shards without a manifest: indexed once, then read as usual
        d.path = manifest_for_pattern(d.path)
    kind = d.loader
    if kind == "auto":
        kind = "dali" if device.type == "cuda" and dali_available() else "webdataset"
        log.info("data.loader=auto: using the %s loader on %s", kind, device)
    common = dict(
        path=d.path, batch_size=batch_size, resolution=cfg.model.resolution, device=device, rank=rank,
        world_size=world_size, seed=cfg.train.seed, shuffle_buffer=d.shuffle_buffer, hflip=d.hflip,
        verify_checksums=d.verify_checksums,
    )  # fmt: skip
    remote = dict(retries=d.retries, retry_backoff_s=d.retry_backoff_s, max_bad_shards=d.max_bad_shards)
    if kind == "dali" and (is_url(d.path) or any(is_url(s.name) for s in load_manifest(d.path).shards)):
        cache = d.cache_dir or shard_cache_dir(d.path)
        return DaliStreamLoader(num_threads=max(d.num_workers, 1), cache_dir=cache,
                                cache_bytes=int(d.cache_gb * 2**30), **remote, **common)  # fmt: skip
    if kind == "dali":
        return DaliLoader(num_threads=max(d.num_workers, 1), **common)
    return ShardLoader(num_workers=d.num_workers, **remote, **common)
