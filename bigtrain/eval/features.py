"""Feature networks for the Frechet distance, and the evaluator that uses them.

`classifier`: a small CNN trained on the dataset's own labels; its penultimate layer gives the
features. It is not Inception, so the metric is named `fd_<dataset>` (e.g. `fd_digits`), never `fid`.
The trained net and the real data's statistics are computed once and cached beside the shards.

The same shards give the same classifier on every x86 CPU. Its initial weights come from numpy's
PCG64 (torch's random transforms are vectorized per CPU and round differently), and it is trained in
float64: in float32, kernels that round differently on AVX2 and AVX-512 turned into classifiers whose
scores for the same generator differed by 30% after 300 Adam steps; in float64 the same steps agree to
within float32 rounding, and the weights are rounded to float32 at the end. Features are divided by
the reals' RMS feature spread, so a score is in units of the data's own variation.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data.interface import StreamSpec
from ..data.loader import ShardLoader
from ..data.manifest import MANIFEST_NAME, DataError, Manifest
from ..data.remote import join, read_bytes
from .frechet import FeatureStats, frechet_distance_of

log = logging.getLogger(__name__)

CLASSIFIER_VERSION = 2  # v2: numpy-seeded init, float64 training, bias-free convs, scaled features
CLASSIFIER_INPUT = 32  # images are resized to this before the classifier


class SmallClassifier(nn.Module):
    """Three strided conv stages (32 -> 16 -> 8 -> 4) and global average pooling: 4 x width features."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:  # no conv bias: BatchNorm removes it
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            )  # fmt: skip

        self.trunk = nn.Sequential(stage(3, width), stage(width, 2 * width), stage(2 * width, 4 * width))
        self.head = nn.Linear(4 * width, num_classes)
        self.feature_dim = 4 * width
        # The reals' RMS feature spread, set once the net is trained: features are divided by it.
        self.register_buffer("feature_scale", torch.ones(()))

    def reset_parameters(self, seed: int) -> SmallClassifier:
        """He-uniform convolutions and a zero-bias head, drawn by numpy: the same on every CPU."""
        rng = np.random.Generator(np.random.PCG64(seed))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                bound = np.sqrt(6.0 / fan_in) if isinstance(m, nn.Conv2d) else 1.0 / np.sqrt(fan_in)
                values = rng.uniform(-bound, bound, size=tuple(m.weight.shape))
                with torch.no_grad():
                    m.weight.copy_(torch.from_numpy(values))
                    if m.bias is not None:
                        m.bias.zero_()
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, feature_dim), in the net's dtype."""
        if x.shape[-1] != CLASSIFIER_INPUT:
            x = F.interpolate(
                x.float(), size=(CLASSIFIER_INPUT, CLASSIFIER_INPUT), mode="bilinear", antialias=True
            )
        return self.trunk(x.to(self.head.weight.dtype)).mean(dim=(2, 3)) / self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def class_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, num_classes) softmax of the head, on the features it was trained
        with (before the division by feature_scale), in float32."""
        return torch.softmax(self.head(self.embed(x) * self.feature_scale).float(), dim=1)


def manifest_digest(data_path: str | Path) -> str:
    return hashlib.sha256(read_bytes(join(data_path, MANIFEST_NAME))).hexdigest()


def train_classifier(
    loader: ShardLoader, num_classes: int, steps: int, device: torch.device, seed: int = 0
) -> tuple[SmallClassifier, float]:
    """Adam on cross-entropy for `steps` batches, in float64 (see the module docstring); returns the
    net in float32 and eval mode, and its accuracy on the last 20 batches."""
    net = SmallClassifier(num_classes).reset_parameters(seed).to(device, torch.float64)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    correct = seen = 0
    for step in tqdm(range(steps), desc="train feature classifier", leave=False):
        x, y = next(loader)
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step >= steps - 20:
            correct += int((logits.argmax(1) == y).sum())
            seen += y.numel()
    return net.float().eval(), correct / max(seen, 1)


@torch.no_grad()
def real_stats(net: SmallClassifier, loader: ShardLoader, num_images: int) -> FeatureStats:
    stats = FeatureStats.empty(net.feature_dim)
    while stats.count < num_images:
        x, _ = next(loader)
        stats.add(net.embed(x[: num_images - stats.count]))
    return stats


def classifier_reference_at(
    net: SmallClassifier,
    data_path: Path,
    manifest: Manifest,
    device: torch.device,
    resolution: int,
    max_real: int = 10_000,
) -> FeatureStats:
    """The reals area-downscaled to `resolution` (by the loader), in the classifier's feature space."""
    loader = ShardLoader(
        StreamSpec(data_path, 256, resolution, device, seed=0, shuffle_buffer=0), num_workers=0
    )
    try:
        return real_stats(net.to(device), loader, min(manifest.num_samples, max_real))
    finally:
        loader.close()


class FrechetEvaluator:
    """Frechet distance between generated images and the dataset, in a feature net's space."""

    def __init__(self, net: SmallClassifier, reference: FeatureStats, device: torch.device):
        self.net, self.reference, self.device = net.to(device).eval(), reference, device

    @torch.no_grad()
    def generated_stats(
        self, generate: Callable[[int], torch.Tensor], num_samples: int, batch: int
    ) -> FeatureStats:
        stats = FeatureStats.empty(self.net.feature_dim)
        while stats.count < num_samples:
            stats.add(self.net.embed(generate(min(batch, num_samples - stats.count))))
        return stats

    def __call__(self, generate: Callable[[int], torch.Tensor], num_samples: int, batch: int) -> float:
        return frechet_distance_of(self.generated_stats(generate, num_samples, batch), self.reference)


def classifier_evaluator(
    data_path: str | Path,
    manifest: Manifest,
    device: torch.device,
    cache_dir: str | Path,
    train_steps: int = 200,
    max_real: int = 10_000,
) -> FrechetEvaluator:
    """Load or build the dataset's classifier and reference statistics (cached in `cache_dir`)."""
    if manifest.num_classes < 2:
        raise DataError(
            f"the fd metric needs class labels, and {data_path} has none; use an Inception metric "
            "(eval.metrics=[fid10k]) or set eval.every_kimg=0 to train without evaluation"
        )
    cache = Path(cache_dir) / f"classifier-v{CLASSIFIER_VERSION}.pt"
    digest = manifest_digest(data_path)
    net = SmallClassifier(manifest.num_classes)
    if cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        if saved.get("manifest_sha256") == digest:
            net.load_state_dict(saved["net"])
            log.info("feature classifier and reference statistics from %s", cache)
            return FrechetEvaluator(net, FeatureStats.from_state_dict(saved["reference"]), device)
        log.info("%s was made for other shards; rebuilding it", cache)
    loader = ShardLoader(
        StreamSpec(data_path, 64, CLASSIFIER_INPUT, device, seed=1234, shuffle_buffer=2048), num_workers=0
    )
    net, accuracy = train_classifier(loader, manifest.num_classes, train_steps, device)
    log.info(
        "feature classifier trained on %s: %.1f%% accuracy on its last batches", data_path, 100 * accuracy
    )
    ordered = ShardLoader(
        StreamSpec(data_path, 256, CLASSIFIER_INPUT, device, seed=0, shuffle_buffer=0), num_workers=0
    )
    reference = real_stats(net, ordered, min(manifest.num_samples, max_real))
    scale = float(np.sqrt(np.trace(reference.cov) / net.feature_dim))  # the reals' RMS feature spread
    net.feature_scale.fill_(scale)
    reference = reference.scaled(1.0 / scale)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")  # concurrent trials may build it too
    torch.save({"manifest_sha256": digest, "net": net.state_dict(), "reference": reference.state_dict()}, tmp)
    tmp.replace(cache)
    return FrechetEvaluator(net.cpu(), reference, device)
