"""The manifest written beside WebDataset shards, and its checks."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..checksums import file_digest

MANIFEST_NAME = "manifest.json"
FORMAT = "bigtrain-shards/1"


class DataError(ValueError):
    """Shards or a manifest that cannot be used, named in the message."""


@dataclass
class ShardInfo:
    name: str
    count: int
    sha256: str
    bytes: int


@dataclass
class Manifest:
    name: str
    resolution: int
    image_format: str
    classes: list[str]
    shards: list[ShardInfo]
    num_skipped: int = 0
    skipped: list[dict] = field(default_factory=list)
    source: str = ""
    format: str = FORMAT
    # Members that hold a sample's image (the first present is used) and its label: `cls`, or
    # `json:FIELD` for a field of the sample's JSON. Shards from `bigtrain index` record their own.
    image_keys: list[str] = field(default_factory=lambda: ["png", "jpg", "jpeg"])
    label_key: str = "cls"

    @property
    def num_samples(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        d = asdict(self)
        d["num_samples"] = self.num_samples
        return json.dumps(d, indent=1)


def load_manifest(folder: str | Path) -> Manifest:
    """The manifest of a shard folder or URL (see remote.py), checked to be bigtrain's."""
    from .remote import ShardUnreadable, is_url, join, read_text

    path = join(folder, MANIFEST_NAME)
    if is_url(folder):
        try:
            text = read_text(str(path))
        except ShardUnreadable as e:
            raise DataError(
                f"{e}; a shard set at a URL needs its manifest: `bigtrain prepare SRC OUT` and upload OUT, "
                "or `bigtrain index SHARDS OUT` for shards made by other tools"
            ) from None
    else:
        if not Path(folder).is_dir():
            raise DataError(
                f"data folder {folder} does not exist; make it with `bigtrain prepare SRC {folder}`"
            )
        if not path.is_file():
            raise DataError(f"{path} does not exist; make the shards with `bigtrain prepare SRC {folder}`")
        text = path.read_text()
    try:
        d = json.loads(text)
        if d.get("format") != FORMAT:
            raise DataError(f"{path} has format {d.get('format')!r}, expected {FORMAT!r}")
        d.pop("num_samples", None)
        d["shards"] = [ShardInfo(**s) for s in d["shards"]]
        return Manifest(**d)
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise DataError(f"{path} is not a valid bigtrain manifest ({e})") from None


def check_shards(folder: str | Path, shards: list[ShardInfo], verify_checksums: bool) -> None:
    """Every named shard exists with its size (cheap) and, if asked, its sha256."""
    for s in shards:
        path = Path(folder) / s.name
        if not path.is_file():
            raise DataError(f"shard {path} named in the manifest is missing")
        if path.stat().st_size != s.bytes:
            raise DataError(f"shard {path} has {path.stat().st_size} bytes, the manifest says {s.bytes}")
        if verify_checksums and file_digest(path) != s.sha256:
            raise DataError(f"shard {path} does not match its sha256 in the manifest (corrupted or replaced)")
