"""Data where clusters keep it: a local folder, or a URL read through fsspec.

`data.path` may be `http(s)://host/prefix`, `s3://bucket/prefix` or `gs://bucket/prefix` (any
fsspec protocol whose package is installed: s3fs, gcsfs). Credentials come from the store's usual
environment variables and config files (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL,
~/.aws, GOOGLE_APPLICATION_CREDENTIALS), never from the recipe.

A remote shard is fetched whole into memory and checked against the manifest's size and sha256
before a sample leaves it, so a truncated transfer can never reach training. Transient faults
(connection reset, timeout, HTTP 408/429/5xx, a short or corrupt body) are retried with exponential
backoff; a shard still unreadable after `retries` attempts raises `ShardUnreadable`, which the loader
counts and skips.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path

from .manifest import DataError

log = logging.getLogger(__name__)

URL_SCHEMES = ("http://", "https://", "s3://", "gs://", "gcs://")


class ShardUnreadable(DataError):
    """A remote file that stayed unreadable (or failed its checksum) through every retry."""


def is_url(path: str | Path) -> bool:
    return isinstance(path, str) and path.startswith(URL_SCHEMES)


def join(root: str | Path, name: str) -> str | Path:
    """`root/name` for a folder or a URL (pathlib would fold a URL's `//`); a `name` that is a URL or
    an absolute path (a manifest from `bigtrain index` may point anywhere) is returned as it is."""
    if is_url(name) or Path(name).is_absolute():
        return name if is_url(name) else Path(name)
    return f"{str(root).rstrip('/')}/{name}" if is_url(root) else Path(root) / name


def transient(e: BaseException) -> bool:
    """Worth another try: the network or the server, not a missing object or a refused credential."""
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    status = getattr(e, "status", None) or getattr(e, "code", None)  # aiohttp / urllib responses
    if isinstance(status, int):
        return status >= 500 or status in (408, 429)
    if isinstance(e, (ConnectionError, TimeoutError, OSError, ChecksumMismatch)):
        return True
    return type(e).__module__.split(".")[0] in ("aiohttp", "botocore", "aiobotocore", "urllib3", "asyncio")


class ChecksumMismatch(IOError):
    """A body whose size or sha256 is not the manifest's: truncated or corrupted in transit."""


def filesystem(url: str):
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec ships with the base install
        raise DataError(f"reading {url} needs fsspec (pip install fsspec)") from None
    try:
        fs, _ = fsspec.core.url_to_fs(url)
    except ImportError as e:
        package = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}.get(url.split("://")[0], str(e))
        raise DataError(f"reading {url} needs the {package} package (pip install {package})") from None
    return fs


class RemoteReader:
    """Fetches whole files from URLs with retries; `retries_done` counts the retries it needed."""

    def __init__(self, retries: int = 4, backoff_s: float = 0.5, max_backoff_s: float = 30.0):
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.retries_done = 0

    def read(self, url: str, sha256: str | None = None, size: int | None = None) -> bytes:
        """The file's bytes, checked against `size` and `sha256` when given."""
        for attempt in range(self.retries + 1):
            try:
                data = filesystem(url).cat_file(url)
                if size is not None and len(data) != size:
                    raise ChecksumMismatch(f"{len(data)} bytes arrived, the manifest says {size}")
                if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
                    raise ChecksumMismatch("the bytes do not match the manifest's sha256")
                return data
            except Exception as e:
                if not transient(e):
                    raise ShardUnreadable(f"{url} cannot be read: {type(e).__name__}: {e}") from None
                if attempt == self.retries:
                    raise ShardUnreadable(
                        f"{url} stayed unreadable after {self.retries} retries: {type(e).__name__}: {e}"
                    ) from None
                self.retries_done += 1
                wait = min(self.backoff_s * 2**attempt, self.max_backoff_s)
                log.warning(
                    "reading %s failed (%s: %s); retry %d in %.1f s",
                    url,
                    type(e).__name__,
                    e,
                    attempt + 1,
                    wait,
                )
                time.sleep(wait)
        raise AssertionError("unreachable")


def read_text(url: str, retries: int = 4) -> str:
    """A small file (a manifest), with the same retries."""
    return RemoteReader(retries).read(url).decode()


def read_bytes(path: str | Path, retries: int = 4) -> bytes:
    """A whole small file from a folder or a URL."""
    return RemoteReader(retries).read(path) if is_url(path) else Path(path).read_bytes()


def basename(path: str | Path) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def node_cache_dir(data_path: str | Path) -> Path:
    """This dataset's folder in the node-local cache ($BIGTRAIN_CACHE, default ~/.cache/bigtrain)."""
    root = Path(os.environ.get("BIGTRAIN_CACHE", Path.home() / ".cache" / "bigtrain"))
    digest = hashlib.sha1(str(data_path).rstrip("/").encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", basename(data_path))[:60]
    return root / "datasets" / f"{name}-{digest}"


def eval_cache_dir(data_path: str | Path) -> Path:
    """Where evaluation keeps what it derives from a dataset (classifier, reference statistics): beside
    local shards, or for a URL in the node-local cache."""
    return node_cache_dir(data_path) / "eval" if is_url(data_path) else Path(data_path) / "eval"


def shard_cache_dir(data_path: str) -> Path:
    """The default folder of the DALI loader's shard cache for a URL dataset (data.cache_dir)."""
    return node_cache_dir(data_path) / "shards"


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write a whole file so that a reader sees the old content or the new, never a part: a local
    file through a renamed temp file; an object in a store is replaced in one PUT."""
    if is_url(path):
        filesystem(str(path)).pipe_file(str(path), data)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
