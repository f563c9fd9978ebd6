"""File checksums: one block-wise hasher for shards, checkpoints, feature-network weights and provenance."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes, read in blocks (hashlib.file_digest)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algorithm).hexdigest()


def cached_file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """file_digest, computed once per (path, size, modification time): large weights hashed per eval."""
    st = Path(path).stat()
    return _cached(str(path), algorithm, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=8)
def _cached(path: str, algorithm: str, size: int, mtime_ns: int) -> str:
    return file_digest(path, algorithm)
