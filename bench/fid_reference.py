"""FID between two prepared datasets with the standard Inception: the reproduction check.

    bigtrain prepare ../shared/data/cifar10/train.zip data/cifar10-train
    bigtrain prepare ../shared/data/cifar10/test.zip data/cifar10-test
    python bench/fid_reference.py data/cifar10-train data/cifar10-test --expect 3.117

Each dataset's reference statistics are computed once (all images) and cached beside its manifest,
exactly as training runs use them. Prints one JSON line; with --expect, exits 1 when |FID - expect|
exceeds --tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bigtrain.dist import pick_device  # noqa: E402
from bigtrain.eval.frechet import frechet_distance_of  # noqa: E402
from bigtrain.eval.reference import inception_reference  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="first shard folder (e.g. CIFAR-10 train)")
    p.add_argument("b", help="second shard folder (e.g. CIFAR-10 test)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--expect", type=float, help="reference FID to check against")
    p.add_argument("--tolerance", type=float, default=0.05)
    args = p.parse_args()
    device = pick_device(args.device)
    started = time.time()
    a = inception_reference(args.a, device, batch=args.batch)
    b = inception_reference(args.b, device, batch=args.batch)
    fid = frechet_distance_of(a["stats"], b["stats"])
    result = {"fid": fid, "count_a": a["count"], "count_b": b["count"], "seconds": time.time() - started,
              "device": str(device)}  # fmt: skip
    if args.expect is not None:
        result.update(
            expect=args.expect, tolerance=args.tolerance, ok=abs(fid - args.expect) <= args.tolerance
        )
    print(json.dumps(result))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
