"""`bigtrain index`: a manifest for WebDataset shards that other tools wrote.

`webdataset.ShardWriter`, `tarp` or img2dataset write `name-{000000..001281}.tar` with `.jpg` (or
`.png`, `.webp`) and `.cls` (or a label inside `.json`) members. `index` reads every shard once
(locally or from a URL, with the loader's retries) and writes bigtrain's manifest: per shard its
count, sha256 and size; the classes found; the resolution (the smallest image side, read from the
image headers only). Shard names in the manifest are the URLs or absolute paths given, so the
manifest may live anywhere: `data.path` is the folder (or URL) holding it.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from .loader import sample_label
from .manifest import MANIFEST_NAME, DataError, Manifest, ShardInfo
from .remote import is_url, join, read_bytes, write_bytes

log = logging.getLogger(__name__)


def expand_shards(source: str) -> list[str]:
    """A brace pattern (`data-{000..099}.tar`) or a local folder of `.tar` files -> shard paths/URLs."""
    from braceexpand import braceexpand

    if not is_url(source) and Path(source).is_dir():
        shards = sorted(str(p.resolve()) for p in Path(source).glob("*.tar"))
        if not shards:
            raise DataError(f"{source} holds no .tar shards")
        return shards
    shards = list(braceexpand(source))
    if not is_url(source):
        shards = [str(Path(s).resolve()) for s in shards]
    return shards


def index_shards(
    source: str,
    out: str,
    image_keys: tuple[str, ...] = ("jpg", "jpeg", "png", "webp"),
    label_key: str = "cls",
    name: str = "",
    retries: int = 4,
) -> Manifest:
    shards = expand_shards(source)
    infos, labels, skipped = [], set(), []
    smallest, nolabel, noimage, image_format = None, 0, 0, ""
    for url in tqdm(shards, desc="index shards", unit="shard"):
        data = read_bytes(url, retries)
        count = 0
        files = wds.tariterators.tar_file_expander([{"url": url, "stream": io.BytesIO(data)}])
        for sample in wds.tariterators.group_by_keys(files):
            key = next((k for k in image_keys if k in sample), None)
            if key is None:
                noimage += 1
                skipped.append({"file": f"{url}#{sample.get('__key__')}", "reason": "no image member"})
                continue
            image_format = image_format or key
            try:
                width, height = Image.open(io.BytesIO(sample[key])).size  # the header only
            except Exception as e:
                skipped.append({"file": f"{url}#{sample['__key__']}", "reason": f"unreadable image: {e}"})
                count += 1  # still in the shard: the loader counts it as corrupt when it gets there
                continue
            smallest = min(width, height) if smallest is None else min(smallest, width, height)
            label = sample_label(sample, label_key)
            if label is None:
                nolabel += 1
            else:
                labels.add(label)
            count += 1
        infos.append(ShardInfo(url, count, hashlib.sha256(data).hexdigest(), len(data)))
    if smallest is None:
        raise DataError(f"no image with a key among {', '.join(image_keys)} in the shards of {source}")
    if labels and min(labels) < 0:
        raise DataError(f"labels must be class indices from 0; found {min(labels)}")
    if nolabel and labels:
        log.warning("%d samples have no %s label: the loader skips and counts them", nolabel, label_key)
        skipped.append({"file": source, "reason": f"{nolabel} samples without a {label_key} label"})
    classes = [str(c) for c in range(max(labels) + 1)] if labels else []
    manifest = Manifest(
        name=name or Path(str(out).rstrip("/")).name,
        resolution=smallest,
        image_format=image_format,
        classes=classes,
        shards=infos,
        num_skipped=noimage + (nolabel if labels else 0),
        skipped=skipped,
        source=source,
        label_key=label_key,
        image_keys=list(image_keys),
    )
    write_bytes(join(out, MANIFEST_NAME), manifest.to_json().encode())
    return manifest


def is_shard_pattern(path: str | Path) -> bool:
    """`data.path` given as shards rather than a manifest's folder: a brace pattern or one .tar."""
    return isinstance(path, str) and ("{" in path or path.endswith(".tar"))


def manifest_for_pattern(
    pattern: str, image_keys=("jpg", "jpeg", "png", "webp"), label_key: str = "cls"
) -> str:
    """The folder of the manifest for a brace pattern of shards, indexed once into the node-local cache
    (a later run with the same pattern reuses it). Runs on many ranks index concurrently but write the
    same manifest atomically; `bigtrain index` beforehand spares that."""
    from .remote import node_cache_dir

    folder = node_cache_dir(pattern) / "manifest"
    if not (folder / MANIFEST_NAME).is_file():
        log.info("data.path is a shard pattern: indexing %s once into %s", pattern, folder)
        index_shards(
            pattern,
            str(folder),
            tuple(image_keys),
            label_key,
            name=Path(pattern.split("{")[0].rstrip("-_/")).name,
        )
    return str(folder)
