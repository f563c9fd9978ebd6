"""CPU loader over WebDataset shards: an infinite, seeded, resumable stream of `(x, y)` batches.

How the stream is split and ordered:
- rank r of W owns shards[r::W] for the whole run, so ranks never read the same sample;
- the rank's shards are split over `roles` (one per loader worker process): in epoch e, the shards are
  permuted with a generator seeded by (seed, rank, e) and role k reads permutation[k::roles];
- each role shuffles its samples through a seeded buffer and batches them itself.

Shards live in a local folder or behind a URL (`remote.py`); a remote shard is fetched with retries
and checked against the manifest before its samples are read, and one that stays unreadable is
skipped and counted, so the position never depends on where the shards live.

Position: every batch carries (role, epoch, samples emitted in that epoch, skip counters). The torch
DataLoader hands batches out round-robin by worker, so the consumer knows exactly which role comes
next. On resume each role replays its epoch up to the saved count without decoding, and worker k takes
role (k + next_role) % roles, which makes the resumed stream identical to the uninterrupted one.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..seeds import seed_for
from .images import BadImage, decode_rgb, to_hwc_uint8
from .interface import Loader, StreamSpec
from .manifest import DataError, Manifest, ShardInfo, check_shards, load_manifest
from .remote import RemoteReader, ShardUnreadable, is_url, join

log = logging.getLogger(__name__)

# Layout of the per-batch position record.
META_ROLE, META_EPOCH, META_EMITTED, META_CORRUPT, META_NOLABEL, META_RETRIES, META_BAD_SHARDS = range(7)


@dataclass
class RoleState:
    epoch: int = 0
    emitted: int = 0  # samples that left the shuffle buffer in this epoch (decoded or skipped)
    corrupt: int = 0
    nolabel: int = 0
    retries: int = 0  # remote reads retried (connection reset, 5xx, a short body)
    bad_shards: int = 0  # shards skipped because they stayed unreadable


class _ShardStream(IterableDataset):
    def __init__(
        self,
        shards: list[tuple[str, str, int]],
        batch_size: int,
        resolution: int,
        labelled: bool,
        seed: int,
        rank: int,
        num_roles: int,
        shuffle_buffer: int,
        hflip: bool,
        role_offset: int,
        start: list[RoleState],
        retries: int = 4,
        max_bad_shards: float = 0.1,
        retry_backoff_s: float = 0.5,
        image_keys: tuple[str, ...] = ("png", "jpg", "jpeg"),
        label_key: str = "cls",
    ):
        super().__init__()
        self.image_keys, self.label_key = tuple(image_keys), label_key
        self.shards, self.retries, self.max_bad_shards = shards, retries, max_bad_shards
        self.retry_backoff_s = retry_backoff_s
        self.shard_paths = [url for url, _, _ in shards]
        self.batch_size, self.resolution = batch_size, resolution
        self.labelled, self.seed, self.rank, self.num_roles = labelled, seed, rank, num_roles
        self.shuffle_buffer, self.hflip, self.role_offset, self.start = (
            shuffle_buffer,
            hflip,
            role_offset,
            start,
        )

    def _role(self) -> int:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        assert num_workers == self.num_roles, f"{num_workers} workers for {self.num_roles} roles"
        return (worker + self.role_offset) % self.num_roles

    def _open_shards(
        self, shards: list[tuple[str, str, int]], state: RoleState, replay_until: int
    ) -> Iterator[dict]:
        """Tar streams of `shards` in order. A remote shard arrives whole and checked; one that stays
        unreadable is skipped and counted (not while replaying a resumed epoch: counted already)."""
        reader = RemoteReader(self.retries, self.retry_backoff_s)
        bad_now, allowed = 0, max(1, int(self.max_bad_shards * len(shards)))
        for url, sha256, size in shards:
            if not is_url(url):
                with open(url, "rb") as f:
                    yield {"url": url, "stream": f}
                continue
            counting = state.emitted >= replay_until
            try:
                data = reader.read(url, sha256, size)
            except ShardUnreadable as e:
                bad_now += 1
                state.bad_shards += counting
                log.error("skipping shard: %s", e)
                if bad_now > allowed:
                    raise DataError(
                        f"{bad_now} of this worker's {len(shards)} shards were unreadable this epoch (at most "
                        f"{allowed} may be skipped, data.max_bad_shards={self.max_bad_shards}); last: {e}"
                    ) from None
                continue
            finally:
                state.retries += reader.retries_done * counting
                reader.retries_done = 0
            yield {"url": url, "stream": io.BytesIO(data)}

    def _epoch_samples(
        self, role: int, epoch: int, state: RoleState, replay_until: int = 0
    ) -> Iterator[dict]:
        """Raw samples of this role's shards in epoch order, through the seeded shuffle buffer."""
        order = torch.randperm(
            len(self.shards),
            generator=torch.Generator().manual_seed(seed_for(self.seed, self.rank, epoch, bits=32)),
        )
        shards = [self.shards[i] for i in order.tolist()[role :: self.num_roles]]
        files = wds.tariterators.tar_file_expander(self._open_shards(shards, state, replay_until))
        samples = wds.tariterators.group_by_keys(files)
        rng = random.Random(seed_for(self.seed, self.rank, role, epoch, 1, bits=32))
        buffer: list[dict] = []
        for sample in samples:
            if self.shuffle_buffer == 0:
                yield sample
                continue
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            i = rng.randrange(len(buffer))
            buffer[i], sample = sample, buffer[i]
            yield sample
        rng.shuffle(buffer)
        yield from buffer

    def _decode(self, sample: dict) -> np.ndarray:
        data = next((sample[k] for k in self.image_keys if k in sample), None)
        if data is None:
            raise BadImage("no image in sample")
        return to_hwc_uint8(decode_rgb(data), self.resolution)

    def __iter__(self):
        role = self._role()
        state = RoleState(**vars(self.start[role]))
        flip_rng = random.Random(seed_for(self.seed, self.rank, role, 2, bits=32))
        images, labels = [], []
        while True:
            skip, valid = state.emitted, 0  # non-zero only in the epoch a resumed run starts in
            state.emitted = 0
            for sample in self._epoch_samples(role, state.epoch, state, skip):
                state.emitted += 1
                if state.emitted <= skip:  # resuming: replay the order without decoding
                    continue
                label = sample_label(sample, self.label_key) if self.labelled else 0
                if label is None:
                    state.nolabel += 1
                    continue
                try:
                    image = self._decode(sample)
                except BadImage:
                    state.corrupt += 1
                    continue
                valid += 1
                if self.hflip and flip_rng.random() < 0.5:
                    image = image[:, ::-1]
                images.append(image)
                labels.append(label)
                if len(images) == self.batch_size:
                    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
                    y = torch.tensor(labels, dtype=torch.int64)
                    meta = torch.tensor([role, *vars(state).values()])
                    images, labels = [], []
                    yield x, y, meta
            if valid == 0 and skip == 0:
                raise DataError(f"no decodable sample in shards {', '.join(self.shard_paths)}")
            state.epoch, state.emitted = state.epoch + 1, 0


def sample_label(sample: dict, label_key: str) -> int | None:
    """`cls` -> the member's integer; `json:FIELD` -> that field of the sample's JSON; None if absent."""
    if label_key.startswith("json:"):
        if "json" not in sample:
            return None
        value = json.loads(sample["json"]).get(label_key[5:])
        return None if value is None else int(value)
    return int(sample[label_key]) if label_key in sample else None


def check_resolution(path: str | Path, manifest: Manifest, resolution: int) -> None:
    """Loaders downscale on the fly; they cannot invent detail the shards do not hold."""
    if resolution > manifest.resolution:
        raise DataError(
            f"resolution {resolution} asked of {path}, whose shards hold {manifest.resolution}x{manifest.resolution} "
            "images; re-run `bigtrain prepare` at the larger resolution"
        )


def select_rank_shards(
    path: str | Path, resolution: int, rank: int, world_size: int, verify_checksums: bool
) -> tuple[Manifest, list[ShardInfo]]:
    """The manifest and this rank's shards (shards[rank::world_size]), checked to be usable."""
    m = load_manifest(path)
    check_resolution(path, m, resolution)
    if len(m.shards) < world_size:
        raise DataError(
            f"{path} has {len(m.shards)} shards for {world_size} ranks; every rank needs at least one "
            "(re-run `bigtrain prepare` with a smaller --shard-size)"
        )
    shards = m.shards[rank::world_size]
    local = [s for s in shards if not is_url(str(join(path, s.name)))]  # remote ones: checked on arrival
    check_shards(path, local, verify_checksums)
    return m, shards


class RankShards:
    """What every loader does first: this rank's shards of the manifest, checked, and the spec's stream
    settings as attributes (`reconfigure` changes `resolution` and `batch_size` later)."""

    def __init__(self, spec: StreamSpec):
        self.path = spec.path if is_url(spec.path) else Path(spec.path)
        self.manifest, self.rank_shards = select_rank_shards(
            spec.path, spec.resolution, spec.rank, spec.world_size, spec.verify_checksums
        )
        self.batch_size, self.resolution = spec.batch_size, spec.resolution
        self.device = torch.device(spec.device)
        self.rank, self.seed = spec.rank, spec.seed
        self.shuffle_buffer, self.hflip = spec.shuffle_buffer, spec.hflip
        self.labelled = self.manifest.num_classes > 0


class ShardLoader(RankShards, Loader):
    """Infinite iterator of `(x, y)`: x float32 in [-1, 1], (B, 3, R, R), on `device`; y int64 (B,).
    `num_workers` loader processes (0: in this process)."""

    def __init__(self, spec: StreamSpec, num_workers: int = 2):
        super().__init__(spec)
        self.retries, self.retry_backoff_s = spec.retries, spec.retry_backoff_s
        self.max_bad_shards = spec.max_bad_shards
        self.num_roles = max(1, min(num_workers, len(self.rank_shards)))
        if num_workers > self.num_roles:
            log.warning(
                "rank %d has %d shards: using %d loader workers, not %d",
                self.rank,
                len(self.rank_shards),
                self.num_roles,
                num_workers,
            )
        self.num_workers = num_workers and self.num_roles
        self.roles = [RoleState() for _ in range(self.num_roles)]
        self.next_role = 0
        self._iter = None

    @property
    def skipped_corrupt(self) -> int:
        return sum(r.corrupt for r in self.roles)

    @property
    def skipped_nolabel(self) -> int:
        return sum(r.nolabel for r in self.roles)

    @property
    def read_retries(self) -> int:
        return sum(r.retries for r in self.roles)

    @property
    def skipped_shards(self) -> int:
        return sum(r.bad_shards for r in self.roles)

    def _start(self) -> None:
        stream = _ShardStream(
            [(str(join(self.path, s.name)), s.sha256, s.bytes) for s in self.rank_shards],
            self.batch_size,
            self.resolution,
            self.labelled,
            self.seed,
            self.rank,
            self.num_roles,
            self.shuffle_buffer,
            self.hflip,
            self.next_role,
            [RoleState(**vars(r)) for r in self.roles],
            self.retries,
            self.max_bad_shards,
            self.retry_backoff_s,
            self.manifest.image_keys,
            self.manifest.label_key,
        )
        workers = self.num_workers
        self._iter = iter(
            DataLoader(
                stream,
                batch_size=None,
                num_workers=workers,
                pin_memory=self.device.type == "cuda",
                prefetch_factor=4 if workers else None,
                persistent_workers=False,
            )
        )

    def __iter__(self) -> ShardLoader:
        return self

    def next_uint8(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch as stored: uint8 (B, 3, R, R) on the CPU; advances the position."""
        if self._iter is None:
            self._start()
        x, y, meta = next(self._iter)
        meta = meta.tolist()  # host-side bookkeeping, read in one call
        role = meta[META_ROLE]
        assert role == self.next_role, f"loader batch from role {role}, expected {self.next_role}"
        self.roles[role] = RoleState(*meta[1:])
        self.next_role = (role + 1) % self.num_roles
        return x, y

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.next_uint8()
        x = x.to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)
        return x, y.to(self.device, non_blocking=True)

    def state_dict(self) -> dict:
        return {
            "roles": [list(vars(r).values()) for r in self.roles],
            "next_role": self.next_role,
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["roles"]) != self.num_roles:
            raise DataError(
                f"the checkpoint's loader ran {len(state['roles'])} workers on this rank, this run has {self.num_roles}; "
                "resume with the same data.num_workers and world size"
            )
        self.roles = [RoleState(*r) for r in state["roles"]]  # older checkpoints: fewer counters
        self.next_role = int(state["next_role"])
        self.close()

    def reconfigure(self, resolution: int | None = None, batch_size: int | None = None) -> None:
        """Change resolution or batch size (a new training phase) and continue from the same position."""
        if resolution is not None:
            check_resolution(self.path, self.manifest, resolution)
        self.resolution = resolution or self.resolution
        self.batch_size = batch_size or self.batch_size
        self.close()  # prefetched batches are dropped; the position is that of the last consumed batch

    def close(self) -> None:
        self._iter = None  # drops the DataLoader iterator, which stops its workers
