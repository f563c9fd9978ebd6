"""Golden values: 3 iterations of each digits recipe from a fixed seed, every checkpoint tensor compared
bit for bit with values recorded from the code as it was (tests/data/golden/*.json: a sha256 per
tensor, and its sum for a readable diff). A refactor of the trainer must leave them equal; a change to
the networks or the update rule on purpose regenerates them in its own commit, saying so:

    python tests/test_golden.py --write

To compare equal across x86 CPUs, the runs pin the CPU kernels (ATen's default ISA, oneDNN at SSE4.1,
MKL's conditional reproducibility, one thread), in a subprocess. The native kernels give values
within a stated tolerance of the pinned ones (tested), not the same bits.

Pinning is not complete on every CPU: on a Sapphire Rapids Xeon (AMX, AVX512-FP16) the pinned StyleGAN2
and ProGAN runs differ from the AVX-512 machine's by rounding (BigGAN's are equal). Changing MKL_CBWR or
ONEDNN_MAX_CPU_ISA there changes the bits, but none restores the recorded ones, so the op is not found
yet. Such a CPU's bits are kept as an alternative set beside the first, and a run must equal one set
exactly. Record one only after a change to the code has been ruled out (the first set still passes
where it was recorded, and test_native_kernels_stay_within_tolerance_of_the_pinned_ones passes here):

    python tests/test_golden.py --write-alternative TAG    (tests/data/golden/<family>_digits32.TAG.json)

`--write` removes a family's alternatives: new values on purpose must be recorded again on those CPUs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "golden"
SCRIPT = REPO / "tests" / "scripts" / "golden_run.py"
RECIPES = ["biggan", "stylegan2", "progan"]
PINNED = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE",
          "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip


def run_recipe(family: str, data: Path, out: Path, pinned: bool = True) -> dict[str, torch.Tensor]:
    env = {k: v for k, v in os.environ.items() if k not in PINNED}
    env.update(PINNED if pinned else {})
    recipe = REPO / "configs" / family / "digits32.yaml"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(recipe), str(data), str(out)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


def digest(flat: dict[str, torch.Tensor]) -> dict[str, dict]:
    return {
        k: {
            "sha256": hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest(),
            "sum": float(v.double().sum()),
        }
        for k, v in sorted(flat.items())
    }


@pytest.fixture(scope="module")
def pinned_runs(demo_shards, tmp_path_factory) -> dict:
    """Each recipe's pinned run, made once for the tests below."""
    folder = tmp_path_factory.mktemp("golden")
    return {family: run_recipe(family, demo_shards, folder / f"{family}.pt") for family in RECIPES}


def recorded_sets(family: str) -> list[dict]:
    """The first recorded set, then the alternatives of CPUs whose pinned kernels round differently."""
    first = GOLDEN / f"{family}_digits32.json"
    return [
        json.loads(path.read_text()) for path in [first, *sorted(GOLDEN.glob(f"{family}_digits32.*.json"))]
    ]


@pytest.mark.parametrize("family", RECIPES)
def test_three_iterations_equal_the_recorded_values(family, pinned_runs):
    got = digest(pinned_runs[family])
    sets = recorded_sets(family)
    if any(got == recorded for recorded in sets):
        return
    want = sets[0]  # none matched: show the differences from the first
    assert sorted(got) == sorted(want), f"keys differ: {sorted(set(got) ^ set(want))[:10]}"
    differ = [k for k in want if got[k]["sha256"] != want[k]["sha256"]]
    assert not differ, (
        f"{len(differ)} of {len(want)} tensors differ from the first of {len(sets)} sets, e.g. "
        + ", ".join(f"{k} (sum {got[k]['sum']:.9g}, recorded {want[k]['sum']:.9g})" for k in differ[:5])
    )


def test_native_kernels_stay_within_tolerance_of_the_pinned_ones(pinned_runs, demo_shards, tmp_path):
    """What pinning buys: after 3 BigGAN iterations the native run's networks differ from the pinned
    run's by rounding only, measured as ||native - pinned|| / ||pinned|| over each network's weights.
    Measured on an AVX-512 machine: G_ema 6.0e-5, D 1.9e-5 (StyleGAN2 1.6e-6, ProGAN 2.4e-7). Per
    tensor the difference can be large: a zero-initialized bias after 3 Adam steps is lr-sized noise
    whose sign follows the rounding. The bound, 1e-3, is 16x the largest measured."""
    pinned = pinned_runs["biggan"]
    native = run_recipe("biggan", demo_shards, tmp_path / "native.pt", pinned=False)
    for net in ("G.", "D.", "G_ema."):
        keys = [k for k in pinned if k.startswith(net) and pinned[k].is_floating_point()]
        a = torch.cat([pinned[k].double().flatten() for k in keys])
        b = torch.cat([native[k].double().flatten() for k in keys])
        relative = float((a - b).norm() / a.norm())
        assert relative < RELATIVE, (
            f"{net[:-1]}: native and pinned differ by {relative:.3g} relative (bound {RELATIVE})"
        )


RELATIVE = 1e-3


if __name__ == "__main__" and (sys.argv[1:] == ["--write"] or sys.argv[1:2] == ["--write-alternative"]):
    import tempfile

    if sys.argv[1] == "--write-alternative" and len(sys.argv) != 3:
        sys.exit("usage: python tests/test_golden.py --write-alternative TAG (a name for this CPU class)")

    sys.path.insert(0, str(REPO / "tests"))
    from bigtrain.data.writer import prepare

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits"
        prepare("demo", data, resolution=32, shard_size=200)  # as the demo_shards fixture
        for family in RECIPES:
            got = digest(run_recipe(family, data, Path(tmp) / f"{family}.pt"))
            if sys.argv[1] == "--write":  # new values on purpose: the old alternatives no longer apply
                for stale in GOLDEN.glob(f"{family}_digits32.*.json"):
                    stale.unlink()
                    print(f"removed {stale}: record it again on its CPU")
                path = GOLDEN / f"{family}_digits32.json"
            elif any(got == recorded for recorded in recorded_sets(family)):
                print(f"{family}: equal to a recorded set, nothing written")
                continue
            else:
                path = GOLDEN / f"{family}_digits32.{sys.argv[2]}.json"
            path.write_text(json.dumps(got, indent=1) + "\n")
            print(f"wrote {path} ({len(got)} tensors)")
