"""Time training iterations of a recipe on random data (no input cost): BigGAN's, and any family's
that trains through the Trainer (gpu_check's SN-GAN and SAGAN stages use it too).

    python bench/biggan_step.py configs/biggan/imagenet128.yaml --batch 256 [overrides ...]

`--batch` is the per-device micro-batch: the recipe's accumulation is set to 1 so one iteration is
n_disc_steps D steps + one G step over `--batch` images each. Prints one JSON line: img/s (real images
shown to D per second), s/iter, peak memory, FLOPs per iteration (torch's FlopCounterMode).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bigtrain.config import load_config  # noqa: E402
from bigtrain.data.manifest import Manifest  # noqa: E402
from bigtrain.train.loop import Trainer, pick_device  # noqa: E402


class RandomLoader:
    """Pre-made random batches on the device: the step is timed without any input pipeline."""

    def __init__(self, batch: int, resolution: int, num_classes: int, device: torch.device, pool: int = 4):
        self.manifest = Manifest("random", resolution, "png", [str(i) for i in range(num_classes)], [])
        g = torch.Generator(device).manual_seed(0)
        self.batches = [
            (torch.rand(batch, 3, resolution, resolution, device=device, generator=g) * 2 - 1,
             torch.randint(0, num_classes, (batch,), device=device, generator=g))
            for _ in range(pool)
        ]  # fmt: skip
        self.i = 0

    def __next__(self):
        self.i += 1
        return self.batches[self.i % len(self.batches)]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def close(self) -> None:
        pass


def run_facts(trainer: Trainer, device: torch.device, overrides: list[str]) -> dict:
    """What a figure was measured with: precision, memory format, compile, device, torch, overrides."""
    return {
        "precision": str(trainer.amp_dtype or "fp32"),
        "channels_last": trainer.channels_last,
        "compile": trainer.cfg.train.compile,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "overrides": overrides,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--batch", type=int, default=256, help="per-device micro-batch")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one extra iteration)")
    args = p.parse_intermixed_args()

    overrides = [f"train.batch={args.batch}", "train.accum=1", "track.enabled=false", "eval.every_kimg=0",
                 f"model.num_classes={args.num_classes}", "train.run_dir=/tmp/bigtrain-bench", *args.overrides]  # fmt: skip
    cfg = load_config(args.config, overrides)
    device = pick_device(cfg.train.device)
    loader = RandomLoader(args.batch, cfg.model.resolution, args.num_classes, device)
    trainer = Trainer(cfg, loader=loader)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    for _ in range(args.warmup):
        trainer.train_step()
    sync()
    flops = None
    if not args.no_flops:
        with FlopCounterMode(display=False) as counter:
            trainer.train_step()
        flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    start = time.perf_counter()
    for _ in range(args.iters):
        trainer.train_step()
    sync()
    seconds = (time.perf_counter() - start) / args.iters
    images = cfg.train.n_disc_steps * args.batch
    result = {
        "recipe": args.config,
        "batch": args.batch,
        "n_disc_steps": cfg.train.n_disc_steps,
        "img_per_s": round(images / seconds, 2),
        "s_per_iter": round(seconds, 4),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
        "tflop_per_iter": round(flops / 1e12, 3) if flops is not None else None,
        "tflop_per_s": round(flops / 1e12 / seconds, 2) if flops is not None else None,
        **run_facts(trainer, device, args.overrides),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
