"""Checksums that say how a figure was made: of a feature network's weights and of the real data's
statistics. Two figures with the same checksums were measured with the same instrument against the
same reals; the evaluator logs them beside every metric (MLflow tags, `bigtrain eval`'s JSON).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import torch

from .frechet import FeatureStats

# What the suite says of each metric, in this order; the evaluator adds the truncation.
PROVENANCE_FIELDS = (
    "feature_net", "feature_net_sha256", "resize", "num_generated", "num_reference", "reference_sha256",
)  # fmt: skip


def tensors_sha256(named: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of each tensor in order, e.g. of a state_dict."""
    digest = hashlib.sha256()
    for name, t in named.items():
        t = t.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def stats_sha256(stats: FeatureStats) -> str:
    """sha256 of the statistics' mean and covariance (float64, the mu and sigma FID compares)."""
    digest = hashlib.sha256()
    for array in (stats.mean, stats.cov):
        digest.update(np.ascontiguousarray(array, dtype=np.float64).tobytes())
    return digest.hexdigest()


def resize_text(size: int, net_input: int, method: str) -> str:
    """How a generated image reaches the feature network, e.g. '16px -> 299px, TF1 bilinear'."""
    return f"{size}px -> {net_input}px, {method}" if size != net_input else f"{size}px, none"


def as_tags(provenance: Mapping[str, Mapping[str, object]], prefix: str = "eval") -> dict[str, str]:
    """{"fd": {"resize": ...}} -> {"eval/fd/resize": "..."}: MLflow tags, one per metric and field."""
    return {
        f"{prefix}/{metric}/{field}": str(value)
        for metric, fields in provenance.items()
        for field, value in fields.items()
    }
