"""`bigtrain` command line: prepare | train | sample | eval."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from .config import ConfigError
from .data.manifest import DataError
from .train.checkpoint import CheckpointError

log = logging.getLogger("bigtrain")

USER_ERRORS = (ConfigError, DataError, CheckpointError, ValueError, FileNotFoundError)
EXIT_TERMINATED = 143  # 128 + SIGTERM: a preempted run is not a finished one


def _prepare(args: argparse.Namespace) -> int:
    from .data.writer import prepare

    m = prepare(
        args.src, args.out, resolution=args.resolution, shard_size=args.shard_size, image_format=args.format,
        jpeg_quality=args.quality, workers=args.workers, seed=args.seed, exist_ok=args.exist_ok,
        overwrite=args.overwrite,
    )  # fmt: skip
    print(
        f"{args.out}: {m.num_samples} images in {len(m.shards)} shards, {m.num_classes} classes, {m.num_skipped} skipped"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train.loop import NonFiniteLoss, Trainer

    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg, resume=args.resume)
    try:
        status = trainer.run()
    except NonFiniteLoss as e:
        print(f"bigtrain train: error: {e}", file=sys.stderr)
        return 1
    finally:
        trainer.backend.close()
    if trainer.rank != 0:
        return EXIT_TERMINATED if status == "terminated" else 0
    run_dir = trainer.run_dir.resolve()
    print(f"\nrun: {run_dir}")
    print(f"  samples:     {run_dir / 'samples'}")
    print(
        f"  checkpoints: {run_dir / 'checkpoints'} (latest: {(run_dir / 'checkpoints' / 'latest').read_text().strip()})"
    )
    fd = {k: round(v, 3) for k, v in trainer.last_metrics.items() if k.startswith("fd_")}
    if fd:
        print(f"  metrics:     {fd} at {trainer.kimg:.2f} kimg")
    if trainer.tracker.run_id:
        print(f"  MLflow run:  {trainer.tracker.run_id} at {trainer.tracker.uri}")
        print(f"  open it:     mlflow ui --backend-store-uri {trainer.tracker.uri} --host 127.0.0.1")
    if status == "terminated":
        print("stopped by SIGTERM; continue with the same command plus --resume")
        return EXIT_TERMINATED
    return 0


def _sample(args: argparse.Namespace) -> int:
    import torch

    from .eval.generate import load_generator, parse_classes
    from .eval.sampling import save_grid
    from .train.checkpoint import resolve_checkpoint

    if args.n < 1:
        raise ValueError(f"--n {args.n} must be at least 1")
    if args.truncation < 0:
        raise ValueError(f"--truncation {args.truncation} must be >= 0 (0: no truncation)")
    ckpt = resolve_checkpoint(args.checkpoint)
    gen = load_generator(str(ckpt), args.device)
    classes = parse_classes(args.classes, gen.num_classes)
    rng = torch.Generator(gen.device).manual_seed(args.seed)
    gen.refresh_stats(args.truncation, rng, args.standing_stats)
    images = torch.cat(
        [
            gen(*gen.latents(min(256, args.n - i), args.truncation, rng, classes))
            for i in range(0, args.n, 256)
        ]
    )
    out = (
        Path(args.out)
        if args.out
        else ckpt.parent.parent / "samples" / f"{ckpt.name}-trunc{args.truncation:g}.png"
    )
    nrow = args.nrow or max(1, round(args.n**0.5))
    save_grid(images, out, nrow)
    print(f"{args.n} samples (truncation {args.truncation:g}, classes {classes or 'random'}) -> {out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from .data.manifest import load_manifest
    from .eval.features import classifier_evaluator
    from .eval.generate import load_generator

    gen = load_generator(args.checkpoint, args.device)
    data = Path(args.data or gen.cfg.data.path)
    evaluator = classifier_evaluator(data, load_manifest(data), gen.device, data / "eval")
    rng = torch.Generator(gen.device).manual_seed(args.seed)
    gen.refresh_stats(args.truncation, rng, args.standing_stats)
    value = evaluator(lambda n: gen(*gen.latents(n, args.truncation, rng)), args.num_samples, 250)
    result = {
        "checkpoint": str(args.checkpoint),
        "kimg": gen.kimg,
        "truncation": args.truncation,
        "num_samples": args.num_samples,
        evaluator.name: value,
    }
    print(f"{'metric':<14}{'value':>12}\n{evaluator.name:<14}{value:>12.4f}")
    print(json.dumps(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bigtrain", description="Train BigGAN-family GANs on sharded data.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("prepare", help="turn images into WebDataset shards + manifest.json",
                       description="Write WebDataset tar shards and OUT/manifest.json from SRC: an image folder "
                       "(class sub-folders become labels), a zip of images, or 'demo' (scikit-learn's digits). "
                       "Undecodable files are skipped and listed in the manifest.")  # fmt: skip
    s.add_argument("src", help="image folder, zip file, or 'demo'")
    s.add_argument("out", help="output folder (must not exist unless --overwrite or --exist-ok)")
    s.add_argument("--resolution", type=int, default=32, help="square side in pixels (default 32)")
    s.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    s.add_argument("--format", choices=("png", "jpg"), default="png", help="image encoding (default png)")
    s.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    s.add_argument("--workers", type=int, default=0, help="decode processes (default: CPU count, up to 8)")
    s.add_argument("--seed", type=int, default=0, help="seed of the order images are written in")
    s.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    s.add_argument("--exist-ok", action="store_true", help="do nothing if OUT already holds a manifest")
    s.set_defaults(fn=_prepare)

    s = sub.add_parser("train", help="train a GAN from a recipe", description="Train from a YAML recipe with "
                       "dotted overrides, e.g. `bigtrain train configs/biggan/digits32.yaml train.batch=128 "
                       "optim.lr_d=4e-4`. SIGTERM saves a checkpoint; --resume continues from the latest.")  # fmt: skip
    s.add_argument("config", nargs="?", help="recipe YAML (default: built-in defaults)")
    s.add_argument("overrides", nargs="*", help="section.key=value")
    s.add_argument("--resume", action="store_true", help="continue from train.run_dir's latest checkpoint")
    s.set_defaults(fn=_train)

    s = sub.add_parser("sample", help="write a grid of samples from a checkpoint's G_ema",
                       description="Sample G_ema (BatchNorm standing statistics refreshed first) with optional "
                       "truncation and chosen classes, into a PNG grid.")  # fmt: skip
    s.add_argument("checkpoint", help="checkpoint directory or run directory (its latest checkpoint)")
    s.add_argument("--truncation", type=float, default=0.0, help="truncated-normal threshold; 0 = none")
    s.add_argument("--classes", help="comma-separated class indices, e.g. 3,7 (default: random classes)")
    s.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--nrow", type=int, default=0, help="images per grid row (default: square)")
    s.add_argument("--out", help="output PNG (default: RUN/samples/<checkpoint>-trunc<t>.png)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--standing-stats", type=int, default=16, help="batches for BN standing statistics")
    s.add_argument("--device", default="cpu")
    s.set_defaults(fn=_sample)

    s = sub.add_parser("eval", help="Frechet distance of a checkpoint's G_ema against its dataset",
                       description="Computes fd_<dataset> (features of a classifier trained on the dataset's "
                       "labels; Inception FID is not part of this build). Prints a table and one JSON line.")  # fmt: skip
    s.add_argument("checkpoint", help="checkpoint directory or run directory")
    s.add_argument("--data", help="shard folder (default: the checkpoint config's data.path)")
    s.add_argument("--num-samples", type=int, default=2000)
    s.add_argument("--truncation", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--standing-stats", type=int, default=16)
    s.add_argument("--device", default="cpu")
    s.set_defaults(fn=_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    try:
        with logging_redirect_tqdm():
            return args.fn(args)
    except USER_ERRORS as e:
        print(f"bigtrain {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bigtrain {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
