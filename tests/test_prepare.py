import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from bigtrain.data import DataError, ShardLoader, StreamSpec, load_manifest, prepare
from bigtrain.data.demo import demo_images
from bigtrain.data.manifest import MANIFEST_NAME


def test_demo_round_trip_pixels_and_labels(demo_shards):
    m = load_manifest(demo_shards)
    assert m.num_samples == 1797 and m.num_classes == 10 and len(m.shards) == 9
    images, labels, _ = demo_images(32)
    by_pixels = {np.asarray(img).tobytes(): y for img, y in zip(images, labels)}
    loader = ShardLoader(StreamSpec(demo_shards, 599, 32, shuffle_buffer=0), num_workers=0)
    seen = 0
    for _ in range(3):  # 3 x 599 = 1797: exactly one epoch
        x, y = loader.next_uint8()
        for img, label in zip(x.permute(0, 2, 3, 1).numpy(), y.tolist()):
            assert by_pixels.get(img.tobytes()) == label, (
                "a shard sample's pixels or label differ from the source"
            )
            seen += 1
    assert seen == 1797


def _messy_folder(root):
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / "cat" / "wide.jpg")
    Image.fromarray(rng.integers(0, 255, (50, 30), dtype=np.uint8), "L").save(root / "cat" / "gray.png")
    Image.fromarray(rng.integers(0, 255, (33, 33, 4), dtype=np.uint8), "RGBA").save(
        root / "dog" / "alpha.png"
    )
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).convert("CMYK").save(
        root / "dog" / "cmyk.jpg"
    )
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(root / "dog" / "small.jpg")
    full = (root / "dog" / "small.jpg").read_bytes()
    (root / "dog" / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "cat" / "notes.jpg").write_text("this is text, not a JPEG")
    (root / "cat" / ".hidden.png").write_bytes((root / "cat" / "gray.png").read_bytes())
    (root / "dog" / "README.txt").write_text("hello")


def test_messy_folder_converts_and_skips_with_report(tmp_path, caplog):
    _messy_folder(tmp_path / "src")
    m = prepare(tmp_path / "src", tmp_path / "out", resolution=16, shard_size=2)
    assert m.classes == ["cat", "dog"]
    assert m.num_samples == 5, m
    reasons = {s["file"]: s["reason"] for s in m.skipped}
    assert set(reasons) == {"dog/truncated.jpg", "cat/notes.jpg", "cat/.hidden.png", "dog/README.txt"}, (
        reasons
    )
    assert reasons["dog/truncated.jpg"].startswith("cannot decode")
    assert reasons["cat/.hidden.png"] == "hidden file"
    assert m.num_skipped == 4
    assert "dog/truncated.jpg" in caplog.text, "skipped files are listed in the log"
    x, y = ShardLoader(StreamSpec(tmp_path / "out", 5, 16, shuffle_buffer=0), num_workers=0).next_uint8()
    assert x.shape == (5, 3, 16, 16) and sorted(y.tolist()) == [0, 0, 1, 1, 1]
    assert json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["num_samples"] == 5


def test_zip_source_matches_folder_source(tmp_path):
    _messy_folder(tmp_path / "src")
    with zipfile.ZipFile(tmp_path / "src.zip", "w") as zf:
        for p in sorted((tmp_path / "src").rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(tmp_path / "src").as_posix())
    a = prepare(tmp_path / "src", tmp_path / "a", resolution=16)
    b = prepare(tmp_path / "src.zip", tmp_path / "b", resolution=16)
    assert [s.sha256 for s in a.shards] == [s.sha256 for s in b.shards]
    assert a.skipped == b.skipped


def test_parallel_workers_write_the_same_shards(tmp_path):
    src = tmp_path / "src" / "only"
    src.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(300):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(src / f"{i:03d}.png")
    serial = prepare(tmp_path / "src", tmp_path / "serial", resolution=8, workers=1, shard_size=128)
    parallel = prepare(tmp_path / "src", tmp_path / "parallel", resolution=8, workers=2, shard_size=128)
    assert [s.sha256 for s in serial.shards] == [s.sha256 for s in parallel.shards]
    assert [s.count for s in serial.shards] == [128, 128, 44]


def test_bad_sources_fail_with_one_sentence_and_leave_nothing(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        prepare(tmp_path / "missing", tmp_path / "out1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        prepare(tmp_path / "empty", tmp_path / "out2")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_text("not an image")
    with pytest.raises(DataError, match="no image that decodes"):
        prepare(tmp_path / "junk", tmp_path / "out3")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["empty", "junk"], f"half-written output left behind: {left}"


def test_existing_output_is_refused_unless_asked(tmp_path):
    prepare("demo", tmp_path / "d", resolution=8, shard_size=1000)
    with pytest.raises(DataError, match="--overwrite"):
        prepare("demo", tmp_path / "d", resolution=8)
    assert prepare("demo", tmp_path / "d", resolution=8, exist_ok=True).num_samples == 1797
    m = prepare("demo", tmp_path / "d", resolution=16, shard_size=500, overwrite=True)
    assert load_manifest(tmp_path / "d").resolution == 16 and len(m.shards) == 4


def test_interrupted_prepare_leaves_no_manifest(tmp_path, monkeypatch):
    import bigtrain.data.writer as prep

    calls = {"n": 0}
    original = prep._ShardSink.add

    def add_then_die(self, image, label):
        calls["n"] += 1
        if calls["n"] == 700:
            raise KeyboardInterrupt
        original(self, image, label)

    monkeypatch.setattr(prep._ShardSink, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare("demo", tmp_path / "d", resolution=8, shard_size=200)
    assert list(tmp_path.iterdir()) == [], "an interrupted prepare left files behind"


def test_a_wrapper_folder_around_the_class_folders_is_not_a_class():
    """CIFAR-10's zips hold train/<class>/<n>.jpg: ten classes, not one called `train`."""
    from bigtrain.data.writer import scan

    keep, _ = scan(["train/cat/1.jpg", "train/dog/2.jpg", "train/dog/3.png"])
    assert sorted({c for _, c in keep}) == ["cat", "dog"], keep
    keep, _ = scan(["cat/1.jpg", "dog/2.jpg"])
    assert sorted({c for _, c in keep}) == ["cat", "dog"], keep
    keep, _ = scan(["a.jpg", "b.jpg"])
    assert {c for _, c in keep} == {None}, keep
