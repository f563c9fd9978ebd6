"""Sample-quality metrics on feature sets, and the names users ask for them by.

Names: `fd` (Frechet distance in the dataset classifier's features, `eval.num_samples` samples, logged
as `fd_<dataset>`), `mode` (the MODE score of Che et al. 2017 on the same classifier's predictions,
`eval.num_samples` samples, logged as `mode_<dataset>`: bigtrain/eval/mode_score.py), and on the standard
Inception features `fid<N>`, `kid<N>`, `pr<N>`, `is<N>` with N
generated images (`10k`, `50k`, `2000`). Reals are the dataset's reference set (all its images, or the
cap it was computed with); StyleGAN's `_full` suffix is accepted and means the same.

KID (Binkowski et al. 2018): the unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, averaged
over random subsets. Precision/recall (Kynkaanniemi et al. 2019): a sample is inside a set's manifold
when it lies within the k-th nearest-neighbour radius of some member of that set.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config, ConfigError, positive

log = logging.getLogger(__name__)

_METRIC = re.compile(r"^(fid|kid|pr|is)(\d+)(k?)(_full)?$")
LOWER_IS_BETTER = {"fd": True, "fid": True, "kid": True, "pr": False, "is": False, "mode": False}


@dataclass(frozen=True)
class MetricSpec:
    name: str  # as the user wrote it, e.g. fid10k
    kind: str  # fd | fid | kid | pr | is | mode
    num_samples: int  # generated images; 0 for fd and mode (they use eval.num_samples)

    @property
    def uses_inception(self) -> bool:
        return self.kind in ("fid", "kid", "pr")


def parse_metric(name: str) -> MetricSpec:
    if name in ("fd", "mode"):
        return MetricSpec(name, name, 0)
    m = _METRIC.match(name)
    if not m or int(m.group(2)) == 0:
        raise ValueError(
            f"unknown metric {name!r}: use fd, mode, or fid/kid/pr/is followed by a sample count such as fid10k, "
            "kid50k, pr50k, is50k or fid2000"
        )
    count = int(m.group(2)) * (1000 if m.group(3) else 1)
    return MetricSpec(name, m.group(1), count)


def check_config(cfg: Config) -> None:
    """The eval section's checks, naming the dotted key (called by `bigtrain.config.validate`)."""
    e = cfg.eval
    positive("eval.every_kimg", e.every_kimg, allow_zero=True)
    for key in ("num_samples", "batch", "grid_size"):
        positive(f"eval.{key}", getattr(e, key))
    positive("eval.truncation", e.truncation, allow_zero=True)
    positive("eval.truncation_cutoff", e.truncation_cutoff, allow_zero=True)
    for i, value in enumerate(e.truncation_sweep):
        positive(f"eval.truncation_sweep[{i}]", value, allow_zero=True)
    positive("eval.reference_images", e.reference_images, allow_zero=True)
    for i, name in enumerate(e.metrics):
        try:
            parse_metric(name)
        except ValueError as err:
            raise ConfigError(f"eval.metrics[{i}]: {err}") from None


def logged_names(spec: MetricSpec, dataset: str) -> tuple[str, ...]:
    """The names a metric's results are logged and reported under (MLflow, sweeps); the first one ranks
    checkpoints and trials: fd -> fd_<dataset>, mode -> mode_<dataset>, pr50k -> pr50k_precision and pr50k_recall, is50k ->
    is50k_mean and is50k_std, fid10k and kid50k as written."""
    if spec.kind in ("fd", "mode"):
        return (f"{spec.kind}_{dataset}",)
    if spec.kind == "pr":
        return f"{spec.name}_precision", f"{spec.name}_recall"
    if spec.kind == "is":
        return f"{spec.name}_mean", f"{spec.name}_std"
    return (spec.name,)


def kernel_inception_distance(
    real: torch.Tensor, fake: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> float:
    """Mean over `subsets` random subsets (sizes capped by both sets) of the unbiased MMD^2."""
    n = min(real.shape[0], fake.shape[0], subset_size)
    if n < 2:
        raise ValueError(
            f"KID needs at least 2 real and 2 generated samples, got {real.shape[0]} and {fake.shape[0]}"
        )
    dim = real.shape[1]
    rng = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(subsets):
        x = real[torch.randperm(real.shape[0], generator=rng)[:n]].double()
        y = fake[torch.randperm(fake.shape[0], generator=rng)[:n]].double()
        kxx = (x @ x.t() / dim + 1) ** 3
        kyy = (y @ y.t() / dim + 1) ** 3
        kxy = (x @ y.t() / dim + 1) ** 3
        off_diagonal = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
        total += float(off_diagonal - 2 * kxy.mean())
    return total / subsets


def _kth_neighbour_radii(features: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Distance of each sample to its k-th nearest other sample of the same set."""
    radii = []
    for chunk in features.split(batch):
        d = torch.cdist(chunk, features)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # +1: the sample itself is at distance 0
    return torch.cat(radii)


def _fraction_inside(samples: torch.Tensor, manifold: torch.Tensor, radii: torch.Tensor, batch: int) -> float:
    inside = 0
    for chunk in samples.split(batch):
        inside += int((torch.cdist(chunk, manifold) <= radii.unsqueeze(0)).any(dim=1).sum())
    return inside / samples.shape[0]


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = 3, batch: int = 1000
) -> tuple[float, float]:
    """Improved precision (fakes inside the real manifold) and recall (reals inside the fake one)."""
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} real and generated samples")
    real, fake = real.float(), fake.float()
    precision = _fraction_inside(fake, real, _kth_neighbour_radii(real, k, batch), batch)
    recall = _fraction_inside(real, fake, _kth_neighbour_radii(fake, k, batch), batch)
    return precision, recall


# ----------------------------------------------------------------------------- Inception Score

# The FID network has no classification head, so IS needs torch-fidelity's Inception (with logits) and
# its weights file, which bigtrain never downloads: both must already be on the machine.
IS_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"


def _is_weights() -> Path | None:
    home = Path(torch.hub.get_dir()) / "checkpoints" / IS_WEIGHTS_NAME
    return home if home.is_file() else None


def inception_score_extractor(device: torch.device):
    """torch-fidelity's logits network, or None (with the reason logged) where it cannot be had offline."""
    weights = _is_weights()
    if weights is None:
        log.warning(
            "Inception Score skipped: the bundled FID Inception has no classification head, and torch-fidelity's "
            "Inception weights are not at %s", Path(torch.hub.get_dir()) / "checkpoints" / IS_WEIGHTS_NAME,
        )  # fmt: skip
        return None
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception as e:  # not installed, or its torchvision import fails beside this torch
        log.warning("Inception Score skipped: torch-fidelity cannot be imported (%s)", e)
        return None
    net = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["logits_unbiased"], feature_extractor_weights_path=str(weights)
    )
    return net.to(device).eval()


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """torch-fidelity's IS over the logits (mean, std across splits)."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    result = isc_features_to_metric(logits, splits=splits)
    return float(result["inception_score_mean"]), float(result["inception_score_std"])
