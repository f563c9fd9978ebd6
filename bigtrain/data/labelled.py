"""The labelled subset of a semi-supervised run, and its held-out set, chosen from the shards alone.

Every example gets a priority u in [0, 1) from sha256(seed, its shard's name, its sample key): a
function of the example and the seed only (`data.labelled_seed`), so every rank, worker count and
stream order chooses the same examples. The labelled subset is the `per_class` examples of lowest
priority in each class (Salimans et al. 2016's MNIST: 10 of each digit) or, with `fraction`, every
example whose u < fraction (about that fraction of each class, exactly reproducible). The held-out set
is the `held_out` examples of highest priority among the others of the same shards (images whose labels
no loss reads), or of another shard folder's (a test split). One pass over the shards keeps the encoded
images of those few only; they are decoded as the training resolution needs them, as the loader does.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from .images import BadImage, decode_rgb, to_hwc_uint8
from .loader import sample_label
from .manifest import DataError, Manifest, load_manifest
from .remote import RemoteReader, is_url, join

log = logging.getLogger(__name__)


def priority(seed: int, shard: str, key: str) -> float:
    """u in [0, 1): the example's place in the seeded order that picks the labelled and held-out sets."""
    digest = hashlib.sha256(f"{seed}/{shard}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass
class Examples:
    """Encoded images with their labels, in priority order; `decoded` gives them at a resolution."""

    images: list[bytes] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # "shard/key" of each, for messages and tests

    def __len__(self) -> int:
        return len(self.labels)

    def decoded(self, resolution: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """(N, 3, R, R) uint8 of images[start:stop], resized as the shard loader resizes."""
        arrays = [to_hwc_uint8(decode_rgb(b), resolution) for b in self.images[start:stop]]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _samples(path: str | Path, manifest: Manifest, retries: int):
    """(shard name, sample) of every shard in manifest order."""
    reader = RemoteReader(retries)
    for shard in manifest.shards:
        url = join(path, shard.name)
        if is_url(str(url)):
            stream = io.BytesIO(reader.read(str(url), shard.sha256, shard.bytes))
        else:
            stream = open(url, "rb")  # noqa: SIM115 (closed below)
        try:
            files = wds.tariterators.tar_file_expander([{"url": str(url), "stream": stream}])
            for sample in wds.tariterators.group_by_keys(files):
                yield shard.name, sample
        finally:
            stream.close()


def _candidates(path, manifest: Manifest, seed: int, retries: int):
    """(priority, name, label, image bytes) of every labelled example with an image."""
    for shard, sample in _samples(path, manifest, retries):
        label = sample_label(sample, manifest.label_key)
        image = next((sample[k] for k in manifest.image_keys if k in sample), None)
        if label is None or image is None:
            continue
        key = sample["__key__"]
        yield priority(seed, shard, key), f"{shard}/{key}", label, image


def _decodable(kept: list[tuple], what: str) -> list[tuple]:
    """The kept examples whose image decodes (a bad one is left out, with a warning)."""
    good = []
    for entry in kept:
        try:
            decode_rgb(entry[3])
            good.append(entry)
        except BadImage as e:
            log.warning("%s: %s does not decode (%s); left out", what, entry[1], e)
    return good


def _examples(entries: list[tuple]) -> Examples:
    entries = sorted(entries)  # priority order
    return Examples([e[3] for e in entries], [e[2] for e in entries], [e[1] for e in entries])


def choose(
    path: str | Path,
    seed: int,
    per_class: int = 0,
    fraction: float = 0.0,
    held_out: int = 0,
    held_out_path: str | Path = "",
    retries: int = 4,
) -> tuple[Examples, Examples]:
    """(labelled subset, held-out set) of the shards at `path`: `per_class` examples of each class (or
    the `fraction` with u < fraction), and `held_out` examples whose labels the training never reads:
    the highest-priority others of `path`, or the lowest-priority examples of `held_out_path`."""
    manifest = load_manifest(path)
    if manifest.num_classes < 2:
        raise DataError(
            f"{path} has {manifest.num_classes} classes: a labelled subset needs a labelled dataset"
        )
    per_class_heaps: dict[int, list] = {}  # max-heaps (priority negated) of the per_class lowest
    labelled, rest = [], []  # rest: a min-heap of the highest priorities outside the labelled subset
    keep_rest = 0 if held_out_path else held_out  # every unlabelled example passes through `rest`
    for entry in _candidates(path, manifest, seed, retries):
        u, label = entry[0], entry[2]
        if per_class:
            heap = per_class_heaps.setdefault(label, [])
            pushed = (-u, *entry[1:])
            entry = (
                heapq.heappushpop(heap, pushed) if len(heap) >= per_class else heapq.heappush(heap, pushed)
            )
            if entry is None:
                continue
            entry = (-entry[0], *entry[1:])  # the one that left (or did not enter) the class's lowest
        elif u < fraction:
            labelled.append(entry)
            continue
        if keep_rest:
            (heapq.heappushpop if len(rest) >= keep_rest else heapq.heappush)(rest, entry)
    for heap in per_class_heaps.values():
        labelled += [(-e[0], *e[1:]) for e in heap]
    labelled = _decodable(labelled, "labelled subset")
    short = {c: len(h) for c, h in per_class_heaps.items() if len(h) < per_class}
    if short or (per_class and len(per_class_heaps) < manifest.num_classes):
        log.warning(
            "labelled subset of %s: some classes have fewer than %d examples: %s", path, per_class, short
        )
    if not labelled:
        raise DataError(
            f"the labelled subset of {path} is empty (data.labelled_fraction={fraction} too small)"
        )
    if held_out_path:
        other = load_manifest(held_out_path)
        rest = heapq.nsmallest(held_out, _candidates(held_out_path, other, seed, retries))
    else:
        rest = heapq.nlargest(held_out, rest)
    return _examples(labelled), _examples(_decodable(rest, "held-out set"))
