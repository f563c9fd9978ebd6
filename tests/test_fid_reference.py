"""The standard FID reproduced: CIFAR-10 train (50k) against test (10k), as measured with the same
weights and resize: 3.117. Needs a GPU (60,000 Inception passes take about two hours on a 2-core CPU)."""

import subprocess

import pytest
import torch

from bigtrain.data.writer import prepare
from conftest import PYTHON, REPO

CIFAR = REPO.parent / "shared" / "data" / "cifar10"
STANDARD_FID = 3.117


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="60,000 Inception passes: ~2 h on a 2-core CPU, minutes on a GPU"
)
@pytest.mark.skipif(not (CIFAR / "train.zip").is_file(), reason=f"CIFAR-10 zips not found in {CIFAR}")
def test_cifar10_train_vs_test_fid_matches_the_standard_figure(tmp_path):
    for split in ("train", "test"):
        prepare(CIFAR / f"{split}.zip", tmp_path / split, resolution=32, shard_size=5000)
    proc = subprocess.run(
        [PYTHON, str(REPO / "bench" / "fid_reference.py"), str(tmp_path / "train"), str(tmp_path / "test"),
         "--expect", str(STANDARD_FID), "--tolerance", "0.05"],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"FID outside {STANDARD_FID} +- 0.05: {proc.stdout[-1000:]} {proc.stderr[-2000:]}"
    )
