"""Shards (prepare, manifest) and loaders that stream `(x, y)` batches from them."""

from .loader import ShardLoader
from .manifest import DataError, Manifest, load_manifest
from .writer import prepare

__all__ = ["DataError", "Manifest", "ShardLoader", "load_manifest", "prepare"]
