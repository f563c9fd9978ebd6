import pytest
import torch

from bigtrain.data import DataError, Loader, ShardLoader, StreamSpec
from conftest import id_image, image_id, png_bytes, write_shards


def _ids(loader: ShardLoader, batches: int) -> list[int]:
    return [i for _ in range(batches) for i in image_id(loader.next_uint8()[0])]


def test_output_contract(id_shards):
    loader = ShardLoader(StreamSpec(id_shards, 10, 8), num_workers=0)
    assert isinstance(loader, Loader)
    x, y = next(loader)
    assert x.dtype == torch.float32 and x.shape == (10, 3, 8, 8)
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert y.dtype == torch.int64 and set(y.tolist()) <= {0, 1, 2, 3}


def test_one_epoch_per_worker_covers_every_sample_once(id_shards):
    loader = ShardLoader(StreamSpec(id_shards, 10, 8, shuffle_buffer=16), num_workers=2)
    ids = _ids(loader, 20)  # 200 samples = 2 roles x 4 shards x 25
    assert sorted(ids) == list(range(200))


def test_order_is_fixed_by_seed(id_shards):
    a = _ids(ShardLoader(StreamSpec(id_shards, 10, 8, seed=3), num_workers=2), 30)
    b = _ids(ShardLoader(StreamSpec(id_shards, 10, 8, seed=3), num_workers=2), 30)
    c = _ids(ShardLoader(StreamSpec(id_shards, 10, 8, seed=4), num_workers=2), 30)
    assert a == b
    assert a != c
    assert a[:200] != a[200:400] if len(a) >= 400 else sorted(a[200:]) != a[200:], "epochs reuse one order"


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_resume_continues_the_exact_stream(id_shards, workers):
    loader = ShardLoader(StreamSpec(id_shards, 7, 8, seed=1, shuffle_buffer=8), num_workers=workers)
    _ids(loader, 33)  # crosses an epoch boundary (200 samples / 7 per batch)
    state = loader.state_dict()
    expected = _ids(loader, 12)
    resumed = ShardLoader(StreamSpec(id_shards, 7, 8, seed=1, shuffle_buffer=8), num_workers=workers)
    resumed.load_state_dict(state)
    assert _ids(resumed, 12) == expected


def test_ranks_read_disjoint_shards(id_shards):
    ids = [
        set(_ids(ShardLoader(StreamSpec(id_shards, 10, 8, rank=r, world_size=3), num_workers=0), 6))
        for r in range(3)
    ]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])


def test_corrupt_and_unlabelled_samples_are_skipped_and_counted(tmp_path):
    good = [{"png": png_bytes(id_image(i)), "cls": b"0"} for i in range(10)]
    full = png_bytes(id_image(99))
    bad = [
        {"png": full[: len(full) // 2], "cls": b"0"},  # truncated PNG
        {"png": b"plain text, not an image", "cls": b"0"},
        {"png": png_bytes(id_image(98))},  # no label
    ]
    write_shards(tmp_path / "d", [good[:5] + bad + good[5:]], ["zero"])
    loader = ShardLoader(StreamSpec(tmp_path / "d", 10, 8, shuffle_buffer=0), num_workers=0)
    assert sorted(_ids(loader, 1)) == list(range(10))
    assert loader.skipped_corrupt == 2, loader.skipped_corrupt
    assert loader.skipped_nolabel == 1, loader.skipped_nolabel


def test_checksum_mismatch_names_the_shard(id_shards):
    shard = id_shards / "shard-00003.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # same size, different content
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="shard-00003.tar does not match its sha256"):
        ShardLoader(StreamSpec(id_shards, 10, 8), num_workers=0)
    ShardLoader(StreamSpec(id_shards, 10, 8, verify_checksums=False), num_workers=0)  # the user may opt out


def test_missing_shard_and_missing_manifest(id_shards, tmp_path):
    (id_shards / "shard-00001.tar").unlink()
    with pytest.raises(DataError, match="shard-00001.tar named in the manifest is missing"):
        ShardLoader(StreamSpec(id_shards, 10, 8))
    with pytest.raises(DataError, match="bigtrain prepare"):
        ShardLoader(StreamSpec(tmp_path / "nothing", 10, 8))


def test_upscaling_is_refused_and_downscaling_is_area(id_shards):
    with pytest.raises(DataError, match="resolution 16 .* 8x8"):
        ShardLoader(StreamSpec(id_shards, 10, 16))
    x, _ = ShardLoader(StreamSpec(id_shards, 10, 4), num_workers=0).next_uint8()
    assert x.shape == (10, 3, 4, 4)


def test_too_few_shards_for_ranks(id_shards):
    with pytest.raises(DataError, match="8 shards for 9 ranks"):
        ShardLoader(StreamSpec(id_shards, 10, 8, rank=0, world_size=9))
