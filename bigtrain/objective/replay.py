"""Experience replay for D: part of the fakes D scores in its main pass come from a buffer of earlier
fakes, so D does not forget what G produced before (and G cannot win by going back there).

SimGAN (Shrivastava et al. 2017, "Learning from Simulated and Unsupervised Images through Adversarial
Training", section 2.3, a change to Algorithm 1's D step): of D's mini-batch of b fakes, b/2 come from
the current refiner and b/2 from a buffer of size B of refined images of earlier steps, and after each
D step, b/2 randomly chosen buffered images are replaced by new ones. CycleGAN (Zhu et al. 2017,
section 4, "Training details") follows it with a buffer of the 50 images generated last; its reference
code (junyanz/pytorch-CycleGAN-and-pix2pix, util/image_pool.py, ImagePool.query) decides per image:
while the buffer holds fewer than `size` images the new image goes in and D sees it as it is (the fill
phase); after that, with probability 1/2 D sees a uniformly drawn buffered image instead, and the new
image takes its slot, else D sees the new one.

Implemented: ImagePool's rule with `regularize.replay.size` (CycleGAN: 50; 0: off) and the mixing
probability `regularize.replay.prob` (ImagePool's and, in expectation, SimGAN's 1/2), the labels kept
with their images (a conditional D scores a replayed image with its own label). Per micro-batch of D's
main pass, before it and before the sets regularizers add (so CR's T(fakes) and WGAN-GP's interpolates
use what D scores): one uniform draw per image past the fill, and one random permutation of the slots,
from the slot's generator (`Regularizer.d_fakes`); the k-th replaced image of a micro-batch takes the
k-th slot of the permutation. So a slot changes at most once per micro-batch, where ImagePool's
sequential draws may hit a slot twice (then returning an image of the same micro-batch); with more
replaced images than slots, those past `size` are not replaced. No host sync: the counts are Python
ints that follow the step, the rest stays on the device.

The buffer is this rank's: each rank replays its own fakes (it draws them from its own slots), so the
buffers differ between ranks while the weights stay identical (D's gradient is averaged as always). It
is stored detached (no graph, no gradient), in the fakes' dtype, and emptied when the fakes' shape
changes (a ProGAN phase's new resolution). Checkpoints hold every rank's buffer: `state_dict` gathers
them (a collective: every rank calls it, as Trainer.state_dict does) into `replay_images` (world, count,
C, H, W) and `replay_labels` (world, count), and each rank loads its own row, so a resumed run replays
exactly what the uninterrupted one would. Logged: `replay_fraction`, the fraction of D's fakes since
the last log point that came from the buffer (prob once the buffer is full).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..config import ConfigError
from .regularizer import Regularizer


class Replay(Regularizer):
    """The buffer and its draws (see above). `gather(rows)`: every rank's rows concatenated in rank order
    (the identity on one process); `rank`: the row this rank loads."""

    network, title = "d", "experience replay"

    def __init__(
        self,
        size: int,
        prob: float,
        device: torch.device | str = "cpu",
        rank: int = 0,
        gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    ):
        self.size, self.prob, self.device, self.rank, self.gather = size, prob, device, rank, gather
        self.images: torch.Tensor | None = None  # (size + spares, C, H, W): the slots, then the spare rows
        self.labels: torch.Tensor | None = None
        self.count = 0  # slots filled
        self._replayed: torch.Tensor | None = None  # fakes replaced since the last log point
        self._seen = 0  # fakes passed since the last log point

    @classmethod
    def build(cls, section, networks):
        if section.size == 0 or section.prob == 0:
            return None
        return cls(section.size, section.prob, networks.device, networks.rank, networks.gather)

    @classmethod
    def check(cls, key, section, cfg):
        if section.prob > 1:
            raise ConfigError(f"{key}.prob={section.prob} must be at most 1 (a probability)")
        if section.size and section.prob and cfg.regularize.zcr.dis > 0:
            raise ConfigError(
                f"{key}.size={section.size} replaces fakes that regularize.zcr.dis={cfg.regularize.zcr.dis} "
                "pairs with G(z + dz) of the same z: turn one of them off"
            )

    def _make_room(self, fakes: torch.Tensor, labels: torch.Tensor) -> None:
        """Slots for fakes of this shape and dtype, plus one spare row per image of the micro-batch, where
        the images not replaced are written (each write of a micro-batch has its own row: no duplicate
        indices). A new shape (a ProGAN phase) or dtype empties the buffer."""
        rows = self.size + fakes.shape[0]
        fits = (
            self.images is not None
            and self.images.shape[1:] == fakes.shape[1:]
            and self.images.dtype == fakes.dtype
        )
        if fits and self.images.shape[0] >= rows and self.images.device == fakes.device:
            return
        images, new_labels = fakes.new_zeros(rows, *fakes.shape[1:]), labels.new_zeros(rows)
        if fits:
            images[: self.count] = self.images[: self.count]
            new_labels[: self.count] = self.labels[: self.count]
        else:
            self.count = 0
        self.images, self.labels = images, new_labels

    def d_fakes(self, fakes, labels, generator):
        n, stored = fakes.shape[0], fakes.detach()  # the buffer holds no graph
        self._seen += n
        self._make_room(fakes, labels)
        fill = min(n, self.size - self.count)
        if fill:  # the fill phase: into the buffer, and D sees them as they are
            self.images[self.count : self.count + fill] = stored[:fill]
            self.labels[self.count : self.count + fill] = labels[:fill]
            self.count += fill
        m = n - fill
        if m == 0:
            return fakes, labels
        new_images, new_labels = fakes[fill:], labels[fill:]
        device = fakes.device
        replace = torch.rand(m, generator=generator, device=device) < self.prob
        order = torch.randperm(self.size, generator=generator, device=device)
        k = replace.long().cumsum(0) - 1  # the k-th replaced image of the micro-batch takes slot order[k]
        replace &= k < self.size
        spare = self.size + torch.arange(m, device=device)  # the images not replaced write here
        slots = torch.where(replace, order[k.clamp(0, self.size - 1)], spare)
        old_images, old_labels = self.images[slots], self.labels[slots]
        shape = (m,) + (1,) * (fakes.dim() - 1)
        out_images = torch.where(replace.view(shape), old_images, new_images)
        out_labels = torch.where(replace, old_labels, new_labels)
        self.images.index_copy_(0, slots, stored[fill:])
        self.labels.index_copy_(0, slots, new_labels)
        counted = replace.sum()
        self._replayed = counted if self._replayed is None else self._replayed + counted
        if fill:
            out_images = torch.cat([fakes[:fill], out_images])
            out_labels = torch.cat([labels[:fill], out_labels])
        return out_images, out_labels

    def metrics(self) -> dict[str, float]:
        if not self._seen:
            return {}
        replayed = 0.0 if self._replayed is None else self._replayed.item()
        out = {"replay_fraction": replayed / self._seen}
        self._replayed, self._seen = None, 0
        return out

    def state_dict(self) -> dict:
        """Every rank's buffer (a collective: see the module docstring); nothing before the first fake."""
        if not self.count:
            return {}
        images = self.gather(self.images[: self.count]).cpu()
        labels = self.gather(self.labels[: self.count]).cpu()
        world = images.shape[0] // self.count
        return {
            "replay_images": images.reshape(world, self.count, *images.shape[1:]),
            "replay_labels": labels.reshape(world, self.count),
        }

    def load_state_dict(self, state: dict) -> None:
        if "replay_images" not in state:  # replay turned on at resume: the buffer starts empty
            return
        images, labels = state["replay_images"][self.rank], state["replay_labels"][self.rank]
        self.count = min(images.shape[0], self.size)  # a smaller size at resume keeps the first slots
        # (the spare rows are added at the next micro-batch)
        self.images = images[: self.count].to(self.device, copy=True)
        self.labels = labels[: self.count].to(self.device, copy=True)
