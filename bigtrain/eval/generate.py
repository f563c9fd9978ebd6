"""G_ema from a checkpoint, ready to sample: what `bigtrain sample` and `bigtrain eval` use."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import Config, from_dict
from ..models import build_models
from ..objective.infogan import latent_codes
from ..train.checkpoint import load_checkpoint
from ..train.phases import PhaseSchedule
from .evaluator import Sampler


@dataclass
class TrainedGenerator:
    G: nn.Module  # G_ema, eval mode
    cfg: Config
    num_classes: int
    kimg: float
    device: torch.device

    @property
    def sampler(self) -> Sampler:
        """The evaluator's sampling, so a checkpoint samples as training's evaluations do."""
        return Sampler(
            self.G, self.cfg.model.z_dim, self.num_classes, self.device, self.cfg.eval.truncation_cutoff
        )

    def latents(
        self, n: int, truncation: float, generator: torch.Generator, classes: list[int] | None = None,
        codes: dict[str, list[float]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """`codes`: InfoGAN's latent codes to fix, name -> values in turn (see LatentCodes.parse)."""
        return self.sampler.latents(n, generator, truncation, classes, codes)

    def refresh_stats(
        self, truncation: float, generator: torch.Generator, batches: int, batch: int = 64
    ) -> None:
        self.sampler.refresh_stats(generator, batches, batch, truncation)

    def __call__(self, z: torch.Tensor, y: torch.Tensor, truncation: float = 0.0) -> torch.Tensor:
        """`truncation` matters to a style-based G only (psi); BigGAN's is in the latents."""
        return self.sampler(z, y, truncation)


def load_generator(checkpoint: str, device: torch.device | str = "cpu") -> TrainedGenerator:
    state = load_checkpoint(checkpoint)
    cfg = from_dict(state["config"])
    num_classes = int(state["num_classes"])
    if num_classes > 1:
        cfg.model.num_classes = num_classes
    G, _ = build_models(cfg.model, num_classes, latent_codes(cfg))
    G.load_state_dict(state["G_ema"])
    kimg = int(state["images"]) / 1000.0
    if cfg.train.phases:  # a growing model samples at the resolution and fade-in it had reached
        phase = PhaseSchedule(cfg.train.phases).at(kimg)
        G.set_phase(phase.resolution, phase.alpha)
    device = torch.device(device)
    return TrainedGenerator(G.to(device).eval(), cfg, num_classes, kimg, device)


def parse_classes(text: str | None, num_classes: int) -> list[int] | None:
    """'3,7' -> [3, 7], checked against the generator's classes."""
    if not text:
        return None
    try:
        classes = [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise ValueError(f"--classes {text!r} must be comma-separated class indices such as 3,7") from None
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"--classes {text!r}: {bad} outside this generator's classes 0..{num_classes - 1}")
    return classes
