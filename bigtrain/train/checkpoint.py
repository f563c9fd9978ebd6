"""Atomic checkpoint directories: written to a temp dir, fsynced, renamed; `latest` updated last.

    RUN/checkpoints/step-00001234/state.pt      everything needed to resume (tensors and plain data)
    RUN/checkpoints/step-00001234/config.yaml   the run's config, for people
    RUN/checkpoints/latest                      the name of the newest complete checkpoint

A crash at any moment leaves `latest` naming a complete checkpoint (or no `latest` at all).
Loading uses torch.load(weights_only=True): no arbitrary unpickling.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
import yaml

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
LATEST = "latest"


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


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None if it has none."""
    root = Path(run_dir) / "checkpoints"
    marker = root / LATEST
    if not marker.is_file():
        return None
    path = root / marker.read_text().strip()
    return path if (path / STATE_FILE).is_file() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory, its state.pt, or a run directory (-> its latest checkpoint)."""
    path = Path(path)
    if path.is_file() and path.name == STATE_FILE:
        return path.parent
    if (path / STATE_FILE).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is not None:
        return latest
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raise CheckpointError(f"{path} is neither a checkpoint directory nor a run directory with checkpoints")


def load_checkpoint(path: str | Path) -> dict:
    ckpt = resolve_checkpoint(path)
    try:
        return torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: one sentence, not a pickle traceback
        raise CheckpointError(f"checkpoint {ckpt / STATE_FILE} cannot be loaded: {e}") from None
