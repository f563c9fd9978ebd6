"""MLflow tracking against a real `mlflow server` on 127.0.0.1, started and stopped by the test."""

import logging

from bigtrain.config import load_config
from bigtrain.train.loop import Trainer
from conftest import REPO, free_port


def _cfg(data, run_dir, uri):
    return load_config(REPO / "configs/biggan/digits32.yaml", [
        f"data.path={data}", f"train.run_dir={run_dir}", f"track.tracking_uri={uri}", "track.experiment=test",
        "train.total_kimg=2", "eval.every_kimg=1", "eval.num_samples=200", "train.log_every=10",
    ])  # fmt: skip


def test_server_receives_metric_history_params_and_samples(demo_shards, tmp_path, mlflow_server):
    import mlflow

    trainer = Trainer(_cfg(demo_shards, tmp_path / "run", mlflow_server))
    trainer.run()
    client = mlflow.MlflowClient(mlflow_server)
    run = client.get_run(trainer.tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.batch"] == "32" and run.data.params["model.name"] == "biggan"
    # Steps are images shown (exact): one per log point, so MLflow draws no zigzag; kimg is a value.
    history = client.get_metric_history(run.info.run_id, "fd_digits")
    assert [m.step for m in history] == [0, 1024, 2016], [(m.step, m.value) for m in history]
    assert all(m.value > 0 for m in history)
    losses = client.get_metric_history(run.info.run_id, "loss_d")
    steps = [m.step for m in losses]
    assert len(steps) >= 5 and steps == sorted(set(steps)), f"loss_d steps repeat or go back: {steps}"
    kimg = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "kimg")}
    assert all(kimg[step] == step / 1000 for step in steps), kimg
    samples = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert len(samples) == 3 and all(p.endswith(".png") for p in samples), samples
    plots = [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    assert plots == ["plots/metrics.png"], plots
    assert "digits" in run.info.run_name and "biggan32" in run.info.run_name, run.info.run_name


def test_unreachable_server_warns_and_training_goes_on(demo_shards, tmp_path, caplog):
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = _cfg(demo_shards, tmp_path / "run", dead)
    cfg.train.total_kimg, cfg.eval.every_kimg = 0.2, 0.0
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(cfg)
        assert trainer.run() == "finished"
    assert "MLflow tracking is unavailable" in caplog.text
    assert trainer.images >= 200
