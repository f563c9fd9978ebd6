"""Feature statistics and the Frechet distance between two Gaussians (Heusel et al. 2017).

    FD = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))

Statistics are kept as sums (count, sum, sum of outer products) in float64 so that shards computed
on different ranks or batches combine exactly by addition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class FeatureStats:
    count: int
    total: torch.Tensor  # (D,) float64
    outer: torch.Tensor  # (D, D) float64

    @classmethod
    def empty(cls, dim: int) -> FeatureStats:
        return cls(0, torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64))

    def add(self, features: torch.Tensor) -> None:
        f = features.detach().to("cpu", torch.float64)
        self.count += f.shape[0]
        self.total += f.sum(0)
        self.outer += f.t() @ f

    def scaled(self, factor: float) -> FeatureStats:
        """The statistics of the features multiplied by `factor`."""
        return FeatureStats(self.count, self.total * factor, self.outer * factor**2)

    def merge(self, other: FeatureStats) -> FeatureStats:
        return FeatureStats(self.count + other.count, self.total + other.total, self.outer + other.outer)

    @property
    def mean(self) -> np.ndarray:
        return (self.total / self.count).numpy()

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (divides by n - 1, as numpy.cov and the reference FID code do)."""
        mu = self.total / self.count
        return ((self.outer - self.count * torch.outer(mu, mu)) / (self.count - 1)).numpy()

    def state_dict(self) -> dict:
        return {"count": self.count, "total": self.total, "outer": self.outer}

    @classmethod
    def from_state_dict(cls, d: dict) -> FeatureStats:
        return cls(int(d["count"]), d["total"], d["outer"])


def all_reduce_stats(stats: FeatureStats, all_reduce_sum, device: torch.device) -> FeatureStats:
    """Sum every rank's statistics with one collective: the exact statistics of all their samples."""
    dim = stats.total.numel()
    packed = torch.cat(
        [torch.tensor([float(stats.count)], dtype=torch.float64), stats.total, stats.outer.flatten()]
    )
    packed = all_reduce_sum(packed.to(device)).cpu()
    return FeatureStats(int(packed[0]), packed[1 : 1 + dim], packed[1 + dim :].view(dim, dim))


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Tr((S_1 S_2)^(1/2)) is computed as Tr((S_1^(1/2) S_2 S_1^(1/2))^(1/2)): the same eigenvalues,
    but of a symmetric PSD matrix, so no complex round-off from a general matrix square root."""
    root1 = _sqrt_psd(cov1)
    middle = root1 @ cov2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)


def frechet_distance_of(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)
