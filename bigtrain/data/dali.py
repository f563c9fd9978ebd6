"""NVIDIA DALI loader over the same WebDataset shards: JPEG/PNG decoded on the GPU ("mixed" decoder),
resized to the phase's resolution, flipped, normalized to [-1, 1], NCHW, all inside DALI.

Same interface and output as `ShardLoader`: an infinite iterator of `(x, y)` with x float32 in
[-1, 1] (B, 3, R, R) on the training device and y int64. Rank r reads shards[r::W]; DALI's reader
shuffles through a buffer seeded from `seed + rank`. The position is DALI's own pipeline checkpoint
(reader progress and RNG states), stored in bigtrain's checkpoint and restored on resume.

On a machine without a GPU the same pipeline runs on the CPU (`device_id=None`, CPU decoder), so the
reader, shard and position logic are tested in CI.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .interface import Loader, StreamSpec
from .loader import RankShards, check_resolution
from .manifest import DataError
from .remote import is_url, join

log = logging.getLogger(__name__)

LABEL_BYTES = 8  # `.cls` holds the label as ASCII digits; DALI pads it to this fixed width
DALI_ERRORS = "cannot read or decode a sample"


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def ascii_labels(padded: torch.Tensor) -> torch.Tensor:
    """(B, LABEL_BYTES) uint8 ASCII digits, zero-padded on the right -> (B,) int64."""
    digits = padded.long()
    value = torch.zeros(digits.shape[0], dtype=torch.long, device=digits.device)
    for column in digits.unbind(1):
        present = column != 0
        value = torch.where(present, value * 10 + (column - 48), value)
    return value


def dali_pipeline(
    paths: list[str],
    index_paths: list[str],
    batch_size: int,
    resolution: int,
    device: torch.device,
    num_threads: int,
    seed: int,
    shuffle_buffer: int,
    hflip: bool,
    checkpoint: str | None = None,
    image_ext: str = "png;jpg;jpeg",
):
    """The decode pipeline over local shards: reader (named "reader"), image decoder ("mixed" on a
    GPU), resize to `resolution`, optional flip, [-1, 1] CHW floats; labels as padded ASCII."""
    from nvidia.dali import fn, pipeline_def, types

    on_gpu = device.type == "cuda"
    device_id = (device.index or 0) if on_gpu else None

    @pipeline_def(
        batch_size=batch_size,
        num_threads=num_threads,
        device_id=device_id,
        seed=seed,
        enable_checkpointing=True,
        checkpoint=checkpoint,
        prefetch_queue_depth=2,
    )
    def pipeline():
        encoded, label = fn.readers.webdataset(
            paths=paths,
            index_paths=index_paths,
            ext=[image_ext, "cls"],
            missing_component_behavior="error",
            random_shuffle=shuffle_buffer > 1,
            initial_fill=max(shuffle_buffer, 1),
            name="reader",
        )
        images = fn.decoders.image(encoded, device="mixed" if on_gpu else "cpu", output_type=types.RGB)
        # Always resized, even to the stored size: a checkpoint restores into a graph of the same
        # operators, and a phase change must not add one.
        images = fn.resize(
            images, size=[resolution, resolution], antialias=True, interp_type=types.INTERP_LINEAR
        )
        mirror = fn.random.coin_flip(probability=0.5) if hflip else 0
        images = fn.crop_mirror_normalize(
            images, dtype=types.FLOAT, output_layout="CHW", mean=[127.5] * 3, std=[127.5] * 3, mirror=mirror
        )
        label = fn.pad(label, axes=[0], shape=[LABEL_BYTES], fill_value=0)
        return images, label.gpu() if on_gpu else label

    return pipeline()


class DaliLoader(RankShards, Loader):
    """Infinite iterator of `(x, y)` decoded by DALI with `num_threads` threads; see the module docstring."""

    def __init__(self, spec: StreamSpec, num_threads: int = 4):
        if not dali_available():
            raise DataError(
                "data.loader=dali needs NVIDIA DALI (pip install nvidia-dali-cuda130, or -cuda120); "
                "use data.loader=webdataset or auto"
            )
        super().__init__(spec)
        self.shard_paths = [str(join(self.path, s.name)) for s in self.rank_shards]
        if any(is_url(p) for p in self.shard_paths):
            raise DataError(
                f"the manifest in {spec.path} names shards at URLs, which DaliLoader cannot read; "
                "use DaliStreamLoader (make_loader does), which streams them through a shard cache"
            )
        self.index_paths = [str(Path(p).with_suffix(".idx")) for p in self.shard_paths]
        missing = [p for p in self.index_paths if not Path(p).is_file()]
        if missing:
            raise DataError(
                f"DALI index {missing[0]} is missing; re-run `bigtrain prepare` to write the index files"
            )
        self.num_threads = num_threads
        self._checkpoint: str | None = None
        self._iter = None

    # ------------------------------------------------------------------ pipeline

    def _pipeline(self):
        return dali_pipeline(
            self.shard_paths, self.index_paths, self.batch_size, self.resolution, self.device, self.num_threads,
            self.seed * 1000 + self.rank, self.shuffle_buffer, self.hflip, checkpoint=self._checkpoint,
        )  # fmt: skip

    def _start(self) -> None:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        pipe = self._pipeline()
        pipe.build()
        self._iter = DALIGenericIterator([pipe], ["x", "y"], size=-1, auto_reset=True)
        self._started_from = self._checkpoint

    def __iter__(self) -> DaliLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._iter is None:
            self._start()
        try:
            out = next(self._iter)[0]
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"DALI {DALI_ERRORS} in shards of {self.path}: {first}") from None
        x = out["x"].to(self.device, non_blocking=True)
        y = ascii_labels(out["y"]) if self.labelled else torch.zeros(x.shape[0], dtype=torch.long)
        return x, y.to(self.device, non_blocking=True)

    def next_uint8(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For tests and benchmarks that compare with ShardLoader: the batch back in uint8."""
        x, y = next(self)
        return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu(), y.cpu()

    # ------------------------------------------------------------------ position

    def state_dict(self) -> dict:
        if self._iter is None:
            return {"dali_checkpoint": self._checkpoint}
        return {"dali_checkpoint": self._iter.checkpoints()[0]}

    def load_state_dict(self, state: dict) -> None:
        self._checkpoint = state["dali_checkpoint"]
        self.close()

    def reconfigure(self, resolution: int | None = None, batch_size: int | None = None) -> None:
        """Change resolution or batch size (a new training phase) and continue from the same position."""
        if resolution is not None:
            check_resolution(self.path, self.manifest, resolution)
        state = self.state_dict()
        self.resolution = resolution or self.resolution
        self.batch_size = batch_size or self.batch_size
        self.load_state_dict(state)

    def close(self) -> None:
        self._iter = None

    @property
    def skipped_corrupt(self) -> int:
        return 0  # DALI stops on a corrupt sample with a DataError instead of skipping it

    read_retries = skipped_shards = 0  # DALI reads local files only
