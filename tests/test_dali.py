"""The DALI loader on the CPU (device_id=None, CPU decoder): same shards, same logic as on a GPU."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from bigtrain.config import load_config
from bigtrain.data import DataError, ShardLoader, StreamSpec, make_loader
from bigtrain.data.dali import DaliLoader, ascii_labels
from bigtrain.data.writer import prepare
from conftest import image_id


def _epoch(loader, batches):
    xs, ys = zip(*(loader.next_uint8() for _ in range(batches)))
    return torch.cat(xs), torch.cat(ys)


def test_ascii_labels():
    padded = torch.tensor([[51, 0, 0], [49, 50, 0], [57, 57, 57]], dtype=torch.uint8)
    assert ascii_labels(padded).tolist() == [3, 12, 999]


def test_png_pixels_and_labels_equal_the_cpu_loader(id_shards):
    cpu_x, cpu_y = _epoch(ShardLoader(StreamSpec(id_shards, 25, 8, shuffle_buffer=0), num_workers=0), 8)
    dali_x, dali_y = _epoch(DaliLoader(StreamSpec(id_shards, 25, 8, shuffle_buffer=0), num_threads=1), 8)
    cpu = {i: (x, int(y)) for i, x, y in zip(image_id(cpu_x), cpu_x, cpu_y)}
    dali = {i: (x, int(y)) for i, x, y in zip(image_id(dali_x), dali_x, dali_y)}
    assert sorted(dali) == sorted(cpu) == list(range(200))
    for i in range(200):
        assert torch.equal(dali[i][0], cpu[i][0]), f"sample {i}: DALI pixels differ from PIL's"
        assert dali[i][1] == cpu[i][1] == i % 4


def test_jpeg_pixels_within_decoder_tolerance(tmp_path):
    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "src" / f"c{c}").mkdir(parents=True)
        for i in range(20):
            base = (
                rng.integers(30, 220, (4, 4, 3)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
            )  # flat 8x8 blocks
            Image.fromarray(base).save(tmp_path / "src" / f"c{c}" / f"{i}.png")
    prepare(tmp_path / "src", tmp_path / "jpg", resolution=32, image_format="jpg", shard_size=30)
    cpu_x, cpu_y = _epoch(
        ShardLoader(StreamSpec(tmp_path / "jpg", 20, 32, shuffle_buffer=0), num_workers=0), 3
    )
    dali_x, dali_y = _epoch(
        DaliLoader(StreamSpec(tmp_path / "jpg", 20, 32, shuffle_buffer=0), num_threads=1), 3
    )

    def by_content(x, y):  # order-free pairing: sort by label, then by pixel sum
        keys = [(int(label), int(img.long().sum())) for img, label in zip(x, y)]
        order = sorted(range(len(keys)), key=keys.__getitem__)
        return x[order].float(), y[order]

    (cx, cy), (dx, dy) = by_content(cpu_x, cpu_y), by_content(dali_x, dali_y)
    assert torch.equal(cy, dy)
    worst = (cx - dx).abs().max().item()
    assert worst <= 3, f"DALI and PIL JPEG decodes differ by up to {worst} levels (tolerance 3)"


def test_resume_continues_the_exact_stream(id_shards):
    loader = DaliLoader(StreamSpec(id_shards, 7, 8, seed=2, shuffle_buffer=32, hflip=True), num_threads=1)
    _epoch(loader, 33)  # past the first epoch
    state = loader.state_dict()
    expected_x, expected_y = _epoch(loader, 6)
    resumed = DaliLoader(StreamSpec(id_shards, 7, 8, seed=2, shuffle_buffer=32, hflip=True), num_threads=1)
    resumed.load_state_dict(state)
    x, y = _epoch(resumed, 6)
    assert torch.equal(x, expected_x) and torch.equal(y, expected_y)


def test_phase_resolution_change_keeps_the_position(tmp_path):
    prepare("demo", tmp_path / "d", resolution=32, shard_size=500)
    changed = DaliLoader(StreamSpec(tmp_path / "d", 16, 32, shuffle_buffer=0), num_threads=1)
    straight = DaliLoader(StreamSpec(tmp_path / "d", 16, 32, shuffle_buffer=0), num_threads=1)
    _epoch(changed, 3)
    _epoch(straight, 3)
    changed.reconfigure(resolution=16)
    x_small, y_small = _epoch(changed, 2)
    x_full, y_full = _epoch(straight, 2)
    assert x_small.shape == (32, 3, 16, 16)
    assert torch.equal(y_small, y_full), "the stream position moved when the resolution changed"
    box = torch.nn.functional.avg_pool2d(x_full.float(), 2)  # the CPU loader's area downscale
    mean_diff = (x_small.float() - box).abs().mean().item()
    assert mean_diff < 6, f"DALI's downscale differs from the box filter by {mean_diff:.2f} levels on average"
    with pytest.raises(DataError, match="resolution 64"):
        changed.reconfigure(resolution=64)


def test_missing_index_is_a_clear_error(id_shards):
    (id_shards / "shard-00002.idx").unlink()
    with pytest.raises(DataError, match=r"shard-00002.idx is missing; re-run `bigtrain prepare`"):
        DaliLoader(StreamSpec(id_shards, 10, 8))


def test_loader_choice(id_shards, caplog, monkeypatch):
    cfg = load_config(None, [f"data.path={id_shards}", "model.resolution=8"])
    with caplog.at_level(logging.INFO):
        assert isinstance(make_loader(cfg, 10, torch.device("cpu")), ShardLoader)  # auto on a CPU machine
    assert "webdataset" in caplog.text
    cfg.data.loader = "dali"
    assert isinstance(make_loader(cfg, 10, torch.device("cpu")), DaliLoader)
    monkeypatch.setattr("bigtrain.data.dali.dali_available", lambda: False)
    with pytest.raises(DataError, match="data.loader=dali needs NVIDIA DALI"):
        make_loader(cfg, 10, torch.device("cpu"))
