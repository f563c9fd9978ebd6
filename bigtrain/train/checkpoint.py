"""Atomic checkpoint directories: written to a temp dir, fsynced, renamed; `latest` updated last.

    RUN/checkpoints/step-00001234/state.pt      everything needed to resume (tensors and plain data)
    RUN/checkpoints/step-00001234/config.yaml   the run's config, for people
    RUN/checkpoints/step-00001234/checksums.json  sha256 and size of every other file in the folder
    RUN/checkpoints/latest                      the name of the newest complete checkpoint

A crash at any moment leaves `latest` naming a complete checkpoint (or no `latest` at all). A
checkpoint damaged afterwards (a truncated copy, a flipped byte on disk) fails its checksums, and
`--resume` falls back to the newest intact one, naming both.
Loading uses torch.load(weights_only=True): no arbitrary unpickling.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
import yaml

from ..checksums import file_digest

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
LATEST = "latest"
CHECKSUMS = "checksums.json"


class CheckpointError(ValueError):
    """A checkpoint path that does not hold a usable checkpoint."""


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def staging_dir(run_dir: str | Path, name: str) -> Path:
    """Where checkpoint `name` is assembled before its rename; the same path on every rank, so engines
    that shard their state (DeepSpeed ZeRO) can write their parts there first."""
    return Path(run_dir) / "checkpoints" / f".tmp-{name}"


def begin_checkpoint(run_dir: str | Path, name: str) -> Path:
    """A fresh, empty staging folder for checkpoint `name` (a leftover from a crash is discarded)."""
    tmp = staging_dir(run_dir, name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), key=lambda p: -len(p.parts)):  # files before their folders
        _fsync_path(path)
    _fsync_path(folder)


def save_checkpoint(
    run_dir: str | Path, name: str, state: dict, config: dict, keep: int = 3, mark_latest: bool = True
) -> Path:
    """Write state.pt and config.yaml into the staging folder from `begin_checkpoint` (which may hold
    engine files already), fsync everything, rename it into place, update `latest` (unless this is a
    named checkpoint such as `best`), prune old `step-*` ones."""
    root = Path(run_dir) / "checkpoints"
    final = root / name
    tmp = staging_dir(run_dir, name)
    try:
        torch.save(state, tmp / STATE_FILE)
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (tmp / CHECKSUMS).write_text(json.dumps(folder_checksums(tmp), indent=1, sort_keys=True))
        _fsync_tree(tmp)
        if final.exists():  # same step saved twice (SIGTERM right after a periodic save), or a new best
            old = final.with_name(f".old-{name}-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old)
        else:
            os.rename(tmp, final)
        _fsync_path(root)
        if mark_latest:
            _write_atomic(root / LATEST, name + "\n")
            _fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep, protect=name)
    return final


def _prune(root: Path, keep: int, protect: str) -> None:
    complete = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    for old in complete[:-keep]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


def folder_checksums(folder: Path) -> dict[str, dict]:
    """{relative path: {"sha256", "bytes"}} of every file under `folder` (engine shards included)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    return {
        p.relative_to(folder).as_posix(): {"sha256": file_digest(p), "bytes": p.stat().st_size} for p in files
    }


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why checkpoint folder `ckpt` cannot be trusted, or None when every file matches its checksum.
    A checkpoint from before checksums were recorded is trusted if its state.pt exists."""
    if not (ckpt / STATE_FILE).is_file():
        return f"it has no {STATE_FILE}"
    listing = ckpt / CHECKSUMS
    if not listing.is_file():
        return None
    try:
        expected = json.loads(listing.read_text())
    except json.JSONDecodeError:
        return f"its {CHECKSUMS} is not valid JSON"
    for name, want in expected.items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {want['bytes']} were written"
        if file_digest(path) != want["sha256"]:
            return f"{name} does not match the sha256 recorded when it was written"
    return None


def intact_checkpoint(run_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The checkpoint to resume from: the one `latest` names if it is intact, else the newest intact
    `step-*` one. Also returns the (checkpoint, problem) pairs passed over, newest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None, []
    steps = sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-")), reverse=True)
    named = latest_checkpoint_name(run_dir)
    candidates = ([root / named] if named else []) + [p for p in steps if p.name != named]
    passed_over = []
    for ckpt in candidates:
        problem = checkpoint_problem(ckpt) if ckpt.is_dir() else "it does not exist"
        if problem is None:
            return ckpt, passed_over
        passed_over.append((ckpt, problem))
    return None, passed_over


def latest_checkpoint_name(run_dir: str | Path) -> str | None:
    marker = Path(run_dir) / "checkpoints" / LATEST
    return marker.read_text().strip() if marker.is_file() else None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None if it has none."""
    name = latest_checkpoint_name(run_dir)
    if name is None:
        return None
    path = Path(run_dir) / "checkpoints" / name
    return path if (path / STATE_FILE).is_file() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory, its state.pt, or a run directory (-> its latest checkpoint)."""
    path = Path(path)
    if path.is_file() and path.name == STATE_FILE:
        return path.parent
    if (path / STATE_FILE).is_file():
        return path
    latest, passed_over = intact_checkpoint(path)
    for bad, problem in passed_over:
        log.warning("checkpoint %s is damaged (%s); passing over it", bad, problem)
    if latest is not None:
        return latest
    if passed_over:
        raise CheckpointError(
            f"{path} has no intact checkpoint: " + "; ".join(f"{b.name}: {p}" for b, p in passed_over)
        )
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raise CheckpointError(f"{path} is neither a checkpoint directory nor a run directory with checkpoints")


def load_checkpoint(path: str | Path) -> dict:
    ckpt = resolve_checkpoint(path)
    try:
        return torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: one sentence, not a pickle traceback
        raise CheckpointError(f"checkpoint {ckpt / STATE_FILE} cannot be loaded: {e}") from None


# ---------------------------------------------------------------- a copy in object storage
# `train.checkpoint_store` (an s3://, gs:// ... URL) keeps a copy of every checkpoint where a new node
# finds it. Upload order keeps the store consistent for a reader: a checkpoint's files, then its
# checksums.json, then the `latest` pointer; pruning follows. `fetch_from_store` brings the store's
# checkpoints that the run folder lacks, and resume then checks them like local ones.


def upload_checkpoint(ckpt: Path, store: str, keep: int, mark_latest: bool) -> None:
    from ..data.remote import filesystem, join, write_bytes

    fs = filesystem(store)
    target = join(store, ckpt.name)
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    for path in files:
        fs.put_file(str(path), str(join(target, path.relative_to(ckpt).as_posix())))
    write_bytes(join(target, CHECKSUMS), (ckpt / CHECKSUMS).read_bytes())
    if mark_latest:
        write_bytes(join(store, LATEST), (ckpt.name + "\n").encode())
    steps = sorted(name for name in _store_checkpoints(fs, store) if name.startswith("step-"))
    for old in steps[:-keep]:
        if old != ckpt.name:
            fs.rm(str(join(store, old)), recursive=True)


def _store_checkpoints(fs, store: str) -> list[str]:
    try:
        entries = fs.ls(store, detail=True, refresh=True)
    except FileNotFoundError:
        return []
    return [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"]


def fetch_from_store(store: str, run_dir: str | Path) -> list[str]:
    """Download the store's complete checkpoints (those with checksums.json) that `run_dir` lacks, and
    its `latest` pointer when the run folder has none. Returns the names fetched."""
    from ..data.remote import filesystem, join

    fs = filesystem(store)
    root = Path(run_dir) / "checkpoints"
    fetched = []
    for name in sorted(_store_checkpoints(fs, store)):
        if (root / name).exists() or not fs.exists(str(join(join(store, name), CHECKSUMS))):
            continue
        tmp = root / f".fetch-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        fs.get(str(join(store, name)) + "/", str(tmp) + "/", recursive=True)
        os.rename(tmp, root / name)
        fetched.append(name)
    if fs.exists(str(join(store, LATEST))) and not (root / LATEST).is_file():
        root.mkdir(parents=True, exist_ok=True)
        _write_atomic(root / LATEST, fs.cat_file(str(join(store, LATEST))).decode())
    return fetched
