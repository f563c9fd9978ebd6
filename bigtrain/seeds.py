"""Seeds mixed from integer tuples, for every stream that must be reproducible and resumable."""

from __future__ import annotations

import numpy as np


def seed_for(*parts: int, bits: int = 63) -> int:
    """A well-mixed seed from integers: neighbouring tuples get unrelated streams.

    63 bits (the first 64-bit word of numpy's SeedSequence, less its lowest bit) seed the trainer's
    latents; 32 bits (the low half of that word) seed the data order. Both are pinned: the golden
    checkpoints and every resumed run's latents and data order depend on these exact values."""
    word = int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0])
    if bits == 63:
        return word >> 1
    if bits == 32:
        return word & 0xFFFF_FFFF
    raise ValueError(f"seed_for gives 63- or 32-bit seeds, not {bits}")
