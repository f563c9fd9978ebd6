"""MLflow tracking against a real `mlflow server` on 127.0.0.1, started and stopped by the test."""

import logging
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from bigtrain.config import load_config
from bigtrain.train.loop import Trainer
from conftest import REPO, cli_env

MLFLOW = str(Path(os.sys.executable).parent / "mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    env = cli_env()
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    log = open(tmp_path / "server.log", "w")
    cmd = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination", str(tmp_path / "art")]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(uri + "/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            assert time.time() < deadline, "mlflow server did not come up in 90 s"
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server forks workers: stop the whole group
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


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
    history = client.get_metric_history(run.info.run_id, "fd_digits")
    assert [m.step for m in history] == [0, 1, 2], [(m.step, m.value) for m in history]
    assert all(m.value > 0 for m in history)
    assert len(client.get_metric_history(run.info.run_id, "loss_d")) >= 5
    samples = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert len(samples) == 3 and all(p.endswith(".png") for p in samples), samples


def test_unreachable_server_warns_and_training_goes_on(demo_shards, tmp_path, caplog):
    dead = f"http://127.0.0.1:{_free_port()}"
    cfg = _cfg(demo_shards, tmp_path / "run", dead)
    cfg.train.total_kimg, cfg.eval.every_kimg = 0.2, 0.0
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(cfg)
        assert trainer.run() == "finished"
    assert "MLflow tracking is unavailable" in caplog.text
    assert trainer.images >= 200
