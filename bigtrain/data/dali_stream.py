"""DALI over shards that live behind a URL: a node-local shard cache feeding GPU decoding.

DALI's webdataset reader reads local files whose list is fixed when the pipeline is built. So the
rank's shards are consumed in windows: in epoch e the shards are permuted from (seed, rank, e), as the
CPU loader does, and cut into consecutive windows of at most half the cache. A filler thread fetches
the shards in that order into the cache folder (each checked against the manifest, its DALI index
written beside it), staying within `cache_bytes`; the loader builds one pipeline per window, reads the
window's samples once, and deletes the window's shards. The next window is being fetched while the
current one is decoded.

Position: (epoch, window, samples of the window already handed out). A window's sample stream is a
function of (seed, rank, epoch, window) alone, so a resumed run (or a new phase's resolution) rebuilds
the window's pipeline and skips that many samples: the batches are the uninterrupted run's.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from ..seeds import seed_for
from .dali import DaliLoader, ascii_labels, dali_available, dali_pipeline
from .interface import Loader, StreamSpec
from .loader import RankShards, check_resolution
from .manifest import DataError
from .remote import RemoteReader, ShardUnreadable, join

log = logging.getLogger(__name__)


class ShardCache:
    """Fetches shards in a given order into `folder`, never holding more than `cap_bytes`. The consumer
    takes them in the same order with `acquire` (a shard may come round again in a later epoch) and
    frees their space with `release`."""

    def __init__(self, folder: Path, cap_bytes: int, reader: RemoteReader):
        self.folder, self.cap_bytes, self.reader = folder, cap_bytes, reader
        self.used = 0
        self.ready: dict[int, Path | Exception] = {}  # by position in the fetch order
        self.taken = 0  # shards acquired so far
        self.cond = threading.Condition()
        self.stopping = False
        self.thread: threading.Thread | None = None

    def start(self, order: Iterator[tuple[str, str, int]]) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)  # a cache: whatever an earlier process left is dropped
        self.folder.mkdir(parents=True)
        self.thread = threading.Thread(target=self._fill, args=(order,), daemon=True, name="shard-cache")
        self.thread.start()

    def _fill(self, order: Iterator[tuple[str, str, int]]) -> None:
        from .writer import write_dali_index

        for seq, (url, sha256, size) in enumerate(order):
            with self.cond:
                self.cond.wait_for(lambda: self.stopping or self.used + size <= self.cap_bytes)  # noqa: B023
                if self.stopping:
                    return
                self.used += size
            try:
                data = self.reader.read(url, sha256, size)
                path = self.folder / f"{seq:08d}-{url.rsplit('/', 1)[-1]}"
                tmp = path.with_name("." + path.name)
                tmp.write_bytes(data)
                os.replace(tmp, path)
                write_dali_index(path)
                result: Path | Exception = path
            except Exception as e:  # handed to the consumer, which decides (skip, or stop)
                result = e
                with self.cond:
                    self.used -= size
            with self.cond:
                self.ready[seq] = result
                self.cond.notify_all()

    def acquire(self) -> Path:
        """The next shard of the fetch order, once it is in the cache (or its fetch's error)."""
        with self.cond:
            seq = self.taken
            self.taken += 1
            self.cond.wait_for(lambda: seq in self.ready)
            result = self.ready.pop(seq)
        if isinstance(result, Exception):
            raise result
        return result

    def release(self, path: Path, size: int) -> None:
        with self.cond:
            path.unlink(missing_ok=True)
            path.with_suffix(".idx").unlink(missing_ok=True)
            self.used -= size
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.thread is not None:
            self.thread.join(timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.used, self.ready, self.taken, self.stopping, self.thread = 0, {}, 0, False, None


class DaliStreamLoader(RankShards, Loader):
    """`DaliLoader`'s interface over a URL `data.path`, with `num_threads` decoding threads and a shard
    cache of `cache_bytes` under `cache_dir`; see the module docstring."""

    def __init__(
        self, spec: StreamSpec, num_threads: int = 4, cache_dir: str | Path = "", cache_bytes: int = 20 << 30
    ):
        if not dali_available():
            raise DataError(
                "data.loader=dali needs NVIDIA DALI (pip install nvidia-dali-cuda130, or -cuda120)"
            )
        super().__init__(spec)
        path = spec.path
        if self.manifest.label_key != "cls" and self.manifest.num_classes:
            raise DataError(
                f"the DALI loader reads labels from `.cls` members; {path} keeps them in {self.manifest.label_key}: "
                "use data.loader=webdataset"
            )
        self.shards = [(str(join(path, s.name)), s.sha256, s.bytes) for s in self.rank_shards]
        largest = max(size for _, _, size in self.shards)
        if 2 * largest > cache_bytes:
            raise DataError(
                f"the shard cache ({cache_bytes / 2**30:.3g} GiB, data.cache_gb) must hold two of {path}'s shards, "
                f"the largest of which is {largest / 2**30:.3g} GiB"
            )
        self.num_threads = num_threads
        self.max_bad_shards = spec.max_bad_shards
        self.image_ext = ";".join(self.manifest.image_keys)
        self.reader = RemoteReader(spec.retries, spec.retry_backoff_s)
        self.cache = ShardCache(Path(cache_dir) / f"rank{self.rank}", cache_bytes, self.reader)
        self.epoch = self.window = self.emitted = 0  # the position: see the module docstring
        self.bad_shards = 0
        self._stream: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    # ------------------------------------------------------------------ order

    def _windows(self, epoch: int) -> list[list[tuple[str, str, int]]]:
        order = torch.randperm(
            len(self.shards),
            generator=torch.Generator().manual_seed(seed_for(self.seed, self.rank, epoch, bits=32)),
        )
        windows: list[list[tuple[str, str, int]]] = [[]]
        for i in order.tolist():
            shard = self.shards[i]
            if windows[-1] and sum(s[2] for s in windows[-1]) + shard[2] > self.cache.cap_bytes // 2:
                windows.append([])
            windows[-1].append(shard)
        return windows

    def _fetch_order(self, epoch: int, window: int) -> Iterator[tuple[str, str, int]]:
        while True:
            for shards in self._windows(epoch)[window:]:
                yield from shards
            epoch, window = epoch + 1, 0

    # ------------------------------------------------------------------ samples

    def _window_samples(
        self, epoch: int, window: int, skip: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The window's samples as (x, y) chunks, after dropping the first `skip` (a resumed position)."""
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        local, bad = [], 0
        for _, _, size in self._windows(epoch)[window]:
            try:
                local.append((size, self.cache.acquire()))
            except ShardUnreadable as e:
                bad += 1
                self.bad_shards += skip == 0
                log.error("skipping shard: %s", e)
        try:
            allowed = max(1, int(self.max_bad_shards * len(self.shards)))
            if bad > allowed:
                raise DataError(
                    f"{bad} shards of one window were unreadable (data.max_bad_shards); see the log"
                )
            if not local:
                return
            paths = [str(p) for _, p in local]
            pipe = dali_pipeline(
                paths, [str(Path(p).with_suffix(".idx")) for p in paths], self.batch_size, self.resolution,
                self.device, self.num_threads, seed_for(self.seed, self.rank, epoch, window, bits=32) % 2**31,
                self.shuffle_buffer, self.hflip, image_ext=self.image_ext,
            )  # fmt: skip
            pipe.build()
            batches = DALIGenericIterator(
                [pipe],
                ["x", "y"],
                reader_name="reader",
                last_batch_policy=LastBatchPolicy.PARTIAL,
                auto_reset=False,
            )
            try:
                for out in batches:
                    x, y = out[0]["x"], out[0]["y"]
                    if skip >= x.shape[0]:
                        skip -= x.shape[0]
                        continue
                    x, y = x[skip:], y[skip:]
                    skip = 0
                    yield x, (ascii_labels(y) if self.labelled else torch.zeros(x.shape[0], dtype=torch.long))
            except RuntimeError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise DataError(
                    f"DALI cannot read or decode a sample in shards of {self.path}: {first}"
                ) from None
        finally:
            for size, path in local:
                self.cache.release(path, size)

    def _batches(self) -> Iterator[tuple[tuple[torch.Tensor, torch.Tensor], tuple[int, int, int]]]:
        """Batches of exactly batch_size across window and epoch boundaries, each with the position
        after it. A batch always ends in the newest chunk (what stays pending is less than a batch),
        so that position is the newest chunk's window and its count minus what stays pending."""
        xs: list[torch.Tensor] = []
        ys: list[torch.Tensor] = []
        pending = 0
        epoch, window, emitted = self.epoch, self.window, self.emitted
        while True:
            for x, y in self._window_samples(epoch, window, skip=emitted):
                emitted += x.shape[0]
                xs.append(x)
                ys.append(y)
                pending += x.shape[0]
                while pending >= self.batch_size:
                    x_all, y_all = torch.cat(xs), torch.cat(ys)
                    pending -= self.batch_size
                    xs, ys = [x_all[self.batch_size :]], [y_all[self.batch_size :]]
                    yield (
                        (x_all[: self.batch_size], y_all[: self.batch_size]),
                        (epoch, window, emitted - pending),
                    )
            emitted = 0
            window += 1
            if window == len(self._windows(epoch)):
                epoch, window = epoch + 1, 0

    def _start(self) -> None:
        self.cache.start(self._fetch_order(self.epoch, self.window))
        self._stream = self._batches()

    def __iter__(self) -> DaliStreamLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._stream is None:
            self._start()
        (x, y), (self.epoch, self.window, self.emitted) = next(self._stream)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    next_uint8 = DaliLoader.next_uint8

    # ------------------------------------------------------------------ position

    def state_dict(self) -> dict:
        return {"stream": [self.epoch, self.window, self.emitted], "bad_shards": self.bad_shards,
                "retries": self.reader.retries_done}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        if "stream" not in state:
            raise DataError(
                "the checkpoint's loader position is not a streaming DALI loader's; resume with the same data.loader"
            )
        self.close()
        self.epoch, self.window, self.emitted = state["stream"]
        self.bad_shards, self.reader.retries_done = state["bad_shards"], state["retries"]

    def reconfigure(self, resolution: int | None = None, batch_size: int | None = None) -> None:
        if resolution is not None:
            check_resolution(self.path, self.manifest, resolution)
        self.close()  # the next batch rebuilds the window's pipeline and skips to the position
        self.resolution = resolution or self.resolution
        self.batch_size = batch_size or self.batch_size

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self.cache.stop()

    @property
    def skipped_corrupt(self) -> int:
        return 0  # DALI stops on a corrupt sample with a DataError

    @property
    def read_retries(self) -> int:
        return self.reader.retries_done

    @property
    def skipped_shards(self) -> int:
        return self.bad_shards
