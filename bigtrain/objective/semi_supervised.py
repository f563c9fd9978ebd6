"""The semi-supervised GAN (Salimans et al. 2016, "Improved Techniques for Training GANs", section 5).

D is a classifier with K + 1 outputs: the K classes of the data and "generated". Its class logits
l_1..l_K are D's class head (`model.aux_classifier`, the head AC-GAN trains); the generated class's
logit is fixed at 0 (the softmax is over-parametrized: subtracting f(x) from every logit changes
nothing), so with Z(x) = sum_k exp l_k(x)

    D(x) = Z(x) / (Z(x) + 1),      logit D(x) = log Z(x) = logsumexp_k l_k(x)

and the paper's loss (sec. 5) L = L_supervised + L_unsupervised,

    L_supervised   = -E_{x, y ~ labelled} log p_model(y | x, y < K + 1) = CE(l(x), y)
    L_unsupervised = -E_{x ~ p_data} log D(x) - E_{z ~ noise} log(1 - D(G(z)))
                   =  E softplus(-log Z(x)) + E softplus(log Z(G(z))),

the logistic D loss (`loss.name: nonsat`) on the logit log Z. This part gives D's adversarial logit as
log Z(x) wherever the objective reads it (`d_logits`: the D and G steps, lazy and unrolled passes, ADA's
r_t, the logged D(real) and D(fake)), so the adversarial loss computes L_unsupervised, and it adds
weight x L_supervised on a labelled batch the size of the micro-batch, drawn (with replacement, from the
slot's generator) from the labelled subset each micro-batch and scored in D's main pass as one more
set: the authors' code trains D on a labelled batch beside each unlabelled one. The labelled subset
(`data.labelled_per_class` or `data.labelled_fraction`, seeded by `data.labelled_seed`) is chosen by
bigtrain/data/labelled.py; the unlabelled stream is the whole dataset, as theirs. G is trained by
feature matching (`regularize.feature_matching` with `replace: true`, the paper's sec. 3.1 and code).

The authors' code weights L_unsupervised by 1/2 (loss_lab + 0.5 (...)): weight 2 here is their balance
(the whole loss then twice theirs, which Adam does not see), weight 1 the paper's equation.

D's own scalar output (its logit, with the label's projection where D is conditional) takes no part in
log Z; it joins the logit times 0, which keeps every parameter in DDP's graph and gives it no gradient.
So D's label input reaches nothing: the run's G may stay conditional (its labels random, read by no
loss). cGAN's D, which reads the label before its features, is refused.

Logged: `d_labelled_ce` and `d_labelled_accuracy` on the labelled batches (log points), and
`d_accuracy`, argmax_k l_k(x) against the label on the held-out set, at every evaluation (every rank
scores the whole set; BN and minibatch statistics over batches of eval.batch, D's state untouched).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..data.labelled import Examples, choose
from ..models.layers import frozen_state
from ..models.roles import DOutput
from .regularizer import DScores, Regularizer

log = logging.getLogger(__name__)


def log_z(out: DOutput) -> torch.Tensor:
    """logit D(x) = log Z(x) = logsumexp_k l_k(x), the generated class's logit fixed at 0; D's own
    output joins times 0 (in DDP's graph, without gradient)."""
    return torch.logsumexp(out.classes.float(), dim=1) + 0.0 * out.logits


def unsupervised_loss(real_classes: torch.Tensor, fake_classes: torch.Tensor) -> torch.Tensor:
    """L_unsupervised = E softplus(-log Z(x)) + E softplus(log Z(G(z))) (what nonsat computes on log Z)."""
    real, fake = torch.logsumexp(real_classes, dim=1), torch.logsumexp(fake_classes, dim=1)
    return F.softplus(-real).mean() + F.softplus(fake).mean()


class SemiSupervised(Regularizer):
    """D's logit log Z(x), and weight x CE on a labelled batch in every main D pass."""

    network, title = "d", "semi-supervised GAN"
    d_outputs = True
    replaces_d_logit = True

    def __init__(
        self, weight: float, labelled: Examples, held_out: Examples, D: torch.nn.Module | None,
        resolution: int, eval_batch: int, device: torch.device,
    ):  # fmt: skip
        self.weight, self.labelled, self.held_out, self.D = weight, labelled, held_out, D
        self.resolution, self.eval_batch, self.device = resolution, eval_batch, device
        self._pool: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (resolution, images, labels)
        self._sums = torch.zeros(2, device=device)  # CE and accuracy of the labelled batches since the log
        self._count = 0

    @classmethod
    def build(cls, section, networks):
        if section.weight <= 0:
            return None
        cfg = networks.cfg
        d = cfg.data
        labelled, held_out = choose(
            d.path, d.labelled_seed, d.labelled_per_class, d.labelled_fraction, section.held_out_images,
            section.held_out, d.retries,
        )  # fmt: skip
        counts = torch.bincount(torch.tensor(labelled.labels), minlength=networks.num_classes).tolist()
        log.info(
            "semi-supervised GAN: %d labelled examples of %s (per class %s), %d held out%s",
            len(labelled), d.path, counts, len(held_out), f" from {section.held_out}" if section.held_out else "",
        )  # fmt: skip
        return cls(section.weight, labelled, held_out, networks.D, cfg.model.resolution, cfg.eval.batch,
                   networks.device)  # fmt: skip

    @classmethod
    def check(cls, key, section, cfg):
        d = cfg.data
        if d.labelled_per_class < 0:
            raise ConfigError(f"data.labelled_per_class={d.labelled_per_class} must be >= 0")
        if not 0 <= d.labelled_fraction <= 1:
            raise ConfigError(f"data.labelled_fraction={d.labelled_fraction} is a fraction, from 0 to 1")
        chosen = [
            f"data.{k}={getattr(d, k)}" for k in ("labelled_per_class", "labelled_fraction") if getattr(d, k)
        ]
        if not section.weight:
            if chosen:
                raise ConfigError(
                    f"{chosen[0]} chooses the labelled subset of the semi-supervised GAN, which {key}.weight "
                    "turns on (0 now)"
                )
            return
        if len(chosen) != 1:
            raise ConfigError(
                f"{key}.weight={section.weight} trains D's classes on a labelled subset: set one of "
                f"data.labelled_per_class (e.g. 10) or data.labelled_fraction{' (both are set)' if chosen else ''}"
            )
        if not cfg.model.aux_classifier:
            raise ConfigError(
                f"{key}.weight={section.weight} reads D's class head as its K classes: set model.aux_classifier=true"
            )
        if cfg.regularize.aux_classifier.weight:
            raise ConfigError(
                f"{key}.weight={section.weight} and regularize.aux_classifier.weight="
                f"{cfg.regularize.aux_classifier.weight} read one class head two ways (AC-GAN puts fakes in "
                "the classes, the semi-supervised GAN in a class of their own): set one to 0"
            )
        if cfg.loss.name not in ("nonsat", "minimax"):
            raise ConfigError(
                f"{key}.weight={section.weight}: the unsupervised term is the logistic D loss on log Z(x); "
                f"set loss.name=nonsat (loss.name={cfg.loss.name} is another loss)"
            )
        if cfg.model.num_classes == 1:
            raise ConfigError(
                f"{key}.weight={section.weight} needs the dataset's classes; model.num_classes=1"
            )
        if cfg.model.name == "cgan":
            raise ConfigError(
                f"{key}.weight={section.weight}: model.name=cgan's D reads the label before its features, "
                "which a classifier of unlabelled images cannot; use another family"
            )

    def d_logits(self, out: DOutput) -> torch.Tensor:
        return log_z(out)

    # --- the labelled batches

    def _labelled_pool(self, resolution: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The labelled subset as uint8 at `resolution` on `device` (decoded again when a phase grows)."""
        if self._pool is None or self._pool[0] != resolution:
            images = self.labelled.decoded(resolution).to(device)
            self._pool = (resolution, images, torch.tensor(self.labelled.labels, device=device))
        return self._pool[1], self._pool[2]

    def extra_d_set(self, reals, real_labels, fakes, fake_labels, generator):
        self.resolution = reals.shape[-1]  # a growing model's phase: held-out images at the same size
        images, labels = self._labelled_pool(self.resolution, reals.device)
        pick = torch.randint(len(labels), (len(reals),), generator=generator, device=generator.device)
        pick = pick.to(reals.device)
        return images[pick].to(reals.dtype).div(127.5).sub(1.0), labels[pick]  # as the loader scales

    def d_penalty(self, real: DScores, fake: DScores, extra: DScores | None) -> torch.Tensor:
        ce = F.cross_entropy(extra.classes.float(), extra.labels)
        right = (extra.classes.detach().argmax(dim=1) == extra.labels).float().mean()
        self._sums += torch.stack([ce.detach(), right])
        self._count += 1
        return self.weight * ce

    def metrics(self) -> dict[str, float]:
        if not self._count:
            return {}
        ce, accuracy = (self._sums / self._count).tolist()
        self._sums.zero_()
        self._count = 0
        return {"d_labelled_ce": ce, "d_labelled_accuracy": accuracy}

    # --- D's accuracy on the held-out set

    def accuracy(self, resolution: int | None = None) -> float:
        """The fraction of the held-out set whose argmax_k l_k(x) is its label: D as it is, its state
        (SN vectors, BN statistics) untouched, batch statistics over batches of eval.batch."""
        resolution = resolution or self.resolution
        right = 0
        with torch.no_grad(), frozen_state(self.D, batchnorm=True):
            for start in range(0, len(self.held_out), self.eval_batch):
                x = self.held_out.decoded(resolution, start, start + self.eval_batch).to(self.device)
                x = x.float().div(127.5).sub(1.0)
                y = torch.tensor(self.held_out.labels[start : start + self.eval_batch], device=self.device)
                classes = self.D(x, torch.zeros_like(y), all_outputs=True).classes  # D's label: unused
                right += int((classes.argmax(dim=1) == y).sum())
        return right / len(self.held_out)

    def eval_metrics(self, resolution: int | None) -> dict[str, float]:
        return {"d_accuracy": self.accuracy(resolution)} if len(self.held_out) else {}
