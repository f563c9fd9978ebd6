"""Input pipeline benchmark: images/s of each loader over the same shards, and the share of a training
iteration spent waiting for input. One JSON line per measurement.

    python bench/loader.py SHARDS --resolution 256 --batch 256 --workers 14
    python bench/loader.py SHARDS --resolution 128 --batch 256 --recipe configs/biggan/imagenet128.yaml

Loaders: `webdataset` (PIL on CPU worker processes) and `dali` (GPU decoding where CUDA is present,
else DALI's CPU pipeline). The input-wait share is the wall time spent inside next(loader) over the
wall time of `--train-iters` training iterations of the recipe (synchronized at the end).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bigtrain.config import load_config  # noqa: E402
from bigtrain.data import make_loader  # noqa: E402
from bigtrain.train.loop import Trainer, pick_device  # noqa: E402


class TimedLoader:
    """Wraps a loader and adds up the wall time spent in next()."""

    def __init__(self, inner):
        self.inner, self.manifest, self.wait = inner, inner.manifest, 0.0

    def __next__(self):
        start = time.perf_counter()
        batch = next(self.inner)
        self.wait += time.perf_counter() - start
        return batch

    @property
    def skipped_corrupt(self) -> int:
        return self.inner.skipped_corrupt

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)

    def close(self) -> None:
        self.inner.close()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loader_throughput(cfg, kind: str, batch: int, batches: int, warmup: int, device: torch.device) -> dict:
    cfg.data.loader = kind
    loader = make_loader(cfg, batch, device)
    for _ in range(warmup):
        next(loader)
    _sync(device)
    start = time.perf_counter()
    for _ in range(batches):
        x, _ = next(loader)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"bench": "loader", "loader": kind, "img_per_s": round(batch * batches / seconds, 1), "batch": batch,
            "resolution": cfg.model.resolution, "workers_or_threads": cfg.data.num_workers, "device": str(device)}  # fmt: skip


def input_wait_share(cfg, kind: str, batch: int, iters: int, device: torch.device) -> dict:
    cfg.data.loader = kind
    cfg.train.batch, cfg.train.accum = batch, 1
    loader = TimedLoader(make_loader(cfg, batch, device))
    trainer = Trainer(cfg, loader=loader)
    for _ in range(3):
        trainer.train_step()
    _sync(device)
    loader.wait = 0.0
    start = time.perf_counter()
    for _ in range(iters):
        trainer.train_step()
    _sync(device)
    total = time.perf_counter() - start
    return {"bench": "input_wait", "loader": kind, "input_wait_share": round(loader.wait / total, 4),
            "s_per_iter": round(total / iters, 4), "batch": batch, "resolution": cfg.model.resolution,
            "device": str(device)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", help="folder from `bigtrain prepare`")
    p.add_argument("--resolution", type=int, default=0, help="default: the shards' resolution")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--workers", type=int, default=8, help="webdataset worker processes / DALI threads")
    p.add_argument("--loaders", default="webdataset,dali")
    p.add_argument("--recipe", help="also measure the input-wait share while training this recipe")
    p.add_argument("--train-iters", type=int, default=20)
    p.add_argument("overrides", nargs="*", help="extra config overrides for --recipe")
    args = p.parse_intermixed_args()

    from bigtrain.data.manifest import load_manifest

    resolution = args.resolution or load_manifest(args.shards).resolution
    base = [f"data.path={args.shards}", f"data.num_workers={args.workers}", f"model.resolution={resolution}",
            "track.enabled=false", "eval.every_kimg=0", "train.run_dir=/tmp/bigtrain-bench"]  # fmt: skip
    for kind in args.loaders.split(","):
        cfg = load_config(None, base)
        device = pick_device(cfg.train.device)
        print(
            json.dumps(loader_throughput(cfg, kind, args.batch, args.batches, args.warmup, device)),
            flush=True,
        )
        if args.recipe:
            cfg = load_config(args.recipe, base + args.overrides)
            print(json.dumps(input_wait_share(cfg, kind, args.batch, args.train_iters, device)), flush=True)


if __name__ == "__main__":
    main()
