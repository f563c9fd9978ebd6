"""A dataset's Inception reference: exact feature statistics for FID, and real features for KID and
precision/recall, computed once and stored beside the manifest.

    DATA/eval/inception-<sha1[:12]>.pt   {extractor_sha1, manifest_sha256, count, stats, features}
    DATA/eval/inception-<sha1[:12]>-<R>px.pt   the same for the reals area-downscaled to R x R, the
                                            reference of a growing model's lower-resolution phases

The file is reused by every run and trial on those shards, and rebuilt only when the shards or the
extractor change, or when more images are asked for than it holds.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.interface import StreamSpec
from ..data.loader import ShardLoader
from ..data.manifest import load_manifest
from ..data.remote import basename, eval_cache_dir
from .features import manifest_digest
from .frechet import FeatureStats
from .inception import INCEPTION_SHA1, inception_for

log = logging.getLogger(__name__)

MAX_STORED_FEATURES = 50_000  # real features kept for KID and precision/recall (float16)


def reference_path(data_path: str | Path, resolution: int | None = None) -> Path:
    suffix = f"-{resolution}px" if resolution else ""
    return eval_cache_dir(data_path) / f"inception-{INCEPTION_SHA1[:12]}{suffix}.pt"


def _usable(saved: dict, digest: str, wanted: int) -> bool:
    return (
        saved.get("extractor_sha1") == INCEPTION_SHA1
        and saved.get("manifest_sha256") == digest
        and int(saved["count"]) >= wanted
    )


def inception_reference(
    data_path: str | Path,
    device: torch.device,
    max_images: int = 0,
    batch: int = 100,
    resolution: int | None = None,
) -> dict:
    """Load (or compute and store) the reference of the first `max_images` images (0: all of them),
    area-downscaled to `resolution` when that is below the stored one.
    Returns {"count", "stats": FeatureStats, "features": (min(count, 50k), 2048) float16}."""
    manifest = load_manifest(data_path)
    wanted = manifest.num_samples if max_images <= 0 else min(max_images, manifest.num_samples)
    if resolution is not None and resolution >= manifest.resolution:
        resolution = None
    path, digest = reference_path(data_path, resolution), manifest_digest(data_path)
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if _usable(saved, digest, wanted):
            log.info("Inception reference statistics of %d images from %s", saved["count"], path)
            return {**saved, "stats": FeatureStats.from_state_dict(saved["stats"])}
        log.info("%s does not match these shards or holds too few images; recomputing it", path)

    log.warning(
        "computing the Inception reference of %d images from %s%s on %s, once (stored in %s)",
        wanted, data_path, f" at {resolution}px" if resolution else "", device, path,
    )  # fmt: skip
    net = inception_for(device)
    loader = ShardLoader(
        StreamSpec(data_path, batch, resolution or manifest.resolution, device, seed=0, shuffle_buffer=0),
        num_workers=0,
    )
    stats = FeatureStats.empty(net.feature_dim)
    kept: list[torch.Tensor] = []
    num_kept, announced, started, first = 0, False, None, 0
    with tqdm(
        total=wanted,
        desc=f"Inception reference of {basename(data_path)}" + (f" at {resolution}px" if resolution else ""),
        unit="img",
    ) as bar:
        while stats.count < wanted:
            x, _ = loader.next_uint8()
            x = x[: wanted - stats.count].to(device).float().div(127.5).sub(1)
            features = net(x)
            stats.add(features)
            if num_kept < MAX_STORED_FEATURES:
                kept.append(features.half().cpu())
                num_kept += len(features)
            bar.update(len(x))
            if started is None:
                started, first = time.time(), stats.count  # the first batch also paid for warm-up
            elif not announced and stats.count - first >= 2 * batch:
                rate = (stats.count - first) / max(time.time() - started, 1e-9)
                log.warning(
                    "Inception reference: about %.0f min for %d images at %.0f img/s",
                    (wanted - stats.count) / rate / 60, wanted, rate,
                )  # fmt: skip
                announced = True
    loader.close()
    saved = {
        "extractor_sha1": INCEPTION_SHA1,
        "manifest_sha256": digest,
        "count": stats.count,
        "stats": stats.state_dict(),
        "features": torch.cat(kept)[:MAX_STORED_FEATURES],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(saved, tmp)
    tmp.replace(path)  # atomic: a reader sees the old file or the complete new one
    log.info("Inception reference statistics of %d images written to %s", stats.count, path)
    return {**saved, "stats": stats}
