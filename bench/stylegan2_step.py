"""Time StyleGAN2 training of a recipe on random data (no input cost): s/kimg and peak memory.

    python bench/stylegan2_step.py configs/stylegan2/auto256.yaml [overrides ...]

Uses the recipe's batch (on one device, accumulation 1). The timed iterations are a whole number of
lazy-regularization cycles (R1 every regularize.r1.interval D steps, path length every regularize.path_length.interval G
steps), so their cost is in the figure as in training. Prints one JSON line; stylegan2-ada-pytorch's
figure for the same setting is its `sec/kimg`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from biggan_step import RandomLoader, run_facts  # noqa: E402

from bigtrain.config import load_config  # noqa: E402
from bigtrain.train.loop import Trainer, pick_device  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--cycles", type=int, default=2, help="lazy-regularization cycles to time")
    p.add_argument("--warmup", type=int, default=16, help="untimed iterations first (compilation, caches)")
    p.add_argument("--num-classes", type=int, default=1, help="1: unconditional, as FFHQ")
    args = p.parse_intermixed_args()

    overrides = ["train.accum=1", "track.enabled=false", "eval.every_kimg=0", f"model.num_classes={args.num_classes}",
                 "train.run_dir=/tmp/bigtrain-bench", *args.overrides]  # fmt: skip
    cfg = load_config(args.config, overrides)
    device = pick_device(cfg.train.device)
    loader = RandomLoader(cfg.train.batch, cfg.model.resolution, max(args.num_classes, 1), device)
    trainer = Trainer(cfg, loader=loader)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    cycle = math.lcm(cfg.regularize.r1.interval, cfg.regularize.path_length.interval)
    iters = args.cycles * cycle

    for _ in range(args.warmup):
        trainer.train_step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        trainer.train_step()
    sync()
    seconds = time.perf_counter() - start
    kimg = iters * cfg.train.n_disc_steps * cfg.train.batch / 1000
    result = {
        "recipe": args.config,
        "batch": cfg.train.batch,
        "iterations": iters,
        "s_per_kimg": round(seconds / kimg, 3),
        "img_per_s": round(kimg * 1000 / seconds, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
        **run_facts(trainer, device, args.overrides),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
