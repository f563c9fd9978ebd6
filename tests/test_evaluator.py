"""The evaluator shared by training and `bigtrain eval`: its best-checkpoint decision, its independence
from the training random streams, and the provenance of every figure, read back from the MLflow run
and from `bigtrain eval`'s JSON."""

import hashlib
import json
import random
import subprocess

import pytest
import torch
from torch import nn

from bigtrain.config import EvalConfig, load_config
from bigtrain.eval.evaluator import Evaluator, Sampler
from bigtrain.eval.frechet import FeatureStats
from bigtrain.eval.inception import inception_weights_path
from bigtrain.eval.provenance import stats_sha256, tensors_sha256
from bigtrain.eval.reference import reference_path
from bigtrain.models.roles import GeneratorRole
from bigtrain.train.loop import Trainer
from conftest import BIGTRAIN, REPO, cli_env

FIELDS = {"feature_net", "feature_net_sha256", "resize", "num_generated", "num_reference", "reference_sha256",
          "truncation"}  # fmt: skip


class TinyG(GeneratorRole):
    """z -> 3x4x4 images through a BatchNorm, so the standing statistics have something to refresh."""

    def __init__(self, z_dim: int = 8):
        super().__init__()
        self.fc, self.bn = nn.Linear(z_dim, 48), nn.BatchNorm1d(48)

    def forward(self, z, y):
        return torch.tanh(self.bn(self.fc(z))).view(-1, 3, 4, 4)


class ScriptedSuite:
    """A MetricSuite stand-in: scripted values of one lower-is-better metric, a fixed provenance."""

    primary = ("fd_x", True)

    def __init__(self, values):
        self.values, self.resize = iter(values), "4px -> 32px, bilinear, antialiased"

    def at_resolution(self, resolution):
        pass

    def prepare(self):
        pass

    def compute(self, generate, batch):
        assert generate(3).shape == (3, 3, 4, 4)
        return {"fd_x": next(self.values)}

    def provenance(self):
        return {"fd": {"feature_net": "net", "feature_net_sha256": "ab", "resize": self.resize,
                       "num_generated": 3, "num_reference": 10, "reference_sha256": "cd"}}  # fmt: skip


class RecordingTracker:
    def __init__(self):
        self.tags, self.metrics = [], []

    def log_metrics(self, metrics, step):
        self.metrics.append((step, metrics))

    def log_artifact(self, path, folder=None):
        pass

    def set_tags(self, tags):
        self.tags.append(tags)


def test_evaluator_keeps_the_best_logs_provenance_once_and_leaves_training_rng_alone(tmp_path):
    saved = []
    suite = ScriptedSuite([5.0, 3.0, 4.0, 2.0])
    sampler = Sampler(TinyG(), 8, 10, torch.device("cpu"))
    evaluator = Evaluator(sampler, suite, EvalConfig(grid_size=2, truncation=0.5), tmp_path, stats_batches=2,
                          save_best=lambda: saved.append(len(evaluator.metric_history)))  # fmt: skip
    evaluator.tracker = tracker = RecordingTracker()
    torch.manual_seed(1)
    random.seed(1)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    for images in (0, 1000, 2000, 3000):
        if images == 2000:
            suite.resize = "8px -> 32px, bilinear, antialiased"  # as a growing model's next phase
        evaluator.evaluate(images / 1000, images)
    assert torch.equal(torch.get_rng_state(), torch_state), "evaluation drew from torch's global stream"
    assert random.getstate() == python_state, "evaluation drew from Python's random stream"
    # 5.0 at 0 images is no checkpoint; 3.0 improves, 4.0 does not, 2.0 does.
    assert saved == [2, 4], saved
    assert evaluator.best == {"metric": "fd_x", "value": 2.0, "kimg": 3.0}
    assert [m for _, m in tracker.metrics if "best_fd_x" in m] == [{"best_fd_x": 3.0}, {"best_fd_x": 2.0}]
    assert len(list((tmp_path / "samples").glob("*.png"))) == 4
    # Provenance: every field once, then only what changed.
    assert set(tracker.tags[0]) == {f"eval/fd/{f}" for f in FIELDS}, tracker.tags
    assert tracker.tags[0]["eval/fd/truncation"] == "0.5"
    assert tracker.tags[1:] == [{"eval/fd/resize": "8px -> 32px, bilinear, antialiased"}], tracker.tags
    restored = Evaluator(sampler, suite, EvalConfig(), tmp_path)
    restored.load_state_dict(evaluator.state_dict())
    assert restored.metric_history == evaluator.metric_history and restored.best == evaluator.best


def test_checksums_change_with_any_weight_or_statistic():
    net = TinyG().state_dict()
    assert tensors_sha256(net) == tensors_sha256({k: v.clone() for k, v in net.items()})
    changed = {k: v.clone() for k, v in net.items()}
    changed["fc.bias"][3] += 1e-6
    assert tensors_sha256(changed) != tensors_sha256(net)
    stats = FeatureStats.empty(4)
    stats.add(torch.randn(20, 4, generator=torch.Generator().manual_seed(0)))
    assert stats_sha256(stats) != stats_sha256(stats.scaled(1.0 + 1e-9))


def _tiny(data, run_dir, *extra):
    return load_config(REPO / "configs/biggan/digits32.yaml", [f"data.path={data}", f"train.run_dir={run_dir}",
                       "train.batch=16", "data.num_workers=0", "train.total_kimg=0.032", *extra])  # fmt: skip


def _classifier_cache(data) -> dict:
    return torch.load(data / "eval" / "classifier-v2.pt", map_location="cpu", weights_only=True)


def test_provenance_is_read_back_from_the_mlflow_run(demo_shards, tmp_path):
    """A local sqlite MLflow store: every fd field as a tag, checked against the cached classifier."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    trainer = Trainer(_tiny(demo_shards, tmp_path / "run", f"track.tracking_uri={uri}", "track.experiment=prov",
                            "eval.every_kimg=1", "eval.num_samples=100", "eval.truncation=0.5",
                            "eval.truncation_sweep=[0.5, 1.0]"))  # fmt: skip
    assert trainer.run() == "finished"
    tags = mlflow.MlflowClient(uri).get_run(trainer.tracker.run_id).data.tags
    cache = _classifier_cache(demo_shards)
    reference = FeatureStats.from_state_dict(cache["reference"])
    expected = {
        "feature_net_sha256": tensors_sha256(cache["net"]),
        "resize": "32px, none",
        "num_generated": "100",
        "num_reference": str(reference.count),
        "reference_sha256": stats_sha256(reference),
    }
    for prefix, truncation in (("eval", "0.5"), ("trunc_sweep", "0.5,1")):
        got = {f: tags.get(f"{prefix}/fd/{f}") for f in FIELDS}
        assert got["feature_net"].startswith("fd classifier v2 trained on digits"), got
        assert got == {**expected, "feature_net": got["feature_net"], "truncation": truncation}, got


@pytest.mark.slow
def test_provenance_is_read_back_from_bigtrain_evals_json(demo_shards, tmp_path):
    """fd and an Inception metric: the weights' sha256 against the file's own bytes, the reference
    statistics' against the cached reference file, the counts and the truncation as asked."""
    run_dir = tmp_path / "run"
    Trainer(_tiny(demo_shards, run_dir, "track.enabled=false", "eval.every_kimg=0")).run()
    proc = subprocess.run([BIGTRAIN, "eval", str(run_dir), "--metrics", "fd,fid16", "--num-samples", "64",
                           "--reference-images", "16", "--truncation", "0.5", "--data", str(demo_shards)],
                          capture_output=True, text=True, timeout=600, env=cli_env())  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    provenance = json.loads(proc.stdout.strip().splitlines()[-1])["provenance"]
    assert set(provenance) == {"fd", "fid16"} and all(set(p) == FIELDS for p in provenance.values()), (
        provenance
    )

    fid = provenance["fid16"]
    saved = torch.load(reference_path(demo_shards), map_location="cpu", weights_only=True)
    assert fid["feature_net_sha256"] == hashlib.sha256(inception_weights_path().read_bytes()).hexdigest()
    assert fid["reference_sha256"] == stats_sha256(FeatureStats.from_state_dict(saved["stats"]))
    assert (fid["num_reference"], fid["num_generated"], fid["truncation"]) == (saved["count"], 16, 0.5), fid
    assert fid["resize"] == "32px -> 299px, TF1 bilinear" and "default_1.pt" in fid["feature_net"], fid

    fd, cache = provenance["fd"], _classifier_cache(demo_shards)
    assert fd["feature_net_sha256"] == tensors_sha256(cache["net"])
    assert fd["reference_sha256"] == stats_sha256(FeatureStats.from_state_dict(cache["reference"]))
    assert (fd["num_generated"], fd["truncation"], fd["resize"]) == (64, 0.5, "32px, none"), fd
