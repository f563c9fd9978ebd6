"""How D sees images: DiffAugment here, ADA's pipeline and its p in `ada.py`.

Differentiable augmentation (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN
Training"): every image D sees, real or generated, in both the D and the G step, goes through the same
random transforms, so D cannot overfit a small set of reals and G's gradient passes through them.

Only indexing, padding and arithmetic are used, so the transforms are twice differentiable: R1's
gradient penalty (a double backward through D and the augmentation) works on any PyTorch, unlike
grid_sample-based pipelines. Random draws come from the caller's generator: a resumed run makes the
same draws.
"""

from __future__ import annotations

import torch

from ..config import Config, ConfigError
from .ada import PIPELINES


def _uniform(n: int, generator: torch.Generator | None, device: torch.device, dims: int = 3) -> torch.Tensor:
    return torch.rand(n, *([1] * dims), generator=generator, device=device)


def color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5] (images in [-1, 1], as DiffAugment's)."""
    n, device = x.shape[0], x.device
    x = x + (_uniform(n, generator, device) - 0.5).to(x.dtype)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(n, generator, device) * 2).to(x.dtype) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(n, generator, device) + 0.5).to(x.dtype) + mean


def translation(
    x: torch.Tensor, ratio: float = 0.125, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Shift each image by up to `ratio` of its size in x and y, filling with zeros."""
    n, _, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    shift_y = torch.randint(-sy, sy + 1, (n, 1, 1), generator=generator, device=x.device)
    shift_x = torch.randint(-sx, sx + 1, (n, 1, 1), generator=generator, device=x.device)
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    # Index into a zero-padded copy: out[i, y, x] = padded[i, y - shift_y + 1, x - shift_x + 1].
    src_y = (rows - shift_y + 1).clamp(0, h + 1).expand(n, h, w)
    src_x = (cols - shift_x + 1).clamp(0, w + 1).expand(n, h, w)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    batch = torch.arange(n, device=x.device)[:, None, None].expand(n, h, w)
    return padded.permute(0, 2, 3, 1)[batch, src_y, src_x].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, ratio: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero one square of `ratio` x the image size at a random place (it may overhang the border)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=generator, device=x.device) - ch // 2
    left = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=generator, device=x.device) - cw // 2
    rows = torch.arange(h, device=x.device)[None, :, None]
    cols = torch.arange(w, device=x.device)[None, None, :]
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


POLICIES = {"color": color, "translation": translation, "cutout": cutout}


def check_config(cfg: Config) -> None:
    """augment.* names known policies and pipelines, non-negative noise and ADA's p, target and speed (called by `bigtrain.config.validate`)."""
    try:
        parse_policy(cfg.augment.diffaugment)
    except ValueError as e:
        raise ConfigError(f"augment.diffaugment: {e}") from None
    a = cfg.augment
    for key in ("instance_noise", "instance_noise_kimg"):
        value = getattr(a, key)
        if not value >= 0:  # NaN too
            raise ConfigError(f"augment.{key}={value} must be >= 0")
    if a.ada and a.ada not in PIPELINES:
        raise ConfigError(
            f"augment.ada={a.ada!r} is not a pipeline; the pipelines are {', '.join(PIPELINES)}"
        )
    for key in ("ada_p", "ada_target"):
        value = getattr(a, key)
        if not 0 <= value <= 1:
            raise ConfigError(f"augment.{key}={value} must be in [0, 1]")
    if a.ada_interval < 1:
        raise ConfigError(f"augment.ada_interval={a.ada_interval} must be >= 1")
    if not a.ada_kimg > 0:
        raise ConfigError(f"augment.ada_kimg={a.ada_kimg} must be > 0")


def parse_policy(policy: str) -> list[str]:
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown augmentation {unknown[0]!r}; the policies are {', '.join(POLICIES)}")
    return names


def diff_augment(
    x: torch.Tensor, policy: list[str], generator: torch.Generator | None = None
) -> torch.Tensor:
    for name in policy:
        x = POLICIES[name](x, generator=generator)
    return x
