"""The GAN objective as parts: an adversarial loss plus regularizers, built from the config.

Each regularizer lives in its own file beside its paper's equation and plugs into the trainer through
the hooks of `Regularizer`; `REGULARIZERS` maps its config section (`regularize.<name>`) to its class,
whose `build` returns None while the section leaves it off. Adding one is a class, an entry here and
its config keys (a dataclass in `bigtrain/config.py`). The adversarial loss may hold state across
steps (BEGAN's k_t: adversarial.LossState), which the objective's hooks, metrics and checkpoint state
carry as they carry the regularizers'.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..config import Config, ConfigError
from .adversarial import ADVERSARIAL_LOSSES, ENERGY_LOSSES, SMOOTHABLE, AdversarialLoss, build_loss
from .aux_classifier import AuxClassifier
from .consensus import Consensus
from .consistency import Consistency
from .energy import ENERGY_MODELS
from .feature_matching import FeatureMatching
from .gradient_penalty import GradientPenalty
from .historical_average import HistoricalAverage
from .infogan import InfoGAN, latent_codes
from .lecam import LeCam
from .mode_regularized import ModeRegularized
from .orthogonal import Orthogonal
from .path_length import PathLength
from .pull_away import PullAway
from .r1 import R1
from .regularizer import DScores, Networks, PassTools, Regularizer
from .replay import Replay
from .semi_supervised import SemiSupervised
from .style_mixing import StyleMixing
from .unrolled import Unrolled
from .views import DView, GInputs, split_scores
from .weight_clip import WeightClip
from .zcr import LatentConsistency

__all__ = [
    "Objective", "PassTools", "Regularizer", "DScores", "DView", "GInputs", "split_scores", "build_objective",
    "check_config", "latent_codes",
]  # fmt: skip


# regularize.<name> -> its class; the order is the order of the hooks' calls.
REGULARIZERS: dict[str, type[Regularizer]] = {
    "ortho": Orthogonal,
    "gradient_penalty": GradientPenalty,
    "r1": R1,
    "path_length": PathLength,
    "style_mixing": StyleMixing,
    "lecam": LeCam,
    "consistency": Consistency,
    "weight_clip": WeightClip,
    "historical_averaging": HistoricalAverage,
    "unrolled": Unrolled,
    "zcr": LatentConsistency,
    "feature_matching": FeatureMatching,
    "aux_classifier": AuxClassifier,
    "pull_away": PullAway,
    "replay": Replay,
    "mode_regularized": ModeRegularized,
    "consensus": Consensus,
    "info": InfoGAN,
    "semi_supervised": SemiSupervised,
}


class Objective:
    """The adversarial loss and the regularizers that are on, in `REGULARIZERS` order."""

    def __init__(self, loss: AdversarialLoss, regularizers: list[Regularizer]):
        self.loss, self.regularizers = loss, regularizers
        for network in ("g", "d"):
            lazy = self.lazy(network)
            if len(lazy) > 1:  # one regularization phase per network, as stylegan2-ada's
                raise ConfigError(f"{' and '.join(r.title for r in lazy)} are both lazy on {network.upper()}")

    def on(self, network: str) -> list[Regularizer]:
        return [r for r in self.regularizers if r.network == network]

    def lazy(self, network: str) -> list[Regularizer]:
        return [r for r in self.on(network) if r.lazy]

    def lazy_ratio(self, network: str, interval: int = 0) -> float:
        """A lazy step every k steps makes the optimizer's effective batch k / (k + 1) of the main steps':
        lr and betas are scaled to match (StyleGAN2 appendix B). `interval` (optim.<network>_reg_interval):
        k where no lazy regularizer of the network is on, as stylegan2-ada scales its optimizers by
        G_reg_interval / D_reg_interval whether or not the penalty is on (0: no scaling there)."""
        lazy = self.lazy(network)
        if lazy and interval and interval != lazy[0].interval:
            raise ConfigError(
                f"optim.{network}_reg_interval={interval} but the lazy {lazy[0].title} of {network.upper()} "
                f"steps every {lazy[0].interval}; leave optim.{network}_reg_interval at 0 (it follows the regularizer)"
            )
        k = lazy[0].interval if lazy else interval
        return k / (k + 1) if k else 1.0

    @property
    def d_double_backward(self) -> bool:
        """D's main pass differentiates a gradient (the eager D is used)."""
        return any(r.double_backward and not r.lazy for r in self.on("d"))

    def d_outputs(self, network: str) -> bool:
        """The main pass of `network`'s step asks D for its declared features and class logits."""
        return any(r.d_outputs and not r.lazy for r in self.on(network))

    @property
    def needs_reals(self) -> bool:
        """The G step scores the D step's reals (a relativistic loss, feature matching)."""
        return self.loss.needs_reals or any(r.needs_reals and not r.lazy for r in self.on("g"))

    @property
    def d_logits(self):
        """DOutput -> D's adversarial logits, from the part that reads them from D's declared outputs (the
        semi-supervised GAN's log Z(x)), or None: D's own logit. DView applies it to every pass."""
        parts = [r for r in self.regularizers if r.replaces_d_logit]
        return parts[0].d_logits if parts else None

    @property
    def adversarial_g(self) -> bool:
        """G trains on the adversarial loss (unless a regularizer's term replaces it)."""
        return not any(r.replaces_g_loss and not r.lazy for r in self.on("g"))

    def d_fakes(self, fakes, labels, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The fakes (and labels) D's main pass scores for G's fresh ones of a micro-batch: as each D
        regularizer of the main pass passes them on (experience replay), else G's own."""
        for r in self.on("d"):
            if not r.lazy:
                fakes, labels = r.d_fakes(fakes, labels, generator)
        return fakes, labels

    def extra_d_sets(
        self, reals, real_labels, fakes, fake_labels, generator
    ) -> list[tuple[Regularizer, tuple]]:
        """The sets regularizers add to D's main pass, after the reals and fakes."""
        extra = (
            (r, r.extra_d_set(reals, real_labels, fakes, fake_labels, generator))
            for r in self.on("d")
            if not r.lazy
        )
        return [(r, images_labels) for r, images_labels in extra if images_labels is not None]

    def d_loss(self, real: DScores, fake: DScores, extra: list[tuple[Regularizer, DScores]]) -> torch.Tensor:
        """The adversarial D loss plus the main-pass penalties on D; `extra`: the sets the regularizers
        added (`extra_d_sets`), as D scored them."""
        loss = self.loss.d(real.logits, fake.logits)
        self.loss.state.observe(real.logits, fake.logits)
        added = dict(extra)
        for r in self.on("d"):
            if not r.lazy:
                penalty = r.d_penalty(real, fake, added.get(r))
                if penalty is not None:
                    loss = loss + penalty
        return loss

    def d_params_for_g(self, d_view: DView, reals: tuple, fakes: tuple) -> dict[str, torch.Tensor] | None:
        """D's parameters for G's loss of this micro-batch (unrolled GAN), or None: D's own."""

        def score(images, labels, parts, params):
            return d_view(images, labels, parts, train=False, params=params)

        for r in self.on("g"):
            params = None if r.lazy else r.d_params_for_g(score, self.loss.d, reals, fakes)
            if params is not None:
                return params
        return None

    def g_penalties(
        self,
        fake: DScores,
        real: DScores | None,
        last_micro_batch: bool,
        tools: PassTools | None = None,
        reals: tuple | None = None,
    ) -> list[torch.Tensor]:
        """The main-pass penalties on G (added to the scaled G loss); with `tools` and the D step's
        matching `reals`, also those of the regularizers that make passes of their own (g_pass_penalty)."""
        on = [r for r in self.on("g") if not r.lazy]
        penalties = [r.g_penalty(fake, real, last_micro_batch) for r in on]
        if tools is not None:
            penalties += [r.g_pass_penalty(tools, reals, last_micro_batch) for r in on]
        return [p for p in penalties if p is not None]

    def side_passes(
        self, network: str, tools: PassTools, reals: tuple, g_inputs: tuple, last_micro_batch: bool
    ) -> torch.Tensor | None:
        """The side passes of `network`'s main-step regularizers on one micro-batch, after its backward
        (consensus optimization); on the last micro-batch, the sum of their figures for the non-finite
        guard (None: no side pass)."""
        parts = [r for r in self.on(network) if not r.lazy]
        figures = [r.side_pass(tools, self.loss, reals, g_inputs, last_micro_batch) for r in parts]
        figures = [f for f in figures if f is not None]
        return torch.stack(figures).sum() if figures else None

    def after_backward(self, network: str) -> None:
        if network == "d":
            self.loss.state.after_d_backward()
        for r in self.on(network):
            if not r.lazy:
                r.after_backward()

    def after_step(self, network: str) -> None:
        """After `network`'s main optimizer step; not after a step the non-finite guard skipped."""
        if network == "d":
            self.loss.state.after_d_step()
        for r in self.on(network):
            if not r.lazy:
                r.after_step()

    def metrics(self) -> dict[str, float]:
        """The objective's figures for the trainer's log point: the loss's (BEGAN's k_t and convergence
        measure) and the regularizers'."""
        figures = self.loss.state.metrics()
        for r in self.regularizers:
            figures.update(r.metrics())
        return figures

    def eval_metrics(self, resolution: int | None = None) -> dict[str, float]:
        """The regularizers' figures of the networks at an evaluation (see Regularizer.eval_metrics)."""
        figures: dict[str, float] = {}
        for r in self.regularizers:
            figures.update(r.eval_metrics(resolution))
        return figures

    def state_dict(self) -> dict:
        regularizers = {k: v for r in self.regularizers for k, v in r.state_dict().items()}
        return {**self.loss.state.state_dict(), **regularizers}

    def load_state_dict(self, state: dict) -> None:
        self.loss.state.load_state_dict(state)
        for r in self.regularizers:
            r.load_state_dict(state)


def build_objective(
    cfg: Config,
    G: nn.Module,
    grad_hooks: bool,
    device: torch.device,
    all_mean=lambda t: t,
    D: nn.Module | None = None,
    num_classes: int | None = None,
    rank: int = 0,
    gather=lambda t: t,
) -> Objective:
    """`num_classes`: the run's (the dataset's when model.num_classes is 0); None: model.num_classes.
    `rank` and `gather` (Collectives.gather_rows): for per-rank checkpoint state (Networks)."""
    classes = cfg.model.num_classes if num_classes is None else num_classes
    networks = Networks(
        G, D, grad_hooks, device, all_mean, classes, cfg.train.accum,
        z_dim=cfg.model.z_dim, resolution=cfg.model.resolution, rank=rank, gather=gather, cfg=cfg,
    )  # fmt: skip
    regularizers = []
    for name, cls in REGULARIZERS.items():
        built = cls.build(getattr(cfg.regularize, name), networks)  # None, one, or one per network
        regularizers += built if isinstance(built, list) else [built] if built is not None else []
    return Objective(build_loss(cfg.loss, device, all_mean), regularizers)


def check_config(cfg: Config) -> None:
    """The objective's checks, naming the dotted key (called by `bigtrain.config.validate`): weights,
    rates and probabilities >= 0, intervals >= 1, then each regularizer's own."""
    loss = cfg.loss
    if loss.name not in ADVERSARIAL_LOSSES:
        raise ConfigError(f"loss.name={loss.name!r} is not one of {', '.join(ADVERSARIAL_LOSSES)}")
    if not 0 < loss.real_label <= 1:
        raise ConfigError(f"loss.real_label={loss.real_label} must be in (0, 1]")
    if loss.real_label != 1 and loss.name not in SMOOTHABLE:
        raise ConfigError(
            f"loss.real_label={loss.real_label} smooths a target that loss.name={loss.name} does not have; "
            f"it applies to {', '.join(SMOOTHABLE)} (LSGAN's real target is loss.lsgan_b)"
        )
    if loss.divergence != "gan" and loss.name != "fgan":
        raise ConfigError(
            f"loss.divergence={loss.divergence} is f-GAN's: it applies to loss.name=fgan, "
            f"not loss.name={loss.name}"
        )
    _check_energy(cfg)
    for name, cls in REGULARIZERS.items():
        key, section = f"regularize.{name}", getattr(cfg.regularize, name)
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if isinstance(value, bool):
                continue  # a switch (bool is an int to Python)
            least = f.metadata.get("min", 1)  # a count that may be 0 (off) says so in its field
            if isinstance(value, int) and value < least:
                raise ConfigError(f"{key}.{f.name}={value} must be >= {least}")
            if isinstance(value, float) and not value >= 0:  # NaN too
                raise ConfigError(f"{key}.{f.name}={value} must be >= 0")
        cls.check(key, section, cfg)


def _check_energy(cfg: Config) -> None:
    """The energy-based losses and the auto-encoder Ds go together, with their values in range."""
    loss, energy_model = cfg.loss, cfg.model.name in ENERGY_MODELS
    if (loss.name in ENERGY_LOSSES) != energy_model:
        which = (
            f"model.name={cfg.model.name}'s D scores an image by its reconstruction error, an energy (low on "
            f"reals), which loss.name={loss.name} would read as a logit"
            if energy_model
            else f"loss.name={loss.name} reads D's output as an energy (low on reals), which model.name="
            f"{cfg.model.name}'s D does not output"
        )
        raise ConfigError(
            f"{which}: the energy-based losses ({', '.join(ENERGY_LOSSES)}) go with the auto-encoder Ds "
            f"(model.name {' or '.join(ENERGY_MODELS)})"
        )
    if not loss.ebgan_margin > 0:
        raise ConfigError(f"loss.ebgan_margin={loss.ebgan_margin} must be > 0 (EBGAN's margin m)")
    if not 0 < loss.began_gamma <= 1:
        raise ConfigError(f"loss.began_gamma={loss.began_gamma} must be in (0, 1] (BEGAN's diversity ratio)")
    if not loss.began_lambda_k >= 0:
        raise ConfigError(f"loss.began_lambda_k={loss.began_lambda_k} must be >= 0 (k_t's gain)")
    if not 0 <= loss.began_k0 <= 1:
        raise ConfigError(f"loss.began_k0={loss.began_k0} must be in [0, 1] (k_t's start)")
    if loss.name in ENERGY_LOSSES and cfg.augment.ada and cfg.augment.ada_target > 0:
        raise ConfigError(
            f"augment.ada_target={cfg.augment.ada_target} tunes ADA's p by the sign of D's output on reals, "
            f"which loss.name={loss.name}'s energies (>= 0) do not carry: set augment.ada_target=0 (p fixed "
            "at augment.ada_p)"
        )
