"""Latent sampling (with BigGAN's truncation trick) and sample grids."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def truncated_normal(
    shape: tuple[int, ...], threshold: float, generator: torch.Generator | None = None, device="cpu"
) -> torch.Tensor:
    """Standard normal samples; with threshold > 0, every value with |z| > threshold is redrawn until
    it falls inside (the truncation trick, Brock et al. 2018 Sec. 4.1). threshold 0 means no truncation."""
    z = torch.randn(shape, generator=generator, device=device)
    if threshold <= 0:
        return z
    outside = z.abs() > threshold
    while bool(outside.any()):
        z[outside] = torch.randn(int(outside.sum()), generator=generator, device=device)
        outside = z.abs() > threshold
    return z


def is_style_based(G: torch.nn.Module) -> bool:
    """StyleGAN2 truncates w toward w_avg inside G; BigGAN truncates the z it is given."""
    return G.style_based


def z_truncation(G: torch.nn.Module, truncation: float) -> float:
    """The threshold for sampling z: BigGAN's truncation, none for a style-based G."""
    return 0.0 if is_style_based(G) else truncation


def truncation_kwargs(G: torch.nn.Module, truncation: float, cutoff: int = 0) -> dict:
    """G's keyword arguments for a truncation setting: StyleGAN2's psi (0 or 1: none) and layer cutoff."""
    if not is_style_based(G):
        return {}
    return {"psi": truncation if truncation > 0 else 1.0, "cutoff": cutoff or None}


def random_labels(
    n: int, num_classes: int, generator: torch.Generator | None = None, device="cpu"
) -> torch.Tensor:
    return torch.randint(0, max(num_classes, 1), (n,), generator=generator, device=device)


def image_grid(images: torch.Tensor, nrow: int) -> Image.Image:
    """(N, 3, H, W) in [-1, 1] -> one RGB image with `nrow` images per row."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    n, c, h, w = x.shape
    rows = math.ceil(n / nrow)
    grid = torch.zeros(c, rows * h, nrow * w, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, r * h : (r + 1) * h, col * w : (col + 1) * w] = x[i]
    return Image.fromarray(np.ascontiguousarray(grid.permute(1, 2, 0).numpy()))


def save_grid(images: torch.Tensor, path: str | Path, nrow: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, nrow).save(path)
    return path
