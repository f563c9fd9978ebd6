import numpy as np
import scipy.linalg
import torch

from bigtrain.eval.frechet import FeatureStats, frechet_distance, frechet_distance_of
from bigtrain.eval.sampling import image_grid, truncated_normal


def test_truncation_resamples_only_the_tail():
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    plain = torch.randn((4000, 16), generator=g1)
    truncated = truncated_normal((4000, 16), 0.5, generator=g2)
    inside = plain.abs() <= 0.5
    assert torch.equal(truncated[inside], plain[inside]), "values inside the threshold changed"
    assert (truncated.abs() <= 0.5).all()
    assert not torch.equal(truncated[~inside], plain[~inside])
    assert torch.equal(
        truncated_normal((5, 3), 0.0, torch.Generator().manual_seed(1)),
        torch.randn((5, 3), generator=torch.Generator().manual_seed(1)),
    )


def test_grid_layout():
    images = torch.stack([torch.full((3, 4, 4), v) for v in (-1.0, 1.0, 0.0)])
    grid = np.asarray(image_grid(images, nrow=2))
    assert grid.shape == (8, 8, 3)
    assert grid[0, 0, 0] == 0 and grid[0, 4, 0] == 255 and grid[4, 0, 0] == 128 and grid[4, 4, 0] == 0


def _scipy_fd(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_matches_scipy_on_random_gaussians():
    rng = np.random.default_rng(0)
    for dim in (4, 32):
        a = rng.normal(size=(500, dim)) @ rng.normal(size=(dim, dim))
        b = rng.normal(size=(400, dim)) @ rng.normal(size=(dim, dim)) + 0.3
        mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
        ours, ref = frechet_distance(mu1, s1, mu2, s2), _scipy_fd(mu1, s1, mu2, s2)
        assert abs(ours - ref) <= 1e-6 * max(1.0, abs(ref)), f"ours {ours} vs scipy {ref}"


def test_stats_merge_exactly_and_identical_sets_give_zero():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(300, 8)))
    whole = FeatureStats.empty(8)
    whole.add(x)
    parts = [FeatureStats.empty(8) for _ in range(3)]
    for p, chunk in zip(parts, x.split(100)):
        p.add(chunk)
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert np.allclose(merged.mean, x.numpy().mean(0)) and np.allclose(
        merged.cov, np.cov(x.numpy(), rowvar=False)
    )
    assert np.allclose(merged.cov, whole.cov, atol=1e-12)
    assert abs(frechet_distance_of(whole, merged)) < 1e-8
