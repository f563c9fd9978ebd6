"""Shards (prepare, manifest) and loaders that stream `(x, y)` batches from them."""

from __future__ import annotations

import logging

import torch

from ..config import Config
from .dali import DaliLoader, dali_available
from .dali_stream import DaliStreamLoader
from .index import is_shard_pattern, manifest_for_pattern
from .interface import Loader, StreamSpec
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
    "StreamSpec",
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
    spec = StreamSpec(
        d.path, batch_size, cfg.model.resolution, device, rank, world_size, cfg.train.seed, d.shuffle_buffer,
        d.hflip, d.verify_checksums, d.retries, d.retry_backoff_s, d.max_bad_shards,
    )  # fmt: skip
    if kind == "dali" and (is_url(d.path) or any(is_url(s.name) for s in load_manifest(d.path).shards)):
        cache = d.cache_dir or shard_cache_dir(d.path)
        return DaliStreamLoader(spec, max(d.num_workers, 1), cache, int(d.cache_gb * 2**30))
    if kind == "dali":
        return DaliLoader(spec, max(d.num_workers, 1))
    return ShardLoader(spec, d.num_workers)
