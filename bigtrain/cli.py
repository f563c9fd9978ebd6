"""`bigtrain` command line: prepare | index | train | sample | eval | tune | k8s render | import | export | plan."""

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


def _index(args: argparse.Namespace) -> int:
    from .data.index import index_shards

    keys = tuple(k.strip().lstrip(".") for k in args.image_keys.split(",") if k.strip())
    m = index_shards(args.shards, args.out, keys, args.label_key, args.name)
    print(
        f"indexed {len(m.shards)} shards: {m.num_samples} samples, {m.num_classes} classes, smallest side "
        f"{m.resolution}px, {m.num_skipped} skipped -> {args.out}"
    )
    return 0


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
    if args.fid_stats:
        return _fid_stats(args)
    return 0


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train.loop import NonFiniteLoss, Trainer

    cfg = load_config(args.config, args.overrides)
    trainer = Trainer(cfg, resume=args.resume, recipe=Path(args.config).stem if args.config else "")
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
    if args.code and gen.G.codes is None:
        raise ValueError(f"--code {args.code[0]}: this generator has no latent codes (regularize.info)")
    codes = gen.G.codes.parse(args.code) if args.code else None
    rng = torch.Generator(gen.device).manual_seed(args.seed)
    gen.refresh_stats(args.truncation, rng, args.standing_stats)
    images = torch.cat(
        [
            gen(*gen.latents(min(256, args.n - i), args.truncation, rng, classes, codes), args.truncation)
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
    fixed = f", codes {' '.join(args.code)}" if args.code else ""
    print(f"{args.n} samples (truncation {args.truncation:g}, classes {classes or 'random'}{fixed}) -> {out}")
    return 0


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(
            f"{flag} {text!r} must be a number or comma-separated numbers such as 0.5,1.0"
        ) from None
    if not values or any(v < 0 for v in values):
        raise ValueError(f"{flag} {text!r} must hold numbers >= 0 (0: no truncation)")
    return values


def _eval(args: argparse.Namespace) -> int:
    from .data.manifest import load_manifest
    from .eval.evaluator import Evaluator
    from .eval.generate import load_generator
    from .eval.metrics import parse_metric
    from .eval.suite import MetricSuite
    from .train.checkpoint import resolve_checkpoint

    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    for name in names:
        parse_metric(name)  # a typo fails before the checkpoint is even read
    truncations = _floats(args.truncation, "--truncation")
    ckpt = resolve_checkpoint(args.checkpoint)
    gen = load_generator(str(ckpt), args.device)
    data = args.data or gen.cfg.data.path
    manifest = load_manifest(data)
    suite = MetricSuite(names, data, manifest, gen.device, args.num_samples, args.reference_images)
    # A ProGAN checkpoint from an earlier phase is scored against the reals at its resolution.
    suite.at_resolution(getattr(gen.G, "resolution", manifest.resolution))
    evaluator = Evaluator(
        gen.sampler, suite, gen.cfg.eval, ckpt.parent.parent, stats_batches=args.standing_stats
    )
    rows = []
    for truncation in truncations:
        # Standing statistics from the latents the samples come from, as BigGAN-PyTorch's sweep does.
        metrics = evaluator.score(truncation, args.seed, args.batch, stats_truncation=truncation)
        rows.append({"truncation": truncation, **metrics})
        result = {"checkpoint": str(ckpt), "kimg": gen.kimg, "truncation": truncation, **metrics}
        print(f"\ntruncation {truncation:g}, {gen.kimg:.2f} kimg")
        print(f"{'metric':<22}{'value':>14}")
        for k, v in metrics.items():
            print(f"{k:<22}{v:>14.6g}")
        print(json.dumps({**result, "provenance": evaluator.provenance(truncation)}))
    if len(truncations) > 1 and len(rows[0]) > 1:
        out = Path(args.plot) if args.plot else ckpt.parent.parent / f"truncation_sweep-{ckpt.name}.png"
        plot = evaluator.plot_sweep(rows, out)
        if plot:
            print(f"plot: {plot}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from .interop import import_weights

    out = import_weights(args.src, args.out, args.recipe, args.overrides)
    recipe = (out / "recipe.yaml").read_text()
    print(recipe.split("\n# Everything else")[0])
    print(f"imported {args.src} -> {out}")
    print(f"  recipe:     {out / 'recipe.yaml'}")
    print(f"  checkpoint: {out / 'checkpoints' / 'imported'}")
    print(f"  sample it:  bigtrain sample {out}")
    print(f"  fine-tune:  bigtrain train RECIPE train.init_from={out} data.path=NEW_DATA [model.freeze_d=N]")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .interop import export_checkpoint
    from .train.checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(args.checkpoint)
    out = export_checkpoint(str(ckpt), args.to, args.out)
    print(f"exported {ckpt} as {args.to} -> {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


def _fid_stats(args: argparse.Namespace) -> int:
    from .eval.reference import inception_reference, reference_path
    from .train.loop import pick_device

    device = pick_device(args.device)
    ref = inception_reference(args.out, device, args.fid_images)
    print(
        f"{args.out}: Inception reference statistics of {ref['count']} images in {reference_path(args.out)}"
    )
    return 0


def _tune(args: argparse.Namespace) -> int:
    from .tune.runner import run_sweep

    summary = run_sweep(args.sweep, address=args.address, resume=args.resume, num_cpus=args.num_cpus)
    print(f"\nsweep: {summary['finished']} of {summary['trials']} trials finished "
          f"({summary['stopped_early']} stopped early, {summary['failed']} failed) in {summary['seconds']:.0f} s")  # fmt: skip
    for failure in summary["failures"]:
        print(f"  failed trial {failure['trial']}: {failure['error']}")
    if summary["best"]:
        best = summary["best"]
        print(
            f"  best trial:  {best['trial_id']}: {best['metric']} = {best['value']:.5g} with {best['values']}"
        )
        print(f"  best recipe: {summary['best_yaml']}  (bigtrain train {summary['best_yaml']})")
    if summary["mlflow_parent_run_id"]:
        print(f"  MLflow:      parent run {summary['mlflow_parent_run_id']} at {summary['tracking_uri']}")
    print(json.dumps(summary, default=str))
    return 0 if summary["best"] else 1


def _plan(args: argparse.Namespace) -> int:
    from .config import load_config
    from .plan.planner import make_plan
    from .plan.report import json_line, table

    cfg = load_config(args.config, args.overrides)
    plan = make_plan(cfg, args.gpu, args.nodes * args.gpus_per_node)
    print(table(plan))
    print(json_line(plan))
    return 0


def _k8s_render(args: argparse.Namespace) -> int:
    from .k8s.render import RenderOptions, render, to_yaml

    options = RenderOptions(
        kind=args.kind, config=args.config or "", image=args.image or "", nodes=args.nodes,
        gpus_per_node=args.gpus_per_node, name=args.name or "", namespace=args.namespace, overrides=args.overrides,
        data_pvc=args.data_pvc, runs_pvc=args.runs_pvc, checkpoint_seconds=args.checkpoint_seconds,
        max_restarts=args.max_restarts, mlflow_name=args.mlflow_name, mlflow_backend=args.mlflow_backend,
        storage_class=args.storage_class or "", data_url=args.data_url or "", store_secret=args.store_secret or "",
        gpu=args.gpu or "", force=args.force,
    )  # fmt: skip
    text = to_yaml(render(options))  # everything is checked before anything is printed
    if args.out:
        Path(args.out).write_text(text)
        print(f"{args.kind} manifests for {options.name} -> {args.out}  (kubectl apply -f {args.out})")
    else:
        sys.stdout.write(text)
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
    s.add_argument(
        "--fid-stats",
        action="store_true",
        help="also compute the Inception reference statistics for FID/KID/PR (stored in OUT/eval)",
    )
    s.add_argument("--fid-images", type=int, default=0, help="real images in those statistics (default: all)")
    s.add_argument("--device", default="auto", help="device for --fid-stats: auto | cpu | cuda")
    s.set_defaults(fn=_prepare)

    s = sub.add_parser("index", help="write a manifest for WebDataset shards made by other tools",
                       description="Read every shard once (a local folder of .tar files, or a brace pattern of "
                       "paths or URLs such as 's3://bucket/imagenet-{000000..001281}.tar') and write bigtrain's "
                       "manifest.json to OUT (a folder or a URL): counts, sha256, classes, resolution. The "
                       "manifest names the shards where they are; train with data.path=OUT.")  # fmt: skip
    s.add_argument("shards", help="folder of .tar shards, or a brace pattern of shard paths or URLs")
    s.add_argument("out", help="folder or URL that receives manifest.json")
    s.add_argument("--image-keys", default="jpg,jpeg,png,webp",
                   help="members holding the image, first present wins (default jpg,jpeg,png,webp)")  # fmt: skip
    s.add_argument(
        "--label-key", default="cls", help="'cls' (an integer member) or 'json:FIELD' (default cls)"
    )
    s.add_argument("--name", default="", help="dataset name for metric names (default: OUT's last part)")
    s.set_defaults(fn=_index)

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
    s.add_argument("--code", action="append", default=[], metavar="NAME=VALUE",
                   help="fix an InfoGAN latent code (regularize.info): cat0=3, cont1=0.5, or values the "
                   "samples take in turn, cont0=-1,0,1 (repeatable; default: random)")  # fmt: skip
    s.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    s.add_argument("--nrow", type=int, default=0, help="images per grid row (default: square)")
    s.add_argument("--out", help="output PNG (default: RUN/samples/<checkpoint>-trunc<t>.png)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--standing-stats", type=int, default=16, help="batches for BN standing statistics")
    s.add_argument("--device", default="cpu")
    s.set_defaults(fn=_sample)

    s = sub.add_parser("eval", help="FID, KID, precision/recall, IS or fd of a checkpoint's G_ema",
                       description="Metrics of G_ema against its dataset: fid<N>, kid<N>, pr<N>, is<N> on the "
                       "standard TF-Inception features (N generated images, e.g. fid50k_full; the dataset's Inception "
                       "reference is computed on first use and cached), or fd (a classifier trained on the dataset's "
                       "labels). Prints a table and one JSON line per truncation threshold.")  # fmt: skip
    s.add_argument("checkpoint", help="checkpoint directory or run directory")
    s.add_argument(
        "--metrics", default="fd", help="comma-separated, e.g. fid50k_full,kid50k,pr50k,is50k (default fd)"
    )
    s.add_argument("--data", help="shard folder (default: the checkpoint config's data.path)")
    s.add_argument("--num-samples", type=int, default=2000, help="generated images for fd (default 2000)")
    s.add_argument(
        "--reference-images", type=int, default=0, help="real images in a new Inception reference (0: all)"
    )
    s.add_argument(
        "--truncation", default="0", help="threshold, or several (0.5,1.0,2.0) for a sweep; 0 = none"
    )
    s.add_argument(
        "--plot", help="PNG for a truncation sweep (default: RUN/checkpoints/truncation_sweep-<ckpt>.png)"
    )
    s.add_argument("--batch", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--standing-stats", type=int, default=16)
    s.add_argument("--device", default="cpu")
    s.set_defaults(fn=_eval)

    s = sub.add_parser("tune", help="a Ray Tune sweep of training runs (ASHA or PBT), tracked in MLflow",
                       description="Run the sweep file's trials (each a real training run reporting its metric at "
                       "every evaluation), one MLflow child run per trial under a parent run, and write the best "
                       "config as a ready-to-run recipe. Local Ray by default.")  # fmt: skip
    s.add_argument("sweep", help="sweep YAML (see configs/tune/)")
    s.add_argument("--address", help="an existing Ray cluster (e.g. auto or ray://host:10001)")
    s.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    s.add_argument("--resume", action="store_true", help="continue an interrupted sweep of the same name")
    s.set_defaults(fn=_tune)

    s = sub.add_parser("import", help="read BigGAN-PyTorch or NVlabs weights into a bigtrain run folder",
                       description="Read SRC without executing anything from it: an NVlabs network pickle "
                       "(stylegan2-ada-pytorch, or stylegan3 with a StyleGAN2 generator), a BigGAN-PyTorch weights "
                       "folder (G.pth, G_ema.pth, D.pth, state_dict.pth), a folder `bigtrain export` wrote, or one "
                       "G_ema.pth/G.pth with --recipe. A local path or a URL. Writes OUT/recipe.yaml (what was read, "
                       "and from where) and OUT/checkpoints/imported, which sample, eval and train.init_from accept.")  # fmt: skip
    s.add_argument("src", help="a .pkl, a .pth with --recipe, or a weights folder (path or URL)")
    s.add_argument("out", help="new run folder")
    s.add_argument(
        "--recipe", help="a recipe whose settings complete (or, for a bare .pth, give) the architecture"
    )
    s.add_argument("overrides", nargs="*", help="section.key=value, applied last")
    s.set_defaults(fn=_import)

    s = sub.add_parser("export", help="write a checkpoint in BigGAN-PyTorch's or stylegan2-ada's format",
                       description="State dicts under the reference's names (G.pth, G_ema.pth, D.pth) plus a JSON of "
                       "the reference's constructor arguments; the reference's classes load them with load_state_dict. "
                       "bigtrain import reads the folder back exactly.")  # fmt: skip
    s.add_argument("checkpoint", help="checkpoint directory or run directory (its latest checkpoint)")
    s.add_argument("--to", required=True, choices=("biggan-pytorch", "stylegan2-ada"))
    s.add_argument("out", help="new folder")
    s.set_defaults(fn=_export)

    s = sub.add_parser("plan", help="predict per-GPU peak memory and step time of a recipe, without a GPU",
                       description="Trace one training iteration of the recipe with fake tensors (no allocation) "
                       "and print, per rank: weights, gradients, optimizer state, each phase's activation peak, "
                       "fixed terms, the predicted peak against the GPU's memory, the largest micro-batch that "
                       "fits, and time per iteration from a roofline (modelled). One JSON line follows the table.")  # fmt: skip
    s.add_argument("config", help="recipe YAML")
    s.add_argument("overrides", nargs="*", help="section.key=value")
    s.add_argument("--gpu", default="h100", help="h100 | h200 | a100 | cpu (default h100)")
    s.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    s.add_argument("--gpus-per-node", type=int, default=1, help="GPUs (ranks) per node (default 1)")
    s.set_defaults(fn=_plan)

    k8s = sub.add_parser("k8s", help="Kubernetes manifests for training, sweeps and MLflow")
    k8s_sub = k8s.add_subparsers(dest="k8s_command", required=True, metavar="SUBCOMMAND")
    s = k8s_sub.add_parser("render", help="print ready-to-apply manifests",
                           description="Render manifests with the values filled in and checked: the recipe must "
                           "accept world size = nodes x GPUs per node; the image is required.")  # fmt: skip
    s.add_argument("--kind", default="pytorchjob", help="pytorchjob | job | rayjob | mlflow | storage")
    s.add_argument("--config", help="recipe YAML (a sweep YAML for rayjob)")
    s.add_argument("--image", help="container image built from the Dockerfile")
    s.add_argument("--nodes", type=int, default=1, help="pods (nodes), default 1")
    s.add_argument("--gpus-per-node", type=int, default=8, help="GPUs (= processes) per pod, default 8")
    s.add_argument("--name", help="job name (default: the config file's name)")
    s.add_argument("--namespace", default="default")
    s.add_argument("--data-pvc", default="bigtrain-data", help="claim holding the shards, mounted at /data")
    s.add_argument(
        "--runs-pvc", default="bigtrain-runs", help="claim for runs and checkpoints, mounted at /runs"
    )
    s.add_argument("--storage-class", help="storage class of rendered claims")
    s.add_argument(
        "--data-url", help="stream the shards from this URL (s3://, gs://, https://): no data claim"
    )
    s.add_argument(
        "--store-secret", help="Secret whose keys become the pods' environment (the store's credentials)"
    )
    s.add_argument(
        "--checkpoint-seconds",
        type=int,
        default=300,
        help="time a SIGTERM checkpoint may take; the grace period is this plus 60 s",
    )
    s.add_argument("--max-restarts", type=int, default=3)
    s.add_argument("--mlflow-name", default="bigtrain-mlflow", help="the MLflow Service every pod logs to")
    s.add_argument(
        "--mlflow-backend", default="sqlite", help="sqlite (on its claim) | postgres (URI from a Secret)"
    )
    s.add_argument("--out", help="write to this file instead of stdout")
    s.add_argument(
        "--gpu", help="h100 | h200 | a100: plan per-GPU memory first and refuse a batch that cannot fit"
    )
    s.add_argument(
        "--force", action="store_true", help="with --gpu: render even what the plan says cannot fit"
    )
    s.add_argument(
        "overrides", nargs="*", help="recipe overrides, section.key=value (e.g. data.path=/data/imagenet)"
    )
    s.set_defaults(fn=_k8s_render, command="k8s render")
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
