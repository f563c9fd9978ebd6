"""Evaluation of G_ema, shared by training and `bigtrain eval`: sampling (truncation, BigGAN's
standing BatchNorm statistics), the metric suite, sample grids, the metric-history and truncation-sweep
plots, the best-checkpoint decision, and the provenance of every figure.

Sampling draws from its own seeded generators (EVAL_SEED during training), never from the training
random streams, so evaluating leaves training exactly as it would have been.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import EvalConfig
from ..track import NullTracker
from ..train.ema import refresh_batchnorm_stats
from .plots import plot_lines
from .provenance import as_tags
from .sampling import random_labels, save_grid, truncated_normal, truncation_kwargs, z_truncation
from .suite import MetricSuite

log = logging.getLogger(__name__)

EVAL_SEED = 123_456  # fixed latents for every evaluation and grid, independent of training RNG


@dataclass
class Sampler:
    """Latents and images of a generator (G_ema): truncation, chosen classes, standing statistics."""

    G: nn.Module
    z_dim: int
    num_classes: int
    device: torch.device
    truncation_cutoff: int = 0  # stylegan2: truncate only the first this many w layers (0: all)
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def latents(
        self, n: int, generator: torch.Generator, truncation: float = 0.0, classes: list[int] | None = None,
        codes: dict[str, list[float]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """z (BigGAN's truncated normal at `truncation`) and labels: `classes` in turn, else random. A G
        with latent codes (InfoGAN) gets them after the noise, drawn after the labels: `codes` fixes some
        (name -> values in turn, see LatentCodes.parse), the rest random."""
        z = truncated_normal((n, self.z_dim), z_truncation(self.G, truncation), generator, self.device)
        if classes:
            y = torch.tensor(classes, device=self.device).repeat((n + len(classes) - 1) // len(classes))[:n]
        else:
            y = random_labels(n, self.num_classes, generator, self.device)
        if self.G.codes is not None:
            z = torch.cat([z, self.G.codes.draw(n, generator, self.device, codes)], dim=1)
        elif codes:
            raise ValueError(f"codes {', '.join(codes)} given; this generator has none (regularize.info)")
        return z, y

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, y: torch.Tensor, truncation: float = 0.0) -> torch.Tensor:
        """`truncation` matters to a style-based G only (psi); BigGAN's is in the latents."""
        with self.autocast():
            return self.G(z, y, **truncation_kwargs(self.G, truncation, self.truncation_cutoff)).float()

    def stream(self, generator: torch.Generator, truncation: float = 0.0) -> Callable[[int], torch.Tensor]:
        """`n -> n images` drawn one after another from `generator`: what MetricSuite.compute takes."""
        return lambda n: self(*self.latents(n, generator, truncation), truncation)

    def refresh_stats(
        self, generator: torch.Generator, batches: int, batch: int, truncation: float = 0.0
    ) -> None:
        """BigGAN's standing statistics from `batches` batches of these latents (then eval mode)."""
        refresh_batchnorm_stats(self.G, lambda: self.latents(batch, generator, truncation), batches)


class Evaluator:
    """The metrics of `eval.metrics` for one generator, and what a training run keeps of them.

    `save_best()` is asked to write the "best" checkpoint when the first metric improves (every rank
    calls it, so it may be collective); `tracker` receives metrics, grids, plots and provenance tags
    (a NullTracker off rank 0)."""

    def __init__(
        self,
        sampler: Sampler,
        suite: MetricSuite,
        cfg: EvalConfig,
        run_dir: Path,
        title: str = "",
        stats_batch: int = 64,
        stats_batches: int = 16,
        rank: int = 0,
        save_best: Callable[[], Path | None] | None = None,
        network_metrics: Callable[[int | None], dict[str, float]] | None = None,
    ):
        """`network_metrics(resolution)`: figures of the training networks themselves (the objective's,
        e.g. the semi-supervised D's held-out accuracy), recorded beside eval.metrics'."""
        self.sampler, self.suite, self.cfg = sampler, suite, cfg
        self.run_dir, self.title, self.rank = Path(run_dir), title, rank
        self.stats_batch, self.stats_batches = stats_batch, stats_batches
        self.save_best = save_best
        self.network_metrics = network_metrics
        self.tracker = NullTracker()
        self.metric_history: list[dict[str, float]] = []  # one entry per recorded evaluation, with its kimg
        self.best: dict[str, float] = {}  # {"metric", "value", "kimg"} of the best first metric so far
        self._tags: dict[str, str] = {}  # provenance tags already sent to the tracker

    # ------------------------------------------------------------------ one evaluation

    def score(
        self, truncation: float, seed: int, batch: int | None = None, stats_truncation: float = 0.0
    ) -> dict[str, float]:
        """The suite's metrics of one seeded stream of samples: the standing statistics are refreshed
        first from the same stream (at `stats_truncation`), then `suite.compute` draws the samples."""
        generator = torch.Generator(self.sampler.device).manual_seed(seed)
        self.sampler.refresh_stats(generator, self.stats_batches, self.stats_batch, stats_truncation)
        return self.suite.compute(self.sampler.stream(generator, truncation), batch or self.cfg.batch)

    def provenance(self, truncation: float) -> dict[str, dict[str, object]]:
        """How each metric's last figure was made (see MetricSuite.provenance), with the truncation."""
        return {
            name: {**fields, "truncation": truncation} for name, fields in self.suite.provenance().items()
        }

    def evaluate(
        self,
        kimg: float,
        images: int,
        truncation: float | None = None,
        record: bool = True,
        resolution: int | None = None,
    ) -> dict[str, float]:
        """`eval.metrics` of G_ema samples, each rank generating its share, logged at step = `images`.
        `resolution`: a growing model's phase, scored against the reals at that size. With `record`,
        the result joins the history (plot) and may become the best checkpoint."""
        truncation = self.cfg.truncation if truncation is None else truncation
        if resolution is not None:
            self.suite.at_resolution(resolution)
        self.suite.prepare()  # references are built once, outside the timing
        started = time.time()
        metrics = self.score(truncation, EVAL_SEED + self.rank)
        if resolution is not None:
            metrics["eval_resolution"] = float(resolution)
        if not record:
            return metrics
        if self.network_metrics is not None:
            metrics.update(self.network_metrics(resolution))
        metrics["eval_seconds"] = time.time() - started
        self.metric_history.append({"kimg": kimg, **metrics})
        if self.rank == 0:
            grid = self.save_grid(kimg)
            self.tracker.log_metrics(metrics, step=images)
            self.tracker.log_artifact(grid, "samples")
            plot = self.plot_history()
            if plot is not None:
                self.tracker.log_artifact(plot, "plots")
            self.log_provenance(as_tags(self.provenance(truncation)))
            log.info("kimg %.2f: %s", kimg, ", ".join(f"{k} = {v:.4g}" for k, v in metrics.items()))
        self.keep_if_best(metrics, kimg, images)
        return metrics

    def log_provenance(self, tags: dict[str, str]) -> None:
        """MLflow tags, sent when new or changed (a growing model's phase changes resize and reference):
        tags, not params, because a param may never change its value within a run."""
        changed = {k: v for k, v in tags.items() if self._tags.get(k) != v}
        if changed:
            self.tracker.set_tags(changed)
            self._tags.update(changed)

    def keep_if_best(self, metrics: dict[str, float], kimg: float, images: int) -> None:
        """Save the "best" checkpoint when the first metric improves (same decision on every rank)."""
        primary = self.suite.primary
        if not self.cfg.keep_best or primary is None or images == 0 or primary[0] not in metrics:
            return
        name, lower_is_better = primary
        value = metrics[name]
        same_metric = self.best.get("metric") == name  # a growing model's phase renames its metric
        if same_metric and not (
            value < self.best["value"] if lower_is_better else value > self.best["value"]
        ):
            return
        self.best = {"metric": name, "value": value, "kimg": kimg}
        path = self.save_best() if self.save_best else None
        if self.rank == 0:
            log.info("best %s so far (%.4g at %.2f kimg): %s", name, value, kimg, path)
            self.tracker.log_metrics({f"best_{name}": value}, step=images)

    # ------------------------------------------------------------------ pictures

    def save_grid(self, kimg: float) -> Path:
        """G_ema on fixed latents (call after the standing-stats refresh); row r shows class r."""
        n, truncation = self.cfg.grid_size, self.cfg.truncation
        generator = torch.Generator(self.sampler.device).manual_seed(EVAL_SEED + 1)
        z, _ = self.sampler.latents(n * n, generator, truncation)
        y = (torch.arange(n * n, device=self.sampler.device) // n) % self.sampler.num_classes
        return save_grid(
            self.sampler(z, y, truncation), self.run_dir / "samples" / f"kimg-{kimg:09.2f}.png", nrow=n
        )

    def plot_history(self) -> Path | None:
        skip = ("kimg", "eval_seconds", "eval_resolution")
        names = list(dict.fromkeys(k for h in self.metric_history for k in h if k not in skip))
        kimgs = [h["kimg"] for h in self.metric_history]
        series = {n: [h.get(n, float("nan")) for h in self.metric_history] for n in names}
        return plot_lines(kimgs, series, "kimg", self.run_dir / "metrics.png", self.title)

    def plot_sweep(self, rows: list[dict[str, float]], path: Path) -> Path | None:
        """Each metric against the truncation threshold (rows hold "truncation" and the metrics)."""
        names = [k for k in rows[0] if k != "truncation"]
        series = {n: [r[n] for r in rows] for n in names}
        return plot_lines([r["truncation"] for r in rows], series, "truncation threshold", path, self.title)

    def truncation_sweep(
        self, thresholds: list[float], kimg: float, images: int, resolution: int | None = None
    ) -> list[dict[str, float]]:
        """The metrics at each threshold, unrecorded: MLflow metrics trunc_sweep/<name> (step =
        threshold x 100), provenance tags trunc_sweep/<metric>/..., and a PNG plot of each metric."""
        rows = []
        for t in thresholds:
            metrics = self.evaluate(kimg, images, truncation=t, record=False, resolution=resolution)
            rows.append({"truncation": t, **metrics})
            if self.rank == 0:
                self.tracker.log_metrics(
                    {f"trunc_sweep/{k}": v for k, v in metrics.items()}, step=round(100 * t)
                )
                log.info("truncation %.2f: %s", t, ", ".join(f"{k} = {v:.4g}" for k, v in metrics.items()))
        if rows and self.rank == 0:
            swept = ",".join(f"{t:g}" for t in thresholds)
            tags = as_tags(self.provenance(truncation=0.0), prefix="trunc_sweep")
            self.log_provenance({k: swept if k.endswith("/truncation") else v for k, v in tags.items()})
            plot = self.plot_sweep(rows, self.run_dir / "truncation_sweep.png")
            if plot is not None:
                self.tracker.log_artifact(plot, "plots")
        return rows

    # ------------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict:
        return {"metric_history": self.metric_history, "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.metric_history = list(state.get("metric_history", []))
        self.best = dict(state.get("best", {}))
