"""The MODE score (Che et al. 2017, "Mode Regularized Generative Adversarial Networks", section 4): the
Inception-style score of a classifier's predictions p(y|x) on generated images, penalized by how far
their label marginal p(y) = E_x p(y|x) lies from the data's label marginal p*(y):

    MODE = exp( E_x KL(p(y|x) || p(y)) - KL(p(y) || p*(y)) ) = IS x exp(-KL(p(y) || p*(y)))

It equals the Inception-style score exp(E_x KL(p(y|x) || p(y))) where G's classes come in the data's
proportions, and falls below it where they do not (a missing or over-produced class), however sharp
each sample is. The form often quoted, with p*(y) in place of p(y) in the first KL, is the Inception-style
score whatever p*(y) is: E_x KL(p(y|x) || p*) - KL(p(y) || p*) = H(p(y)) - E_x H(p(y|x)), the cross-
entropy terms in p* cancelling. The form above is the one in which p*(y) acts, as the section's text asks
of the score (it compares the generated label distribution with the training data's); later evaluation
studies write it so (Xu et al. 2018, "An empirical study on evaluation metrics of generative adversarial
networks").

`mode` in eval.metrics, logged as `mode_<dataset>`: p(y|x) from the dataset's own classifier (the one
the fd metric embeds with, bigtrain.eval.features), over eval.num_samples generated images; p*(y) the
label frequencies of every sample of the dataset, read from the shards' label members (no image is
decoded) once and cached beside the classifier. Several ranks sum their parts exactly (the score needs
the sums of p(y|x) and of sum_y p(y|x) log p(y|x), and the count).
"""

from __future__ import annotations

import io
import logging
import math
import os
from pathlib import Path

import torch
import webdataset as wds

from ..data.loader import sample_label
from ..data.manifest import DataError, Manifest
from ..data.remote import join, read_bytes
from .features import manifest_digest

log = logging.getLogger(__name__)


def prediction_sums(probabilities: torch.Tensor) -> torch.Tensor:
    """(N, C) class probabilities -> the (C + 2,) sums the score needs: sum_x p(y|x) (C), sum_x
    sum_y p(y|x) log p(y|x), N. Sums of several batches or ranks add up."""
    p = probabilities.double()
    p_log_p = torch.special.xlogy(p, p).sum()
    return torch.cat([p.sum(dim=0), p_log_p.reshape(1), p.new_tensor([p.shape[0]])])


def log_scores_of_sums(sums: torch.Tensor, p_star: torch.Tensor) -> tuple[float, float]:
    """(log IS, log MODE) from `prediction_sums` and the data's label marginal p*(y) (or label counts:
    normalized here)."""
    sums, p_star = sums.double().cpu(), p_star.double().cpu()
    p_star = p_star / p_star.sum()
    n = sums[-1]
    marginal = sums[:-2] / n  # p(y)
    mean_kl_to_marginal = sums[-2] / n - torch.special.xlogy(marginal, marginal).sum()  # E_x KL(p(y|x)||p(y))
    kl_to_data = (torch.special.xlogy(marginal, marginal) - torch.special.xlogy(marginal, p_star)).sum()
    return float(mean_kl_to_marginal), float(mean_kl_to_marginal - kl_to_data)


def mode_score(probabilities: torch.Tensor, p_star: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y)) - KL(p(y) || p*(y))) of (N, C) class probabilities."""
    return math.exp(log_scores_of_sums(prediction_sums(probabilities), p_star)[1])


def count_labels(data_path: str | Path, manifest: Manifest) -> torch.Tensor:
    """(C,) counts of every label in the shards (the label members only; no image is decoded)."""
    counts = torch.zeros(manifest.num_classes, dtype=torch.float64)
    for shard in manifest.shards:
        stream = io.BytesIO(read_bytes(join(data_path, shard.name)))
        files = wds.tariterators.tar_file_expander([{"url": shard.name, "stream": stream}])
        for sample in wds.tariterators.group_by_keys(files):
            label = sample_label(sample, manifest.label_key)
            if label is not None and 0 <= label < manifest.num_classes:
                counts[label] += 1
    return counts


def label_counts(data_path: str | Path, manifest: Manifest, cache_dir: str | Path) -> torch.Tensor:
    """The dataset's (C,) label counts, p*(y) up to normalization, cached in `cache_dir` for these shards."""
    if manifest.num_classes < 2:
        raise DataError(
            f"the mode metric compares G's classes with the data's, and {data_path} has no class labels; use "
            "an Inception metric (eval.metrics=[fid10k])"
        )
    cache = Path(cache_dir) / "label-marginal.pt"
    digest = manifest_digest(data_path)
    if cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        if saved.get("manifest_sha256") == digest:
            return saved["counts"]
    counts = count_labels(data_path, manifest)
    if counts.sum() == 0:
        raise DataError(
            f"no sample of {data_path} has a {manifest.label_key} label the mode metric can count"
        )
    log.info("label marginal of %s from %d labels", data_path, int(counts.sum()))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")  # concurrent trials may write it too
    torch.save({"manifest_sha256": digest, "counts": counts}, tmp)
    tmp.replace(cache)
    return counts
