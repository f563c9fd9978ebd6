"""InfoGAN (Chen et al. 2016, "InfoGAN: Interpretable Representation Learning by Information Maximizing
Generative Adversarial Nets"). G reads latent codes c beside the noise z (models/codes.py), and the game
gains a variational lower bound of the mutual information between c and G(z, c) (eqs. 5 and 6):

    L_I(G, Q) = E_{c ~ P(c), x ~ G(z, c)}[log Q(c | x)] + H(c)   <=   I(c; G(z, c))
    min_{G, Q} max_D  V(D, G) - lambda L_I(G, Q)

Q(c | x) is a head on D's penultimate features (section 6: Q shares all of D's layers but a final fully
connected one): a softmax per categorical code, so -log Q is the cross-entropy; a factored Gaussian for
the continuous codes, -log Q the Gaussian NLL, with its standard deviation fixed at 1 (openai/InfoGAN's
MNIST run, `Uniform(1, fix_std=True)`) or learned (`learn_std`). The terms sum over the codes, as the
reference's log-likelihood of the product distribution, and H(c) is a constant of the gradient.

Where Q trains: the paper's reference code (openai/InfoGAN's infogan_trainer.py) subtracts lambda L_I from
D's loss and from G's, with Q's layers among D's variables: Q and D's trunk learn in D's step from the
fakes of that step, G in its step through them. So here: a part on each network, D's adding
lambda_cat CE + lambda_cont NLL on the D step's fakes to D's loss, G's the same on its fakes to G's loss.
(StudioGAN trains Q with G's optimizer instead; here the Q head is part of D: D's optimizer, checkpoint,
distributed wrapper and FreezeD treat it as the rest of D, and the G step leaves D untouched.)

lambda per code type (section 6): 1 suffices for discrete codes; for continuous ones "a smaller lambda is
typically used", so that lambda L_I, which then holds a differential entropy, stays on the GAN
objective's scale; the reference's MNIST run takes 1 for both with the standard deviation fixed at 1.

The codes of each fake are read from G's latents as the slot drew them (the `g_kwargs` hook sees every
slot's z before its G pass). Logged, means over D's steps since the last log point, on D's view of the D
step's fakes: `info_ce_cat` (the categorical codes' CE), `info_mi_cat` = sum ln K - CE, the lower bound
of I(c_cat; G(z, c)) that rises toward H(c) = ln K (the paper's Figure 1), `info_acc_cat` (argmax Q ==
c), and for continuous codes `info_nll_cont` and `info_mi_cont` = n ln 2 - NLL (H of U(-1, 1) is ln 2; with
the standard deviation fixed at 1 the NLL is at least ln(2 pi)/2 and this bound stays below 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..models import FAMILIES
from ..models.codes import LatentCodes
from .regularizer import DScores, Regularizer


def latent_codes(cfg) -> LatentCodes | None:
    """The codes `regularize.info` declares, or None (InfoGAN off): what build_models widens G and D for."""
    return latent_codes_of(cfg.regularize.info)


def latent_codes_of(section) -> LatentCodes | None:
    """The codes a `regularize.info` section declares, or None."""
    if not section.categorical and not section.continuous:
        return None
    return LatentCodes(tuple(section.categorical), section.continuous, section.learn_std)


def categorical_ce(logits: list[torch.Tensor], indices: list[torch.Tensor]) -> torch.Tensor:
    """sum_i E[-log Q(c_i | x)]: each categorical code's mean cross-entropy, (B, K_i) logits against its
    (B,) indices, summed over the codes."""
    return torch.stack([F.cross_entropy(q.float(), c) for q, c in zip(logits, indices)]).sum()


def gaussian_nll(
    values: torch.Tensor, means: torch.Tensor, log_var: torch.Tensor | None = None
) -> torch.Tensor:
    """sum_j E[-log N(c_j; mu_j, sigma_j^2)] = sum_j E[ln(2 pi sigma_j^2) / 2 + (c_j - mu_j)^2 / (2 sigma_j^2)]
    over (B, n) codes: a sum over the codes, a mean over the batch; sigma 1 without `log_var`."""
    squared = (values.float() - means.float()).square()
    if log_var is None:
        per_code = 0.5 * math.log(2 * math.pi) + 0.5 * squared
    else:
        log_var = log_var.float()
        per_code = 0.5 * (math.log(2 * math.pi) + log_var) + 0.5 * squared * torch.exp(-log_var)
    return per_code.sum(dim=1).mean()


def categorical_entropy(codes: LatentCodes) -> float:
    """H of the categorical codes: sum ln K_i (each uniform)."""
    return sum(math.log(k) for k in codes.categorical)


def continuous_entropy(codes: LatentCodes) -> float:
    """H of the continuous codes: n ln 2 (each U(-1, 1))."""
    return codes.continuous * math.log(2.0)


class InfoGAN(Regularizer):
    """One part per network, part of every main step: lambda (CE + NLL) of Q on the fakes of the pass,
    added to D's loss (Q and D's trunk learn) and to G's (G learns to make its codes readable)."""

    d_outputs = True

    def __init__(
        self, network: str, codes: LatentCodes, lambda_cat: float, lambda_cont: float, accum: int = 1
    ):
        self.network, self.title = network, f"InfoGAN ({network.upper()})"
        self.codes, self.lambda_cat, self.lambda_cont, self.accum = codes, lambda_cat, lambda_cont, accum
        self.indices: list[torch.Tensor] = []  # the categorical codes of the last slot's fakes
        self.values: torch.Tensor | None = None  # and its continuous codes
        self._sums: torch.Tensor | None = None  # CE, NLL, accuracy summed over D's micro-batches
        self._count = 0

    @classmethod
    def build(cls, section, networks):
        codes = latent_codes_of(section)
        if codes is None:
            return None
        return [
            cls("d", codes, section.lambda_cat, section.lambda_cont),
            cls("g", codes, section.lambda_cat, section.lambda_cont, networks.accum),
        ]

    @classmethod
    def check(cls, key, section, cfg):
        for k in section.categorical:
            if k < 2:
                raise ConfigError(f"{key}.categorical has {k}: a categorical code takes K >= 2 values")
        if latent_codes_of(section) is None:
            return
        if not FAMILIES[cfg.model.name].latent_codes:
            takes = ", ".join(name for name, f in FAMILIES.items() if f.latent_codes)
            raise ConfigError(
                f"{key} adds latent codes to G's input and a Q head to D, which model.name={cfg.model.name} "
                f"does not build (the families that do: {takes})"
            )
        replay = cfg.regularize.replay
        if replay.size and replay.prob:
            raise ConfigError(
                f"{key}: regularize.replay.size={replay.size} swaps D's fakes for past ones whose codes are not "
                "kept, and Q learns each fake's code in D's step: turn one of them off"
            )

    def g_kwargs(self, kwargs, z, draw_seed, generator):
        self.indices, self.values = self.codes.split(z.detach())

    def _terms(self, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(CE of the categorical codes, NLL of the continuous, accuracy of argmax Q) of Q's outputs on
        the last slot's fakes."""
        logits, means, log_var = self.codes.split_q(q.float())
        zero = torch.zeros((), device=q.device)
        ce = categorical_ce(logits, self.indices) if logits else zero
        nll = gaussian_nll(self.values, means, log_var) if self.codes.continuous else zero
        hits = [(lg.detach().argmax(dim=1) == c).float().mean() for lg, c in zip(logits, self.indices)]
        accuracy = torch.stack(hits).mean() if hits else zero
        return ce, nll, accuracy

    def _penalty(self, ce: torch.Tensor, nll: torch.Tensor) -> torch.Tensor:
        return self.lambda_cat * ce + self.lambda_cont * nll

    def d_penalty(self, real: DScores, fake: DScores, extra: DScores | None) -> torch.Tensor:
        ce, nll, accuracy = self._terms(fake.codes)
        figures = torch.stack([ce.detach(), nll.detach(), accuracy])
        self._sums = figures if self._sums is None else self._sums + figures
        self._count += 1
        return self._penalty(ce, nll)

    def g_penalty(self, fake: DScores, real: DScores | None, last_micro_batch: bool) -> torch.Tensor:
        ce, nll, _ = self._terms(fake.codes)
        # A mean over the micro-batch: divided by the accumulation here (the trainer divides D's loss,
        # not G's penalties).
        return self._penalty(ce, nll) / self.accum

    def metrics(self) -> dict[str, float]:
        if self._sums is None:
            return {}
        ce, nll, accuracy = (self._sums / self._count).tolist()
        self._sums, self._count = None, 0
        figures = {}
        if self.codes.categorical:
            figures.update(
                info_ce_cat=ce, info_mi_cat=categorical_entropy(self.codes) - ce, info_acc_cat=accuracy
            )
        if self.codes.continuous:
            figures.update(info_nll_cont=nll, info_mi_cont=continuous_entropy(self.codes) - nll)
        return figures
