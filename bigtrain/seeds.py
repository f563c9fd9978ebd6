"""Seeds derived from integers."""

from __future__ import annotations

import numpy as np


def seed_for(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (neighbouring slots get unrelated streams)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))
