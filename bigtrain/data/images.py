"""Decoding and shaping of single images: what `prepare` and the loaders share."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class BadImage(ValueError):
    """Bytes that do not decode to a complete image."""


def decode_rgb(data: bytes) -> Image.Image:
    """Decode fully (a truncated file fails here, not later) and convert any mode to RGB."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError:
        raise BadImage("not a recognized image format") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(str(e) or type(e).__name__) from None
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparency on white rather than letting it turn black.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def fit_square(img: Image.Image, resolution: int) -> Image.Image:
    """Center-crop to a square and resize to `resolution` (Lanczos; area-like when downscaling)."""
    if img.size == (resolution, resolution):
        return img
    return ImageOps.fit(img, (resolution, resolution), method=Image.Resampling.LANCZOS)


def encode(img: Image.Image, fmt: str, jpeg_quality: int = 95) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
    elif fmt == "jpg":
        img.save(buf, format="JPEG", quality=jpeg_quality)
    else:
        raise ValueError(f"unknown image format {fmt!r}")
    return buf.getvalue()


def to_hwc_uint8(img: Image.Image, resolution: int) -> np.ndarray:
    """RGB image -> (resolution, resolution, 3) uint8, downscaled with a box (area) filter if larger."""
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), resample=Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8)
