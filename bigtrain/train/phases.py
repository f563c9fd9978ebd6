"""Progressive resolution phases: where training is at a given kimg.

A schedule is a list of phases, each with a resolution, the kimg over which its new block fades in
(alpha 0 -> 1, linearly), the kimg it then trains at alpha 1, a batch size and learning rates. The
first phase has no fade (nothing to fade from). The last phase lasts until training ends.

    phases:
      - {resolution: 4,  fade_kimg: 0,   stable_kimg: 600, batch: 128, lr_g: 1e-3, lr_d: 1e-3}
      - {resolution: 8,  fade_kimg: 600, stable_kimg: 600, batch: 128, lr_g: 1e-3, lr_d: 1e-3}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..config import check_phases


@dataclass(frozen=True)
class Phase:
    resolution: int
    fade_kimg: float
    stable_kimg: float
    batch: int
    lr_g: float
    lr_d: float


@dataclass(frozen=True)
class PhaseState:
    index: int
    resolution: int
    alpha: float  # 1.0 once the phase's block has faded in
    batch: int
    lr_g: float
    lr_d: float
    start_kimg: float  # where this phase began


class PhaseSchedule:
    def __init__(self, phases: Sequence[Phase]):
        """`phases`: Phase objects, or anything with the same fields (the config's train.phases);
        checked by the config's rules (a ConfigError names the phase)."""
        check_phases(phases)
        self.phases = list(phases)
        self.starts = [0.0]
        for p in self.phases[:-1]:
            self.starts.append(self.starts[-1] + p.fade_kimg + p.stable_kimg)

    def at(self, kimg: float) -> PhaseState:
        """The phase, resolution, fade-in alpha, batch and learning rates at `kimg`."""
        index = max(i for i, start in enumerate(self.starts) if kimg >= start)
        p, start = self.phases[index], self.starts[index]
        alpha = 1.0 if p.fade_kimg == 0 else min(1.0, (kimg - start) / p.fade_kimg)
        return PhaseState(index, p.resolution, alpha, p.batch, p.lr_g, p.lr_d, start)
