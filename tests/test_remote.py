"""Shards behind a URL: a real HTTP server and a real S3-API server (moto) on 127.0.0.1, started here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from bigtrain.data import ShardLoader, StreamSpec
from bigtrain.data.manifest import DataError, load_manifest
from conftest import PYTHON, free_port, image_id, served

SCRIPTS = Path(__file__).parent / "scripts"
pytest.importorskip("s3fs")


def shard_server(folder: Path, log: Path, *faults: str):
    port = free_port()
    cmd = [PYTHON, str(SCRIPTS / "shard_server.py"), str(folder), str(port), *faults]
    return served(cmd, f"http://127.0.0.1:{port}/", log, ready_status=(200, 404)), f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def http_digits(demo_shards, tmp_path_factory):
    server, url = shard_server(demo_shards, tmp_path_factory.mktemp("http") / "server.log")
    with server:
        yield url


@pytest.fixture(scope="module")
def s3_store(tmp_path_factory):
    """moto's S3 server; the credentials and endpoint come from the environment, as on a cluster."""
    port = free_port()
    moto = str(Path(sys.executable).parent / "moto_server")
    log = tmp_path_factory.mktemp("s3") / "server.log"
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}  # fmt: skip
    saved = {k: os.environ.get(k) for k in env}
    with served([moto, "-H", "127.0.0.1", "-p", str(port)], f"http://127.0.0.1:{port}/moto-api/", log):
        os.environ.update(env)
        try:
            import s3fs

            fs = s3fs.S3FileSystem()
            fs.mkdir("bigtrain-test")
            yield fs
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(scope="module")
def s3_digits(s3_store):
    """`bigtrain prepare demo s3://...`: the same shards as the local demo_shards, in the store."""
    from bigtrain.cli import main

    assert main(["prepare", "demo", "s3://bigtrain-test/digits", "--shard-size", "200"]) == 0
    return "s3://bigtrain-test/digits"


def test_prepare_into_a_store_writes_the_local_shards_and_refuses_to_overwrite(
    s3_digits, s3_store, demo_shards
):
    listed = sorted(p.rsplit("/", 1)[-1] for p in s3_store.ls("bigtrain-test/digits"))
    assert listed == sorted(p.name for p in demo_shards.iterdir() if p.is_file()), listed
    assert load_manifest(s3_digits).shards == load_manifest(demo_shards).shards, (
        "not the local prepare's shards"
    )
    from bigtrain.data.writer import prepare

    with pytest.raises(DataError, match="already holds a manifest; pass --overwrite"):
        prepare("demo", s3_digits)


def _batches(loader, n):
    return [loader.next_uint8() for _ in range(n)]


@pytest.mark.parametrize("store", ["http", "s3"])
def test_a_url_gives_the_local_folders_batches_and_resumes_exactly(
    demo_shards, http_digits, s3_digits, store
):
    url = {"http": http_digits, "s3": s3_digits}[store]
    kw = dict(batch_size=32, resolution=32, seed=3, shuffle_buffer=64)
    assert load_manifest(url).num_samples == load_manifest(demo_shards).num_samples == 1797
    local, remote = ShardLoader(StreamSpec(demo_shards, **kw), 2), ShardLoader(StreamSpec(url, **kw), 2)
    for i, ((x, y), (rx, ry)) in enumerate(zip(_batches(local, 60), _batches(remote, 60))):  # past one epoch
        assert torch.equal(x, rx) and torch.equal(y, ry), (
            f"batch {i} from {url} differs from the local folder's"
        )
    resumed = ShardLoader(StreamSpec(url, **kw), 2)
    resumed.load_state_dict(remote.state_dict())
    for i, ((x, y), (rx, ry)) in enumerate(zip(_batches(local, 5), _batches(resumed, 5))):
        assert torch.equal(x, rx) and torch.equal(y, ry), f"batch {i} after resuming from {url} differs"
    assert remote.read_retries == 0 and remote.skipped_shards == 0


def test_training_from_s3_resumes_exactly(s3_digits, tmp_path):
    from test_train import tiny

    from bigtrain.train.loop import Trainer
    from conftest import assert_same_networks

    whole = Trainer(tiny(s3_digits, tmp_path / "whole", "train.total_kimg=0.064"))
    whole.run()
    Trainer(tiny(s3_digits, tmp_path / "split", "train.total_kimg=0.032")).run()
    second = Trainer(tiny(s3_digits, tmp_path / "split", "train.total_kimg=0.064"), resume=True)
    assert second.iteration == 2
    second.run()
    assert_same_networks(whole, second)


def test_faults_are_retried_and_a_truncated_shard_is_skipped(id_shards, tmp_path):
    """503s and connections dropped mid-body are retried; a shard served truncated fails its checksum
    every time and is skipped; every other sample of the epoch arrives exactly once."""
    truncated = "shard-00003.tar"  # ids 75..99
    # Faults on named files' first GETs, not on a request counter: two workers interleave their
    # requests, and a counter's fault that lands on the truncated shard costs no extra retry.
    server, url = shard_server(id_shards, tmp_path / "server.log", "--truncate", truncated,
                               "--fail-once", "shard-00000.tar,shard-00005.tar",
                               "--drop-once", "shard-00001.tar,shard-00006.tar")  # fmt: skip
    with server:
        spec = StreamSpec(url, 25, 8, shuffle_buffer=0, retries=3, max_bad_shards=0.5, retry_backoff_s=0.01)
        loader = ShardLoader(spec, num_workers=2)
        # Batches of one shard each (25 samples, no shuffle), so a batch holds the samples of the epoch it
        # reports. A role may read a shard in epoch 1 before its epoch-0 owner does (prefetch), so each
        # named shard's first GET, and its fault, falls in epoch 0 or 1: count over both epochs.
        ids, end_of_epoch_1 = [], {}
        while any(r.epoch <= 1 for r in loader.roles):
            role = loader.next_role
            x, _ = loader.next_uint8()
            state = loader.roles[role]
            ids += image_id(x) if state.epoch == 0 else []
            if state.epoch <= 1:
                end_of_epoch_1[role] = state
    assert sorted(ids) == [i for i in range(200) if not 75 <= i < 100], "samples lost or repeated in epoch 0"
    skipped = sum(r.bad_shards for r in end_of_epoch_1.values())
    assert skipped == 2, f"{skipped} shards counted as skipped in two epochs, expected 2 (one per epoch)"
    retries = sum(r.retries for r in end_of_epoch_1.values())
    expected = 4 + 2 * 3  # the four faulty first reads; three retries of the truncated shard per epoch
    assert retries == expected, f"{retries} retries counted in two epochs, expected {expected}"


def test_too_many_unreadable_shards_stop_the_run_with_one_clear_error(id_shards, tmp_path):
    server, url = shard_server(
        id_shards, tmp_path / "server.log", "--fail-every", "1"
    )  # every shard GET: 503
    with server:
        loader = ShardLoader(
            StreamSpec(url, 25, 8, shuffle_buffer=0, retries=1, retry_backoff_s=0.01), num_workers=0
        )
        with pytest.raises(DataError, match=r"2 of this worker's 8 shards were unreadable .* 503"):
            loader.next_uint8()


def test_a_missing_manifest_at_a_url_is_one_clear_error(http_digits):
    with pytest.raises(DataError, match="nothing/manifest.json cannot be read.*bigtrain prepare"):
        load_manifest(http_digits + "/nothing")


def foreign_shards(folder: Path, json_labels: bool = False) -> Path:
    """Shards as webdataset.ShardWriter writes them (other tools' layout): 4 x 25 samples, ids 0..99
    as PNG under `.png`, label id % 5 in `.cls` (or `.json`); every 10th sample has no label."""
    import webdataset as wds

    from conftest import id_image, png_bytes

    folder.mkdir(parents=True)
    with wds.ShardWriter(str(folder / "other-%06d.tar"), maxcount=25, verbose=0) as w:
        for i in range(100):
            sample = {"__key__": f"s{i:05d}", "png": png_bytes(id_image(i, 8 + i % 3))}
            if i % 10 != 9:
                sample["json" if json_labels else "cls"] = (
                    json.dumps({"label": i % 5}).encode() if json_labels else str(i % 5).encode()
                )
            w.write(sample)
    return folder


def _ids_and_labels(loader, batches):
    ids, labels = [], []
    for _ in range(batches):
        x, y = loader.next_uint8()
        ids += image_id(x)
        labels += y.tolist()
    return ids, labels


@pytest.mark.parametrize("labels", ["cls", "json:label"])
def test_index_makes_other_tools_shards_trainable(tmp_path, labels):
    from bigtrain.cli import main

    src = foreign_shards(tmp_path / "src", json_labels=labels != "cls")
    out = tmp_path / "indexed"
    assert main(["index", str(src / "other-{000000..000003}.tar"), str(out), "--label-key", labels]) == 0
    m = load_manifest(out)
    assert [s.count for s in m.shards] == [25] * 4 and m.classes == ["0", "1", "2", "3", "4"]
    assert m.resolution == 8, f"smallest side {m.resolution}, expected 8 (images are 8, 9 and 10 px)"
    assert m.num_skipped == 10 and "10 samples without" in m.skipped[-1]["reason"], m.skipped
    loader = ShardLoader(StreamSpec(out, 30, 8, shuffle_buffer=0), num_workers=0)
    ids, ys = _ids_and_labels(loader, 3)
    assert sorted(ids) == [i for i in range(100) if i % 10 != 9], "every labelled sample, once"
    assert ys == [i % 5 for i in ids], "labels do not follow their images"
    assert loader.skipped_nolabel == 10


def test_index_over_http_writes_the_manifest_to_s3_and_training_streams_from_both(tmp_path, s3_store):
    from bigtrain.cli import main

    src = foreign_shards(tmp_path / "src")
    server, url = shard_server(src, tmp_path / "server.log")
    with server:
        pattern = url + "/other-{000000..000003}.tar"
        assert main(["index", pattern, "s3://bigtrain-test/foreign"]) == 0
        m = load_manifest("s3://bigtrain-test/foreign")
        assert m.shards[0].name == url + "/other-000000.tar", "the manifest names the shards where they are"
        loader = ShardLoader(
            StreamSpec("s3://bigtrain-test/foreign", 30, 8, seed=1, shuffle_buffer=16), num_workers=2
        )
        local = ShardLoader(
            StreamSpec(_index_locally(src, tmp_path / "local"), 30, 8, seed=1, shuffle_buffer=16),
            num_workers=2,
        )
        assert _ids_and_labels(loader, 6) == _ids_and_labels(local, 6)


def _index_locally(src: Path, out: Path) -> Path:
    from bigtrain.data.index import index_shards

    index_shards(str(src), str(out))
    return out


def test_index_of_nothing_is_one_clear_error(tmp_path):
    from bigtrain.data.index import index_shards

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no .tar shards"):
        index_shards(str(tmp_path / "empty"), str(tmp_path / "out"))


@pytest.mark.parametrize("damage", ["truncated", "flipped byte"])
def test_a_fresh_node_resumes_from_the_store_past_a_damaged_latest_checkpoint(
    demo_shards, s3_store, tmp_path, caplog, damage
):
    """Checkpoints copied to S3 (train.checkpoint_store); the newest object damaged in the store; a node
    with an empty run folder resumes from the one before it, exactly, and the log names both."""
    from test_train import tiny

    from bigtrain.train.loop import Trainer
    from conftest import assert_same_networks

    store = f"s3://bigtrain-test/runs-{damage.replace(' ', '-')}"
    steps = ["train.total_kimg=0.096", "train.ckpt_every_kimg=0.032", f"train.checkpoint_store={store}"]
    whole = Trainer(tiny(demo_shards, tmp_path / "node1", *steps))
    whole.run()
    names = sorted(p.rsplit("/", 1)[-1] for p in s3_store.ls(store[5:], refresh=True))
    assert names == ["latest", "step-00000002", "step-00000004", "step-00000006"], names
    key = f"{store[5:]}/step-00000006/state.pt"
    data = bytearray(s3_store.cat_file(key))
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x01
    s3_store.pipe_file(key, bytes(data))
    caplog.set_level("INFO")
    resumed = Trainer(tiny(demo_shards, tmp_path / "node2", *steps), resume=True)
    assert resumed.iteration == 4, f"resumed at iteration {resumed.iteration}, expected 4"
    assert "step-00000006 is damaged" in caplog.text and "resuming from" in caplog.text, caplog.text
    resumed.run()
    assert_same_networks(whole, resumed, "after falling back past the damaged checkpoint in the store")


def _cache_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.tar"))


def test_dali_decodes_streamed_shards_through_a_capped_cache_and_resumes_exactly(id_shards, tmp_path):
    """DALI (its CPU pipeline here) over HTTP: shards pass through a cache capped at three shards, one
    window of one shard being decoded while the next is fetched; one epoch gives every sample once with
    the CPU loader's pixels; a resumed loader continues with the same batches."""
    pytest.importorskip("nvidia.dali")
    from bigtrain.data.dali_stream import DaliStreamLoader

    cap = 3 * max(p.stat().st_size for p in id_shards.glob("*.tar"))
    server, url = shard_server(id_shards, tmp_path / "server.log")
    spec = StreamSpec(url, 20, 8, shuffle_buffer=8, seed=4, retry_backoff_s=0.01)
    with server:
        loader = DaliStreamLoader(spec, num_threads=1, cache_dir=tmp_path / "cache", cache_bytes=cap)
        xs, ys, peak = [], [], 0
        for _ in range(10):  # 200 samples: one epoch
            x, y = loader.next_uint8()
            xs.append(x)
            ys.append(y)
            peak = max(peak, _cache_bytes(tmp_path / "cache"))
        assert peak <= cap, f"the cache held {peak} bytes, capped at {cap}"
        x, y = torch.cat(xs), torch.cat(ys)
        ids = image_id(x)
        assert sorted(ids) == list(range(200)), "one epoch must give every sample once"
        assert y.tolist() == [i % 4 for i in ids]
        cpu_x, _ = ShardLoader(StreamSpec(id_shards, 200, 8, shuffle_buffer=0), num_workers=0).next_uint8()
        by_id = dict(zip(image_id(cpu_x), cpu_x))
        assert all(torch.equal(xi, by_id[i]) for i, xi in zip(ids, x)), "DALI's pixels differ from PIL's"

        for _ in range(3):
            loader.next_uint8()  # into the second epoch, mid-window (batches of 20, windows of 25)
        state = loader.state_dict()
        expected = [loader.next_uint8() for _ in range(4)]
        loader.close()
        resumed = DaliStreamLoader(spec, num_threads=1, cache_dir=tmp_path / "cache2", cache_bytes=cap)
        resumed.load_state_dict(state)
        for i, ((ex, ey), (rx, ry)) in enumerate(zip(expected, [resumed.next_uint8() for _ in range(4)])):
            assert torch.equal(ex, rx) and torch.equal(ey, ry), f"batch {i} after resuming differs"
        resumed.close()
    assert not list((tmp_path / "cache").rglob("*.tar")), "closing the loader leaves shards in the cache"


def test_dali_stream_skips_a_shard_that_arrives_truncated(id_shards, tmp_path):
    pytest.importorskip("nvidia.dali")
    from bigtrain.data.dali_stream import DaliStreamLoader

    server, url = shard_server(id_shards, tmp_path / "server.log", "--truncate", "shard-00003.tar")
    with server:
        spec = StreamSpec(url, 25, 8, shuffle_buffer=0, retries=1, retry_backoff_s=0.01, max_bad_shards=0.2)
        loader = DaliStreamLoader(spec, num_threads=1, cache_dir=tmp_path / "cache")
        ids = [i for _ in range(7) for i in image_id(loader.next_uint8()[0])]
        loader.close()
    assert sorted(ids) == [i for i in range(200) if not 75 <= i < 100]
    # The filler may already be retrying the next epoch's copy of the shard: at least one retry.
    assert loader.skipped_shards == 1 and loader.read_retries >= 1, (
        loader.skipped_shards,
        loader.read_retries,
    )


def test_make_loader_streams_a_url_with_either_loader(http_digits, tmp_path):
    pytest.importorskip("nvidia.dali")
    from bigtrain.config import load_config
    from bigtrain.data import make_loader
    from bigtrain.data.dali_stream import DaliStreamLoader

    recipe = Path(__file__).parents[1] / "configs" / "biggan" / "digits32.yaml"
    for kind, expected in [("dali", DaliStreamLoader), ("webdataset", ShardLoader)]:
        cfg = load_config(
            recipe, [f"data.path={http_digits}", f"data.loader={kind}", f"data.cache_dir={tmp_path}"]
        )
        loader = make_loader(cfg, 16, torch.device("cpu"))
        assert type(loader) is expected, f"data.loader={kind} with a URL gave {type(loader).__name__}"
        x, y = next(loader)
        assert x.shape == (16, 3, 32, 32) and y.shape == (16,)
        loader.close()


def test_prepare_over_http_put_then_train_from_it(demo_shards, tmp_path):
    """A server that takes PUT: `prepare` uploads the shards, then the manifest; the loader reads them
    back as the local folder's batches."""
    (tmp_path / "www").mkdir()
    server, url = shard_server(tmp_path / "www", tmp_path / "server.log", "--accept-put")
    with server:
        from bigtrain.cli import main

        assert main(["prepare", "demo", url + "/digits", "--shard-size", "200"]) == 0
        assert load_manifest(url + "/digits").shards == load_manifest(demo_shards).shards
        kw = dict(batch_size=32, resolution=32, seed=5, shuffle_buffer=32)
        for (x, y), (rx, ry) in zip(
            _batches(ShardLoader(StreamSpec(demo_shards, **kw), 0), 3),
            _batches(ShardLoader(StreamSpec(url + "/digits", **kw), 0), 3),
        ):
            assert torch.equal(x, rx) and torch.equal(y, ry)


def test_a_shard_pattern_as_data_path_is_indexed_once(tmp_path, monkeypatch, caplog):
    from bigtrain.config import load_config
    from bigtrain.data import make_loader

    monkeypatch.setenv("BIGTRAIN_CACHE", str(tmp_path / "cache"))
    src = foreign_shards(tmp_path / "src")
    server, url = shard_server(src, tmp_path / "server.log")
    recipe = Path(__file__).parents[1] / "configs" / "biggan" / "digits32.yaml"
    pattern = url + "/other-{000000..000003}.tar"
    caplog.set_level("INFO")
    with server:
        for _ in range(2):  # the second run reuses the index
            cfg = load_config(
                recipe,
                [
                    f"data.path={pattern}",
                    "data.loader=webdataset",
                    "data.num_workers=0",
                    "model.resolution=8",
                    "model.biggan.attn_res=[]",
                ],
            )
            loader = make_loader(cfg, 30, torch.device("cpu"))
            assert cfg.data.path.startswith(str(tmp_path / "cache")), cfg.data.path
            assert loader.manifest.num_samples == 100 and loader.manifest.num_classes == 5
            assert sorted(_ids_and_labels(loader, 3)[0]) == [i for i in range(100) if i % 10 != 9]
    assert caplog.text.count("indexing") == 1, "the pattern was indexed more than once"
