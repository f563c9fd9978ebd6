"""What a regularizer is to the trainer: the network it acts on, when it runs, its hooks and its state.

A regularizer either joins every main optimizer step of its network (`interval` 0: its penalty is added
to the adversarial loss of the same pass, or its gradient after the backward), or is lazy (StyleGAN2
appendix B): its own optimizer step every `interval` steps, on its own pass, its penalty weighted by the
interval. The trainer calls the hooks; it never names a regularizer.

The main passes' penalty hooks see D's view of each set of images as `DScores`: the logits, and D's
declared features and class logits where a regularizer asks for them (`d_outputs`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class DScores:
    """D's view of one set of a main pass (reals, fakes, or a set a regularizer added): the images and
    labels D was given and what it declared of them. `features` (B, F) and `classes` (B, C) are D's
    penultimate features and auxiliary class logits (see models.roles.DOutput), present where a
    regularizer on the pass has `d_outputs` (`classes` also needs D's class head, `codes` InfoGAN's Q
    head); else None."""

    images: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    features: torch.Tensor | None = None
    classes: torch.Tensor | None = None
    codes: torch.Tensor | None = None


@dataclass
class PassTools:
    """What a regularizer may call during a pass, bound by the trainer to the current step."""

    # (images, labels, parts=1, double_backward=False, all_outputs=False) -> D's logits (or its DOutput)
    d: Callable[..., Any]
    g: Callable[..., torch.Tensor]  # the eager G (a pass that differentiates a gradient): (z, y, **kw)
    g_inputs: Callable[..., tuple]  # (batch) -> (z, labels, G's keyword arguments) of a new slot
    generator: torch.Generator  # the slot's random stream (draws follow the slot seed)
    all_mean: Callable[[torch.Tensor], torch.Tensor]  # the mean over ranks (identity on one)
    micro_batch: int


@dataclass(frozen=True)
class Networks:
    """What a regularizer may need to know of the run when it is built."""

    G: nn.Module
    D: nn.Module | None  # the bare D module (its parameters as the optimizer updates them)
    grad_hooks: bool  # the backend leaves p.grad whole after backward (closed-form gradients)
    device: torch.device
    all_mean: Callable[[torch.Tensor], torch.Tensor] = lambda t: t  # the mean over ranks (one process: t)
    num_classes: int = 0  # the run's classes (the dataset's, or model.num_classes); <= 1: unconditional
    accum: int = 1  # train.accum: micro-batches per optimizer step
    z_dim: int = 0  # model.z_dim: G's latent size
    resolution: int = 0  # model.resolution: the side of G's images (a growing G's last phase)
    rank: int = 0  # this process's rank: the row of per-rank checkpoint state it loads
    # every rank's rows concatenated in rank order, on the CPU (Collectives.gather_rows; a collective,
    # for per-rank checkpoint state in state_dict; one process: the rows as they are)
    gather: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
    cfg: Any = None  # the run's Config, for a part that reads other sections (the semi-supervised GAN's data)


class Regularizer:
    """Base class: every hook does nothing. Subclasses set `network`, `title` and, for a lazy one, the
    interval; `enabled` is False for a regularizer whose config leaves it off."""

    network: str = "d"  # "g" or "d": the optimizer its gradient goes to
    title: str = ""  # for messages ("R1", "path length")
    interval: int = 0  # 0: part of every main step; k: a lazy step of its own every k steps
    double_backward: bool = False  # its main-pass penalty differentiates a gradient (no compiled D)
    d_outputs: bool = False  # its penalties read D's features or class logits (DScores.features, .classes)
    needs_reals: bool = False  # its G penalty reads D's view of the D step's reals (g_penalty's `real`)
    replaces_g_loss: bool = False  # its G penalty replaces the adversarial G loss (which is then not trained)
    replaces_d_logit: bool = False  # `d_logits` gives D's adversarial logit from D's declared outputs

    @classmethod
    def build(cls, section: Any, networks: Networks) -> Regularizer | list[Regularizer] | None:
        """From its config section (`regularize.<name>`): None while the section leaves it off; a list
        where the section turns it on for several networks."""
        raise NotImplementedError

    @classmethod
    def check(cls, key: str, section: Any, cfg: Any) -> None:
        """Checks beyond the generic ones (weights >= 0, intervals >= 1), raising ConfigError naming
        `key` (its section's dotted key)."""

    @property
    def lazy(self) -> bool:
        return self.interval > 0

    def due(self, step: int) -> bool:
        """A lazy regularizer's own step follows main step `step` of its network (0, k, 2k, ...)."""
        return self.lazy and step % self.interval == 0

    # --- hooks of the main passes
    def g_kwargs(self, kwargs: dict, z: torch.Tensor, draw_seed: int, generator: torch.Generator) -> None:
        """Before a G pass: edit G's keyword arguments (style mixing). `draw_seed` seeds host-side draws."""

    def d_fakes(
        self, fakes: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Before D's main pass on a micro-batch, and before `extra_d_set`: the fakes (and their labels)
        D scores instead of G's fresh ones, in the same number (experience replay). `generator`: the
        slot's random stream. The fakes come without gradient; the default passes them on as they are."""
        return fakes, labels

    def extra_d_set(
        self,
        reals: torch.Tensor,
        real_labels: torch.Tensor,
        fakes: torch.Tensor,
        fake_labels: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Before D's main pass: one more set of (images, labels) for D to score beside reals and fakes;
        its size a multiple of the micro-batch (each micro-batch-sized part keeps its own minibatch
        statistics in D)."""
        return None

    def d_penalty(self, real: DScores, fake: DScores, extra: DScores | None) -> torch.Tensor | None:
        """Added to D's loss of a micro-batch in its main pass, which the trainer divides by the
        accumulation; `extra`: the set this regularizer added (`extra_d_set`), else None."""
        return None

    def d_params_for_g(
        self,
        score: Callable[..., torch.Tensor],
        d_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        reals: tuple[torch.Tensor, torch.Tensor],
        fakes: tuple[torch.Tensor, torch.Tensor],
    ) -> dict[str, torch.Tensor] | None:
        """Before G's loss in its main pass: D's parameters for G's loss to use instead of D's own
        (unrolled GAN), or None. `score(images, labels, parts, params)`: D's logits as D sees the images,
        with the given parameters; `d_loss`: the adversarial D loss; reals and fakes: (images, labels) of
        the micro-batch."""
        return None

    def g_penalty(self, fake: DScores, real: DScores | None, last_micro_batch: bool) -> torch.Tensor | None:
        """Added to G's loss of a micro-batch in its main pass as it is: unlike D's, G's penalties are not
        divided by the accumulation (a penalty of the whole step comes once, on the last micro-batch; a
        mean over the micro-batch divides by `Networks.accum` itself). `fake`: D's view of this
        micro-batch's fakes (frozen D, gradients to G); `real`: of the D step's matching reals, without
        gradient, where a regularizer or the loss `needs_reals`, else None."""
        return None

    def g_pass_penalty(
        self, tools: PassTools, reals: tuple[torch.Tensor, torch.Tensor], last_micro_batch: bool
    ) -> torch.Tensor | None:
        """Added to G's loss of a micro-batch in its main pass beside `g_penalty`, for a penalty that makes
        G and D passes of its own (MRGAN's G(E(x)) as D sees it): `tools.g` is the trained G (its
        gradients reach G's optimizer and whatever fed its input), `tools.d(images, labels, train=False)`
        D's view as in G's step (frozen D; gradients pass through to the images). `reals`: the D step's
        matching micro-batch (images, labels). Not divided by the accumulation (as `g_penalty`)."""
        return None

    def side_pass(
        self,
        tools: PassTools,
        loss: Any,
        reals: tuple[torch.Tensor, torch.Tensor],
        g_inputs: tuple[torch.Tensor, torch.Tensor, dict],
        last_micro_batch: bool,
    ) -> torch.Tensor | None:
        """After the backward of each micro-batch of its network's main pass: a pass of its own on that
        micro-batch, for a term that is not a penalty's gradient in this network's loss (consensus
        optimization's differentiates both networks' losses), whose result it adds to the gradients
        itself in `after_backward` (the mean over ranks: `Networks.all_mean`). `loss`: the adversarial
        loss (`AdversarialLoss`); `reals`: the micro-batch's (the D step's; in G's, the last D step's
        reals of the same micro-batch); `g_inputs`: (z, labels, G's keyword arguments) of the main pass.
        Returns None, or on the last micro-batch a figure of what it adds, which the non-finite guard
        checks beside the loss."""
        return None

    def after_backward(self) -> None:
        """After the main pass's backward of its network, before the optimizer step."""

    def after_step(self) -> None:
        """After its network's main optimizer step (weight clipping, historical averaging); not after a
        step the non-finite guard skipped."""

    # --- a lazy regularizer's own pass
    def lazy_penalty(
        self, tools: PassTools, reals: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(penalty, zero term): the trainer weights the penalty by the interval and backpropagates it
        plus the zero term, which keeps every parameter in the graph (DDP's reducer needs them all)."""
        raise NotImplementedError

    def d_logits(self, out: Any) -> torch.Tensor:
        """Where `replaces_d_logit`: D's adversarial logits (B,) of a set from its DOutput (logits,
        features, class logits), in place of D's own logit wherever the objective reads D (DView): the
        semi-supervised GAN's log-sum-exp of its K class logits. D is then always asked for its outputs."""
        raise NotImplementedError

    def metrics(self) -> dict[str, float]:
        """Figures for the trainer's log point (a host sync here is fine: it runs once per log)."""
        return {}

    def eval_metrics(self, resolution: int | None) -> dict[str, float]:
        """Figures of the networks at each recorded evaluation (eval.every_kimg), logged beside
        eval.metrics' (the semi-supervised D's held-out accuracy); every rank calls it. `resolution`: the
        side a growing model's phase works at (None: model.resolution)."""
        return {}

    # --- checkpoint state (top-level checkpoint keys)
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
