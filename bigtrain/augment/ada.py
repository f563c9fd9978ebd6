"""Adaptive discriminator augmentation (ADA; Karras et al. 2020, "Training Generative Adversarial Networks
with Limited Data").

Every image D sees, real or generated, in every pass, goes through the same pipeline of transforms, each
applied to an image with probability p (section 2.3). With p < 0.8 the augmentations do not leak into
G's distribution. p follows D's overfitting (section 3): the heuristic r_t = E[sign(D(x_real))] over the
last `interval` D steps is compared with a target (0.6), and p moves by sign(r_t - target) x (images in
those steps) / (speed_kimg x 1000): from 0 to 1 in `speed_kimg` kimg at the most (500 in the paper).

The `bgc` pipeline (appendix B; stylegan2-ada-pytorch's `bgc`): pixel blitting (x-flip, 90-degree
rotations, integer translation), general geometric transforms (isotropic scaling, arbitrary rotation,
anisotropic scaling, fractional translation) and color transforms (brightness, contrast, luma flip,
hue rotation, saturation), with the paper's parameter distributions.

The geometric transforms compose into one 3x3 matrix per image, applied by one bilinear resampling with
reflection at the borders. The resampling is written with gathers, whose backward is a scatter-add and
whose second backward is a gather again: R1 (a double backward through D and the augmentation) works on
any PyTorch, where `grid_sample` has no double backward. The reference also oversamples 2x with a
wavelet filter around its `grid_sample` against aliasing; this one samples bilinearly at the output's
pixel centers (blitting is exact: integer offsets land on pixel centers).

Random draws come from the caller's generator (the slot's seeded stream): a resumed run makes the same
draws.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# pipeline name -> its transforms, in the order the reference applies them
BLIT = ("xflip", "rotate90", "xint")
GEOM = ("scale", "rotate", "aniso", "xfrac")
COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")
PIPELINES = {"b": BLIT, "bg": BLIT + GEOM, "bgc": BLIT + GEOM + COLOR, "c": COLOR}

# The reference's (stylegan2-ada-pytorch, training/augment.py) parameter spreads.
XINT_MAX = 0.125  # integer translation: up to 1/8 of the image
SCALE_STD = 0.2  # isotropic scale: lognormal(0, (0.2 ln 2)^2)
ROTATE_MAX = 1.0  # arbitrary rotation: up to 180 degrees
ANISO_STD = 0.2
XFRAC_STD = 0.125  # fractional translation: N(0, 0.125^2) of the image
BRIGHTNESS_STD = 0.2
CONTRAST_STD = 0.5
HUE_MAX = 1.0
SATURATION_STD = 1.0


def _translate(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    m = torch.eye(3, device=tx.device).repeat(tx.shape[0], 1, 1)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def _scale(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    m = torch.eye(3, device=sx.device).repeat(sx.shape[0], 1, 1)
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _rotate(theta: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    m = torch.eye(3, device=theta.device).repeat(theta.shape[0], 1, 1)
    c, s = cos_sin or (theta.cos(), theta.sin())
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def _quarter_turns(quarters: torch.Tensor) -> torch.Tensor:
    """Rotation by `quarters` x 90 degrees with exact entries (cos(pi) in float32 leaves a sine of 1e-7,
    which would make the blit resample between pixels)."""
    q = quarters.long() % 4
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0], device=q.device)[q]
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0], device=q.device)[q]
    return _rotate(quarters, (cos, sin))


class _Draws:
    """Per-image random parameters, each kept (or set to its identity) with probability p."""

    def __init__(self, n: int, p: torch.Tensor, generator: torch.Generator | None, device: torch.device):
        self.n, self.p, self.generator, self.device = n, p, generator, device

    def uniform(self) -> torch.Tensor:
        return torch.rand(self.n, generator=self.generator, device=self.device)

    def normal(self) -> torch.Tensor:
        return torch.randn(self.n, generator=self.generator, device=self.device)

    def gated(self, value: torch.Tensor, identity: float, p: torch.Tensor | None = None) -> torch.Tensor:
        keep = self.uniform() < (self.p if p is None else p)
        return torch.where(keep, value, torch.full_like(value, identity))


def geometric_matrix(
    transforms: tuple[str, ...], draws: _Draws, height: int, width: int
) -> torch.Tensor | None:
    """The inverse geometric transform per image (N, 3, 3): output pixel (centered coordinates, pixel
    units) -> where to sample the input. None when no geometric transform is in the pipeline."""
    inverse = None

    def then(m: torch.Tensor) -> None:
        nonlocal inverse
        inverse = m if inverse is None else inverse @ m

    if "xflip" in transforms:  # mirror with probability p
        flip = draws.gated(torch.floor(draws.uniform() * 2), 0.0)
        then(_scale(1 - 2 * flip, torch.ones_like(flip)))
    if "rotate90" in transforms:  # 0, 90, 180 or 270 degrees
        quarter = draws.gated(torch.floor(draws.uniform() * 4), 0.0)
        then(_quarter_turns(quarter))
    if "xint" in transforms:  # whole pixels, up to 1/8 of the image
        tx = draws.gated((draws.uniform() * 2 - 1) * XINT_MAX, 0.0)
        ty = draws.gated((draws.uniform() * 2 - 1) * XINT_MAX, 0.0)
        then(_translate(-torch.round(tx * width), -torch.round(ty * height)))
    if "scale" in transforms:
        s = draws.gated(torch.exp2(draws.normal() * SCALE_STD), 1.0)
        then(_scale(1 / s, 1 / s))
    # The rotation is applied before and after the anisotropic scaling, each with probability
    # 1 - sqrt(1 - p), so that some rotation happens with probability p (the reference's p_rot).
    p_rot = 1 - torch.sqrt((1 - draws.p).clamp(min=0))
    if "rotate" in transforms:
        theta = draws.gated((draws.uniform() * 2 - 1) * math.pi * ROTATE_MAX, 0.0, p_rot)
        then(_rotate(-theta))
    if "aniso" in transforms:
        s = draws.gated(torch.exp2(draws.normal() * ANISO_STD), 1.0)
        then(_scale(1 / s, s))
    if "rotate" in transforms:
        theta = draws.gated((draws.uniform() * 2 - 1) * math.pi * ROTATE_MAX, 0.0, p_rot)
        then(_rotate(-theta))
    if "xfrac" in transforms:
        tx = draws.gated(draws.normal() * XFRAC_STD, 0.0)
        ty = draws.gated(draws.normal() * XFRAC_STD, 0.0)
        then(_translate(-tx * width, -ty * height))
    return inverse


def _reflect(coord: torch.Tensor, size: int) -> torch.Tensor:
    """A coordinate in pixel-index units mirrored into [0, size - 1] (reflection without repeating the
    edge pixel, as `F.pad(mode="reflect")`)."""
    if size == 1:
        return torch.zeros_like(coord)
    period = 2 * (size - 1)
    return (size - 1) - ((coord % period) - (size - 1)).abs()


def resample(x: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) sampled bilinearly at `inverse` @ (each output pixel's centered coordinates),
    mirrored at the borders. Gathers only: differentiable twice with respect to x."""
    n, c, h, w = x.shape
    rows = torch.arange(h, device=x.device, dtype=inverse.dtype) - (h - 1) / 2
    cols = torch.arange(w, device=x.device, dtype=inverse.dtype) - (w - 1) / 2
    grid = torch.stack(
        [cols[None, :].expand(h, w), rows[:, None].expand(h, w), torch.ones(h, w, device=x.device)], dim=-1
    ).reshape(1, h * w, 3)
    source = grid @ inverse.transpose(1, 2)  # (N, H*W, 3): where each output pixel reads
    sx = _reflect(source[..., 0] + (w - 1) / 2, w)
    sy = _reflect(source[..., 1] + (h - 1) / 2, h)
    x0, y0 = sx.floor().clamp(0, w - 1), sy.floor().clamp(0, h - 1)
    wx, wy = (sx - x0).to(x.dtype), (sy - y0).to(x.dtype)
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    flat = x.reshape(n, c, h * w)

    def at(yi: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        return flat.gather(2, (yi * w + xi)[:, None, :].expand(n, c, h * w))

    wx, wy = wx[:, None, :], wy[:, None, :]
    top = at(y0, x0) * (1 - wx) + at(y0, x1) * wx
    bottom = at(y1, x0) * (1 - wx) + at(y1, x1) * wx
    return (top * (1 - wy) + bottom * wy).reshape(n, c, h, w)


def color_matrix(transforms: tuple[str, ...], draws: _Draws) -> torch.Tensor | None:
    """The color transform per image (N, 4, 4) on homogeneous RGB (images in [-1, 1], gray at 0). None
    when no color transform is in the pipeline."""
    n, device = draws.n, draws.device
    eye = torch.eye(4, device=device).repeat(n, 1, 1)
    v = torch.tensor([1.0, 1.0, 1.0, 0.0], device=device) / math.sqrt(3)  # the luma axis
    vv = torch.outer(v, v)
    matrix = None

    def then(m: torch.Tensor) -> None:
        nonlocal matrix
        matrix = m if matrix is None else m @ matrix

    if "brightness" in transforms:  # add b to every channel
        b = draws.gated(draws.normal() * BRIGHTNESS_STD, 0.0)
        m = eye.clone()
        m[:, :3, 3] = b[:, None]
        then(m)
    if "contrast" in transforms:  # scale by c around gray
        c = draws.gated(torch.exp2(draws.normal() * CONTRAST_STD), 1.0)
        then(eye * torch.cat([c[:, None].expand(n, 3), torch.ones(n, 1, device=device)], 1)[:, None, :])
    if "lumaflip" in transforms:  # invert luma, keep chroma: a Householder reflection along v
        flip = draws.gated(torch.floor(draws.uniform() * 2), 0.0)
        then(eye - 2 * vv * flip[:, None, None])
    if "hue" in transforms:  # rotate chroma around the luma axis (Rodrigues' formula)
        theta = draws.gated((draws.uniform() * 2 - 1) * math.pi * HUE_MAX, 0.0)
        cos, sin = theta.cos()[:, None, None], theta.sin()[:, None, None]
        cross = torch.zeros(4, 4, device=device)
        cross[0, 1], cross[0, 2], cross[1, 2] = -v[2], v[1], -v[0]
        cross = cross - cross.T
        rotation = cos * torch.eye(4, device=device) + sin * cross + (1 - cos) * vv
        rotation[:, 3, 3] = 1.0
        then(rotation)
    if "saturation" in transforms:  # scale chroma by s
        s = draws.gated(torch.exp2(draws.normal() * SATURATION_STD), 1.0)
        m = vv + (eye - vv) * s[:, None, None]
        m[:, 3, 3] = 1.0  # the homogeneous coordinate stays 1
        then(m)
    return matrix


def ada_augment(
    x: torch.Tensor,
    p: torch.Tensor | float,
    transforms: tuple[str, ...] = PIPELINES["bgc"],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`x` (N, 3, H, W) in [-1, 1], each transform applied to each image with probability `p` (a tensor
    on x's device keeps the step free of host syncs)."""
    n, _, h, w = x.shape
    p = torch.as_tensor(p, dtype=torch.float32, device=x.device)
    draws = _Draws(n, p, generator, x.device)
    inverse = geometric_matrix(transforms, draws, h, w)
    if inverse is not None:
        x = resample(x, inverse)
    matrix = color_matrix(transforms, draws)
    if matrix is not None:
        flat = x.reshape(n, x.shape[1], h * w)
        flat = matrix[:, :3, :3].to(x.dtype) @ flat + matrix[:, :3, 3:].to(x.dtype)
        x = flat.reshape(x.shape)
    return x


class AdaptiveAugment:
    """p and its controller. `observe` D's logits on (augmented) reals after every D micro-batch;
    `after_d_step` after every D step: every `interval` steps, p moves toward the target by the paper's
    speed. All on the device: no host sync in the step. `target` 0 keeps p fixed (a constant-p run)."""

    def __init__(
        self,
        pipeline: str,
        p: float,
        target: float,
        interval: int,
        speed_kimg: float,
        device: torch.device,
        all_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
    ):
        self.transforms = PIPELINES[pipeline]
        self.target, self.interval, self.speed_kimg, self.all_mean = target, interval, speed_kimg, all_mean
        self.p = torch.tensor(float(p), device=device)
        self.signs = torch.zeros(2, device=device)  # sum of sign(D(x_real)) and their count since last move
        self.rt = torch.tensor(0.0, device=device)  # the last r_t (logged)
        self.steps = 0

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return ada_augment(x, self.p, self.transforms, generator)

    def observe(self, real_logits: torch.Tensor) -> None:
        logits = real_logits.detach().float()
        self.signs[0] += logits.sign().sum()
        self.signs[1] += logits.numel()  # a scalar add: no host-to-device copy

    def after_d_step(self, batch: int) -> None:
        """`batch`: the images of one D step, all ranks together."""
        self.steps += 1
        if not self.target or self.steps % self.interval:
            return
        signs = self.all_mean(self.signs)  # the ratio of means over ranks = the ratio of sums
        self.rt = signs[0] / signs[1].clamp(min=1)
        adjust = torch.sign(self.rt - self.target) * (batch * self.interval) / (self.speed_kimg * 1000)
        self.p = (self.p + adjust).clamp(0.0, 1.0)
        self.signs.zero_()

    def state_dict(self) -> dict:
        return {"ada_p": self.p, "ada_signs": self.signs, "ada_rt": self.rt, "ada_steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        device = self.p.device
        self.p, self.signs = state["ada_p"].to(device), state["ada_signs"].to(device)
        self.rt, self.steps = state["ada_rt"].to(device), int(state["ada_steps"])
