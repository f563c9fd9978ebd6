"""The embedded demo set: scikit-learn's bundled handwritten digits (1,797 images, no download)."""

from __future__ import annotations

import numpy as np
from PIL import Image

DEMO_NAME = "digits"  # the manifest name of the demo set
DEMO_SOURCE = "demo"  # what `bigtrain prepare` takes as SRC for it


def demo_images(resolution: int = 32) -> tuple[list[Image.Image], list[int], list[str]]:
    """The 8x8 digits (values 0..16) upscaled to `resolution` RGB; labels 0..9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images / 16.0 * 255.0).round().clip(0, 255).astype(np.uint8)
    images = [
        Image.fromarray(p).resize((resolution, resolution), Image.Resampling.BICUBIC).convert("RGB")
        for p in pixels
    ]
    return images, [int(t) for t in digits.target], [str(c) for c in digits.target_names]
