"""Shared fixtures: real shards made by the project itself (demo digits, or id-stamped images)."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from bigtrain.checksums import file_digest
from bigtrain.data.manifest import MANIFEST_NAME, Manifest, ShardInfo
from bigtrain.data.writer import prepare, write_dali_index

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIGTRAIN = str(Path(sys.executable).parent / "bigtrain")

# 2 threads, as on CI's 2-core machine; `make test-cpus` also runs the numerics with 1.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> Path:
    """The embedded demo set as the user gets it: 1,797 digits at 32x32 in 9 shards."""
    out = tmp_path_factory.mktemp("data") / "digits"
    prepare("demo", out, resolution=32, shard_size=200)
    return out


@pytest.fixture(scope="session")
def learned_run(tmp_path_factory, demo_shards) -> dict:
    """The `make train` recipe shortened to 8 kimg: its run folder and fd_digits at start and end."""
    from bigtrain.config import load_config
    from bigtrain.train.loop import Trainer

    run_dir = tmp_path_factory.mktemp("learned") / "run"
    cfg = load_config(REPO / "configs/biggan/digits32.yaml", [f"data.path={demo_shards}", f"train.run_dir={run_dir}",
                      "track.enabled=false", "train.total_kimg=8", "eval.every_kimg=8"])  # fmt: skip
    trainer = Trainer(cfg)
    trainer.run()
    history = trainer.metric_history
    return {"run_dir": run_dir, "start": history[0]["fd_digits"], "end": history[-1]["fd_digits"]}


def assert_same_networks(whole, resumed, when: str = "after resume") -> None:
    """G_ema, D and G of two trainers are bit-identical (the resume tests' verdict)."""
    for name, a, b in [
        ("G_ema", whole.ema.model, resumed.ema.model),
        ("D", whole.D, resumed.D),
        ("G", whole.G, resumed.G),
    ]:
        for (key, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), f"{name}.{key} differs {when} (max |diff| {(x - y).abs().max():.3g})"


def id_image(i: int, resolution: int = 8) -> Image.Image:
    """An image whose first pixel encodes `i` (R = i // 256, G = i % 256): lossless in PNG."""
    a = np.full((resolution, resolution, 3), 128, dtype=np.uint8)
    a[0, 0] = (i // 256, i % 256, 7)
    return Image.fromarray(a)


def image_id(x_uint8: torch.Tensor) -> list[int]:
    """Inverse of id_image on a (B, 3, R, R) uint8 batch."""
    return [int(r) * 256 + int(g) for r, g in zip(x_uint8[:, 0, 0, 0], x_uint8[:, 1, 0, 0])]


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_shards(folder: Path, shards: list[list[dict]], classes: list[str], resolution: int = 8) -> Manifest:
    """Write raw samples (dicts of extension -> bytes) as tar shards plus a manifest, by hand."""
    folder.mkdir(parents=True, exist_ok=True)
    infos = []
    key = 0
    for s, samples in enumerate(shards):
        path = folder / f"shard-{s:05d}.tar"
        with wds.TarWriter(str(path), encoder=False) as w:
            for sample in samples:
                w.write({"__key__": f"{key:08d}", **sample})
                key += 1
        write_dali_index(path)
        infos.append(ShardInfo(path.name, len(samples), file_digest(path), path.stat().st_size))
    m = Manifest(name=folder.name, resolution=resolution, image_format="png", classes=classes, shards=infos)
    (folder / MANIFEST_NAME).write_text(m.to_json())
    return m


@pytest.fixture
def id_shards(tmp_path) -> Path:
    """8 shards x 25 id-stamped images (ids 0..199), labels id % 4."""
    shards = [
        [{"png": png_bytes(id_image(i)), "cls": str(i % 4).encode()} for i in range(s * 25, (s + 1) * 25)]
        for s in range(8)
    ]
    write_shards(tmp_path / "ids", shards, ["a", "b", "c", "d"])
    return tmp_path / "ids"


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(cmd: list[str], ready_url: str, log_path: Path, env: dict | None = None, ready_status=(200,)):
    """Run a server process until the block ends; wait (90 s at most) until `ready_url` answers.
    The process gets its own group, stopped as a whole (servers fork workers)."""
    log = open(log_path, "w")
    proc = subprocess.Popen(
        cmd, env=env or cli_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(ready_url, timeout=2).status in ready_status:
                    break
            except urllib.error.HTTPError as e:
                if e.code in ready_status:
                    break
            except OSError:
                pass
            assert proc.poll() is None, log_path.read_text()[-2000:]
            assert time.time() < deadline, f"{cmd[0]} did not come up in 90 s"
            time.sleep(0.5)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (sqlite backend), shared by the tests that log to one."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = cli_env()
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    mlflow_cli = str(Path(sys.executable).parent / "mlflow")
    cmd = [mlflow_cli, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
           "--backend-store-uri", f"sqlite:///{folder}/server.db", "--artifacts-destination", str(folder / "art")]  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    with served(cmd, uri + "/health", folder / "server.log", env):
        yield uri
