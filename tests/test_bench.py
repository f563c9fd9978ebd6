"""The GPU check runs end to end on the CPU (`--dry-run`), so it still works when a GPU is lent."""

import json
import subprocess

import pytest

from conftest import PYTHON, REPO, cli_env


@pytest.mark.slow
def test_gpu_check_dry_run_writes_a_result_per_stage(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([PYTHON, str(REPO / "bench" / "gpu_check.py"), "--out", str(out), "--dry-run"],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = {r["stage"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    expected = ["cuda_tests", "biggan128", "biggan128_compile", "biggan128_b512", "stylegan2_auto256",
                "sngan_cifar10", "sagan128", "digits_real_run", "fid_cifar10", "dali_loader"]  # fmt: skip
    assert list(records) == expected
    for name, record in records.items():
        assert record["status"] in ("ok", "skipped"), f"{name}: {record}"
        assert (
            record["machine"]
            and record["torch"]
            and record["date"]
            and record["anchor"]
            and record["command"]
        )
    assert records["biggan128_compile"]["status"] == "skipped"  # the compile path is test_gpu_paths.py's
    assert "skipped" in records["cuda_tests"]["result"]["summary"]
    assert records["biggan128"]["result"]["img_per_s"] > 0
    assert records["stylegan2_auto256"]["result"]["s_per_kimg"] > 0
    for name, recipe in (
        ("sngan_cifar10", "configs/sngan/digits32.yaml"),
        ("sagan128", "configs/sagan/digits32.yaml"),
    ):
        result = records[name]["result"]
        assert result["recipe"] == recipe and result["s_per_iter"] > 0 and result["img_per_s"] > 0, result
    assert 0 <= records["digits_real_run"]["result"]["input_wait_share"] < 1
    for name in (
        "biggan128",
        "biggan128_b512",
        "stylegan2_auto256",
        "sngan_cifar10",
        "sagan128",
    ):  # the plan beside the measurement
        plan = records[name]["plan"]
        assert plan["plan_peak_mem_gib"] > 0 and plan["plan_s_per_iter"] > 0 and plan["gpu"] == "cpu", plan
    assert "plan: gpu cpu" in (out / "RESULTS_rows.md").read_text()
    rows = (out / "RESULTS_rows.md").read_text().splitlines()
    assert len(rows) == 2 + len(expected) and all(row.startswith("| ") for row in rows[2:])


def test_gpu_check_stops_at_its_budget(tmp_path):
    """A budget too small for any stage: every stage is recorded as skipped, nothing runs."""
    out = tmp_path / "check"
    proc = subprocess.run([PYTHON, str(REPO / "bench" / "gpu_check.py"), "--out", str(out), "--dry-run",
                           "--budget-s", "5"], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 10 and all(r["status"] == "skipped" for r in records), records
    assert any("budget" in r["reason"] for r in records)
