"""`bigtrain prepare`: an image folder, a zip of images or the demo set -> WebDataset shards + manifest.

Layout of the output folder:
    OUT/shard-00000.tar ...   samples `{key}.png|jpg` (RGB, resolution x resolution) and `{key}.cls`
    OUT/shard-00000.idx ...   DALI's webdataset index of each shard (byte offsets of every file)
    OUT/manifest.json         shard names, counts, sha256, resolution, class names, skipped files

Writing is atomic: everything goes to a sibling temp folder that is renamed to OUT at the end, so an
interrupted run never leaves a manifest that points at half-written shards.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import random
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import webdataset as wds
from tqdm import tqdm

from ..checksums import file_digest
from .demo import DEMO_NAME, DEMO_SOURCE, demo_images
from .images import IMAGE_EXTENSIONS, BadImage, decode_rgb, encode, fit_square
from .manifest import MANIFEST_NAME, DataError, Manifest, ShardInfo, load_manifest
from .remote import is_url, join, write_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One file of the source: `where` is a path in the folder or a member of the zip."""

    where: str
    label: int


@dataclass(frozen=True)
class EncodeJob:
    source: str  # folder or zip path
    is_zip: bool
    resolution: int
    image_format: str
    jpeg_quality: int


def _class_of(rel: PurePosixPath) -> str | None:
    return rel.parts[0] if len(rel.parts) > 1 else None


def _is_hidden(rel: PurePosixPath) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in rel.parts)


def scan(relative_paths: list[str]) -> tuple[list[tuple[str, str | None]], list[dict]]:
    """Split paths into (path, class name) image candidates and skipped entries with reasons."""
    keep, skipped = [], []
    for p in sorted(relative_paths):
        rel = PurePosixPath(p)
        if _is_hidden(rel):
            skipped.append({"file": p, "reason": "hidden file"})
        elif rel.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped.append({"file": p, "reason": f"not an image file extension ({rel.suffix or 'none'})"})
        else:
            keep.append((p, rel))
    # A zip of `train/<class>/<n>.jpg` wraps its class folders in one folder: labels come from below it.
    depth = 0
    while (
        keep
        and all(len(r.parts) > depth + 2 for _, r in keep)
        and len({r.parts[depth] for _, r in keep}) == 1
    ):
        depth += 1
    return [(p, _class_of(PurePosixPath(*r.parts[depth:]))) for p, r in keep], skipped


def _list_source(src: Path) -> tuple[list[str], bool]:
    if src.is_dir():
        files = [str(PurePosixPath(p.relative_to(src))) for p in src.rglob("*") if p.is_file()]
        return files, False
    if src.is_file() and zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as zf:
            return [i.filename for i in zf.infolist() if not i.is_dir()], True
    if src.exists():
        raise DataError(f"source {src} is neither a folder nor a zip file")
    raise DataError(f"source folder {src} does not exist")


# Worker-process state: an open zip per process, so members are read without reopening the file.
_ZIP: dict[str, zipfile.ZipFile] = {}


def _read(job: EncodeJob, where: str) -> bytes:
    if job.is_zip:
        zf = _ZIP.get(job.source)
        if zf is None:
            zf = _ZIP[job.source] = zipfile.ZipFile(job.source)
        return zf.read(where)
    return (Path(job.source) / where).read_bytes()


def _encode_one(args: tuple[EncodeJob, Candidate]) -> tuple[Candidate, bytes | None, str]:
    job, cand = args
    try:
        img = fit_square(decode_rgb(_read(job, cand.where)), job.resolution)
        return cand, encode(img, job.image_format, job.jpeg_quality), ""
    except BadImage as e:
        return cand, None, f"cannot decode: {e}"
    except OSError as e:
        return cand, None, f"cannot read: {e}"


DALI_INDEX_VERSION = "v1.2"


def write_dali_index(shard: Path) -> Path:
    """DALI's webdataset index next to a shard: a header `v1.2 <samples>`, then one line per sample
    listing `<ext> <data offset> <size> <member name>` for each of its files, so DALI can seek."""
    samples: list[list[str]] = []
    last_key = None
    with tarfile.open(shard) as tar:
        for member in tar:
            if not member.isreg():
                continue
            key, ext = member.name.split(".", 1) if "." in member.name else (member.name, "")
            if key != last_key:
                samples.append([])
                last_key = key
            samples[-1].append(f"{ext} {member.offset_data} {member.size} {member.name}")
    index = shard.with_suffix(".idx")
    index.write_text(f"{DALI_INDEX_VERSION} {len(samples)}\n" + "".join(" ".join(s) + "\n" for s in samples))
    return index


class _ShardSink:
    """Writes samples into numbered tar shards of at most `shard_size` samples."""

    def __init__(self, folder: Path, shard_size: int, image_format: str):
        self.folder, self.shard_size, self.ext = folder, shard_size, image_format
        self.shards: list[ShardInfo] = []
        self._writer: wds.TarWriter | None = None
        self._count = 0
        self._key = 0

    def add(self, image: bytes, label: int) -> None:
        if self._writer is None:
            self._path = self.folder / f"shard-{len(self.shards):05d}.tar"
            self._writer = wds.TarWriter(str(self._path), encoder=False, mtime=0)  # same input, same bytes
        self._writer.write({"__key__": f"{self._key:08d}", self.ext: image, "cls": str(label).encode()})
        self._key += 1
        self._count += 1
        if self._count == self.shard_size:
            self._close()

    def _close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        with open(self._path, "rb+") as f:
            os.fsync(f.fileno())
        write_dali_index(self._path)
        self.shards.append(
            ShardInfo(self._path.name, self._count, file_digest(self._path), self._path.stat().st_size)
        )
        self._writer, self._count = None, 0

    def finish(self) -> list[ShardInfo]:
        self._close()
        return self.shards


def _demo_stream(resolution: int, image_format: str) -> tuple[Iterator, int, list[str]]:
    images, labels, classes = demo_images(resolution)
    stream = (
        (Candidate(f"digit-{i}", y), encode(img, image_format), "")
        for i, (img, y) in enumerate(zip(images, labels))
    )
    return stream, len(images), classes


def _keep_existing(out: str | Path) -> Manifest:
    """--exist-ok on a finished output: its manifest, untouched."""
    m = load_manifest(out)
    log.info(
        "%s already holds %d samples in %d shards; leaving it as it is", out, m.num_samples, len(m.shards)
    )
    return m


def _prepare_to_store(src: str | Path, url: str, exist_ok: bool, overwrite: bool, **options) -> Manifest:
    """`prepare` into a local temp folder, then upload: shards and DALI indexes first, the manifest
    last, so a reader of the store sees either no manifest or a complete set."""
    from .remote import filesystem

    fs = filesystem(url)
    http = url.startswith(("http://", "https://"))  # a server that takes PUT (WebDAV, nginx dav, ...)
    put = {"method": "put"} if http else {}
    if fs.exists(str(join(url, MANIFEST_NAME))):
        if exist_ok:
            return _keep_existing(url)
        if not overwrite:
            raise DataError(f"{url} already holds a manifest; pass --overwrite to replace it")
        if not http:  # HTTP has no delete here: the new manifest replaces the old one, last
            fs.rm(str(join(url, MANIFEST_NAME)))  # readers stop trusting the old set before it changes
    with tempfile.TemporaryDirectory(prefix="bigtrain-prepare-") as tmp:
        local = Path(tmp) / url.rstrip("/").rsplit("/", 1)[-1]
        m = prepare(src, local, **options)
        files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
        for path in tqdm(files, desc=f"upload to {url}", unit="file"):
            fs.put_file(str(path), str(join(url, path.relative_to(local).as_posix())), **put)
        write_bytes(join(url, MANIFEST_NAME), (local / MANIFEST_NAME).read_bytes())
    return m


def prepare(
    src: str | Path,
    out: str | Path,
    resolution: int = 32,
    shard_size: int = 1000,
    image_format: str = "png",
    jpeg_quality: int = 95,
    workers: int = 0,
    seed: int = 0,
    exist_ok: bool = False,
    overwrite: bool = False,
) -> Manifest:
    """Write shards and manifest for `src` ("demo", an image folder, or a zip) into `out`, a folder or
    an object-store URL (see `_prepare_to_store`)."""
    if is_url(out):
        return _prepare_to_store(
            src, str(out), exist_ok, overwrite, resolution=resolution, shard_size=shard_size,
            image_format=image_format, jpeg_quality=jpeg_quality, workers=workers, seed=seed,
        )  # fmt: skip
    out = Path(out)
    if resolution < 4 or resolution & (resolution - 1):
        raise DataError(f"--resolution {resolution} must be a power of two of at least 4")
    if shard_size < 1:
        raise DataError(f"--shard-size {shard_size} must be at least 1")
    if image_format not in ("png", "jpg"):
        raise DataError(f"--format {image_format!r} must be png or jpg")
    if out.exists():
        if exist_ok and (out / MANIFEST_NAME).is_file():
            return _keep_existing(out)
        if not overwrite:
            raise DataError(f"output folder {out} already exists; pass --overwrite to replace it")

    pool = None
    if str(src) == DEMO_SOURCE:
        stream, total, classes = _demo_stream(resolution, image_format)
        name, skipped = DEMO_NAME, []
    else:
        src = Path(src)
        files, is_zip = _list_source(src)
        candidates, skipped = scan(files)
        if not candidates:
            raise DataError(f"source {src} holds no image files ({len(skipped)} other files)")
        class_names = sorted({c for _, c in candidates if c is not None})
        if class_names and any(c is None for _, c in candidates):
            loose = [p for p, c in candidates if c is None]
            skipped += [{"file": p, "reason": "outside the class sub-folders"} for p in loose]
            candidates = [(p, c) for p, c in candidates if c is not None]
        classes = class_names
        index = {c: i for i, c in enumerate(classes)}
        cands = [Candidate(p, index[c] if c is not None else 0) for p, c in candidates]
        random.Random(seed).shuffle(cands)  # mix classes across shards
        job = EncodeJob(str(src), is_zip, resolution, image_format, jpeg_quality)
        total, name = len(cands), src.stem
        workers = workers or min(os.cpu_count() or 1, 8)
        if workers > 1 and total >= 256:
            pool = mp.get_context("spawn").Pool(workers)
            stream = pool.imap(_encode_one, ((job, c) for c in cands), chunksize=32)
        else:
            stream = map(_encode_one, ((job, c) for c in cands))

    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        sink = _ShardSink(tmp, shard_size, image_format)
        for cand, data, reason in tqdm(
            stream, total=total, desc=f"prepare {out.name}", unit="img", leave=False
        ):
            if data is None:
                skipped.append({"file": cand.where, "reason": reason})
                log.warning("skipped %s: %s", cand.where, reason)
            else:
                sink.add(data, cand.label)
        shards = sink.finish()
        if not shards:
            raise DataError(f"source {src} has no image that decodes ({len(skipped)} files skipped)")
        manifest = Manifest(
            name=name,
            resolution=resolution,
            image_format=image_format,
            classes=classes,
            shards=shards,
            num_skipped=len(skipped),
            skipped=skipped,
            source=str(src),
        )
        (tmp / MANIFEST_NAME).write_text(manifest.to_json())
        if out.exists():  # --overwrite: swap in the new folder, then drop the old one
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if pool is not None:
            pool.terminate()
    if skipped:
        log.warning("%d files skipped (listed under 'skipped' in %s)", len(skipped), out / MANIFEST_NAME)
    log.info(
        "wrote %d samples in %d shards to %s (%dx%d %s, %d classes)",
        manifest.num_samples,
        len(shards),
        out,
        resolution,
        resolution,
        image_format,
        len(classes),
    )
    return manifest
