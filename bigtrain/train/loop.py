"""The training loop: `n_disc_steps` D steps then one G step (each over `accum` micro-batches),
TTUR learning rates, orthogonal regularization of G, EMA of G. Schedules, evaluation, checkpoints and
tracking are called from `run`, not inlined in the step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..augment import diff_augment, parse_policy
from ..config import Config, ConfigError, to_dict, validate
from ..data import make_loader
from ..dist import make_backend, pick_device
from ..eval.plots import plot_lines
from ..eval.sampling import (
    is_style_based,
    random_labels,
    save_grid,
    truncated_normal,
    truncation_kwargs,
    z_truncation,
)
from ..eval.suite import MetricSuite
from ..losses import (
    LOSSES,
    add_orthogonal_grad_,
    ortho_parameters,
    orthogonal_penalty,
    path_lengths,
    r1_penalty,
    wgan_gp_terms,
)
from ..models import build_models
from ..models.layers import frozen_state
from ..seeds import seed_for
from ..track import make_tracker
from .checkpoint import (
    CheckpointError,
    begin_checkpoint,
    fetch_from_store,
    intact_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    staging_dir,
    upload_checkpoint,
)
from .ema import EMA, ema_beta, refresh_batchnorm_stats
from .phases import PhaseSchedule, PhaseState

log = logging.getLogger(__name__)

EVAL_SEED = 123_456  # fixed latents for every evaluation and grid, independent of training RNG


__all__ = ["NonFiniteLoss", "Trainer", "pick_device"]


class NonFiniteLoss(RuntimeError):
    """Training stopped after too many consecutive non-finite losses."""


class GracefulStop:
    """Turns SIGTERM (preemption, Kubernetes eviction) into a flag the loop checks between steps."""

    def __init__(self):
        self.requested = False

    def __enter__(self) -> GracefulStop:
        # Only the main thread may install handlers; elsewhere (a trial thread) the host owns signals.
        self._installed = threading.current_thread() is threading.main_thread()
        if self._installed:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False, loader=None, recipe: str = ""):
        """`loader` replaces the shard loader (benchmarks feed random data); it needs `manifest`,
        `__next__`, `state_dict`, `load_state_dict` and `skipped_corrupt` like ShardLoader.
        `recipe`: the recipe's name (its file name), for the MLflow run name."""
        self.backend = backend = make_backend(cfg)
        self.rank, self.world_size, self.device = backend.rank, backend.world_size, backend.device
        validate(cfg, world_size=self.world_size)
        t = cfg.train
        self.cfg = cfg
        on_cuda = self.device.type == "cuda"
        self.amp_dtype = (
            torch.bfloat16 if t.precision == "bf16" or (t.precision == "auto" and on_cuda) else None
        )
        self.channels_last = t.channels_last == "on" or (t.channels_last == "auto" and on_cuda)
        self.run_dir = Path(t.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # Progressive growing: the phase at the current kimg sets resolution, fade-in, batch and lr.
        self.schedule = PhaseSchedule(t.phases) if t.phases else None
        self.phase: PhaseState | None = None
        self.batch = self.schedule.at(0.0).batch if self.schedule else t.batch  # global images per step
        self.micro_batch = self.batch // (self.world_size * t.accum)

        self.loader = loader or make_loader(cfg, self.micro_batch, self.device, self.rank, self.world_size)
        manifest = self.loader.manifest
        self.num_classes = cfg.model.num_classes or max(manifest.num_classes, 1)
        if manifest.num_classes and self.num_classes != manifest.num_classes:
            raise ConfigError(
                f"model.num_classes={self.num_classes} but {cfg.data.path} has {manifest.num_classes} classes"
            )
        self.dataset_name = manifest.name

        torch.manual_seed(t.seed)  # identical initial weights on every rank
        G, D = build_models(cfg.model, self.num_classes)
        G = backend.convert(G)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.G = G.to(self.device, memory_format=memory_format).train()
        self.D = D.to(self.device, memory_format=memory_format).train()
        self.ema = EMA(self.G)
        # Fused Adam (CUDA and CPU): one kernel per step, and its step count never leaves the device.
        fused = cfg.optim.fused or None
        # Lazy regularization (StyleGAN2 appendix B): a regularizer every k steps makes the optimizer's
        # effective batch k / (k + 1) of the plain steps': lr and betas are scaled to match.
        loss = cfg.loss
        self.lazy_ratio = {
            "g": loss.pl_interval / (loss.pl_interval + 1) if loss.pl_weight > 0 else 1.0,
            "d": loss.r1_interval / (loss.r1_interval + 1) if loss.r1_gamma > 0 else 1.0,
        }
        self.opt_g, self.opt_d = (
            torch.optim.Adam(
                net.parameters(), lr * self.lazy_ratio[which],
                (cfg.optim.beta1 ** self.lazy_ratio[which], cfg.optim.beta2 ** self.lazy_ratio[which]),
                cfg.optim.eps, fused=fused,
            )
            for which, net, lr in (("g", self.G, cfg.optim.lr_g), ("d", self.D, cfg.optim.lr_d))
        )  # fmt: skip
        backend.wrap(self.G, self.D, self.opt_g, self.opt_d)
        # Passes whose loss takes a gradient of a gradient (R1, WGAN-GP, path length) call the eager
        # modules: AOTAutograd, which torch.compile trains through, has no double backward.
        self.g_train_eager, self.d_train_eager = backend.g_train, backend.d_train
        self.g_train = torch.compile(backend.g_train) if t.compile else backend.g_train
        self.d_train = torch.compile(backend.d_train) if t.compile else backend.d_train
        self.d_loss, self.g_loss = LOSSES[cfg.loss.name]
        self.ortho_params = ortho_parameters(self.G) if cfg.loss.ortho_strength > 0 else []
        # Latents of micro-batch slot k come from a generator seeded by (seed, k), and rank r of W fills
        # slots r, r + W, ...: one process with accum A x W runs the same computation as W processes
        # with accum A, and a resumed run only needs the slot counter.
        self.noise = torch.Generator(self.device)
        self.latent_draws = 0
        # StyleGAN2: per-pixel noise, style mixing, augmentation and the path-length running mean.
        self.style_based = is_style_based(self.G)
        self.augment = parse_policy(cfg.data.diffaugment)
        self.pl_mean = torch.zeros([], device=self.device)

        self.images = 0  # real images shown to D, all ranks together: the kimg counter
        self.iteration = 0
        self._sums = torch.zeros(4, device=self.device)  # loss_d, loss_g, D(real), D(fake) since last log
        self._sum_steps = 0
        self.last_metrics: dict[str, float] = {}
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite loss
        self._bad_in_a_row = {"d": 0, "g": 0}  # consecutive skipped steps per network
        self.stop = GracefulStop()
        self._stop_agreed = False
        self.metrics = MetricSuite(
            cfg.eval.metrics,
            cfg.data.path,
            manifest,
            self.device,
            cfg.eval.num_samples,
            cfg.eval.reference_images,
        )
        self.metric_history: list[dict[str, float]] = []  # one entry per evaluation, with its kimg
        self.best: dict[str, float] = {}  # {"value", "kimg"} of the best first metric so far
        # Called on every rank after each recorded evaluation with its metrics (sweeps report from here).
        self.on_evaluate: list = []
        if resume:
            if t.checkpoint_store:
                if int(os.environ.get("LOCAL_RANK", 0)) == 0:  # one download per node
                    fetched = fetch_from_store(t.checkpoint_store, self.run_dir)
                    if fetched:
                        log.info("fetched %s from %s", ", ".join(fetched), t.checkpoint_store)
                self.backend.barrier()
            ckpt, passed_over = intact_checkpoint(self.run_dir)
            for bad, problem in passed_over:
                log.warning("checkpoint %s is damaged (%s); passing over it", bad, problem)
            if ckpt is None and passed_over:
                raise CheckpointError(
                    f"no intact checkpoint in {self.run_dir}: "
                    + "; ".join(f"{bad.name}: {problem}" for bad, problem in passed_over)
                )
            if ckpt is None:
                log.info("no checkpoint in %s: starting a new run", self.run_dir)
            else:
                if passed_over:
                    log.warning("resuming from %s instead of %s", ckpt, passed_over[0][0])
                self.load_state_dict(load_checkpoint(ckpt))
                self.backend.load_engine_state(ckpt)
                log.info("resumed from %s at %.3f kimg", ckpt, self.kimg)
        if self.schedule:
            self._enter_phase()
        model = f"{cfg.model.name}{cfg.model.resolution}"
        run_name = cfg.track.run_name or f"{recipe or model}-{self.dataset_name}" + (
            f"-{model}" if recipe else ""
        )
        self.tracker = make_tracker(cfg, self.run_dir, self.rank, run_name)

    # ------------------------------------------------------------------ the step

    @property
    def kimg(self) -> float:
        return self.images / 1000.0

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _latents(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        slot = self.latent_draws * self.world_size + self.rank
        self.latent_draws += 1
        self.noise.manual_seed(seed_for(self.cfg.train.seed, slot))
        z = torch.randn(n, self.cfg.model.z_dim, device=self.device, generator=self.noise)
        return z, random_labels(n, self.num_classes, self.noise, self.device)

    def _real(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = next(self.loader)
        return (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), y

    def train_step(self) -> None:
        """One iteration: n_disc_steps D steps, then one G step, then the EMA update. Lazy
        regularization is its own optimizer step, as in stylegan2-ada's phases: an R1 step after every
        r1_interval-th D step, a path-length step after every pl_interval-th G step.

        A network's state (SN power iterations, BN statistics) advances only in its own step, once per
        step whatever the accumulation: the D step does not touch G, nor the G step D."""
        t, loss = self.cfg.train, self.cfg.loss
        if self.schedule:
            self._enter_phase()
        for k in range(t.n_disc_steps):
            loss_d, real_logits, fake_logits, reals = self._d_step()
            d_step = self.iteration * t.n_disc_steps + k
            if loss.r1_gamma > 0 and d_step % loss.r1_interval == 0:
                self._r1_step(reals)
        self.D.requires_grad_(False)  # frozen D in the G step: no D gradients computed or all-reduced
        loss_g = self._g_step()
        if loss.pl_weight > 0 and self.iteration % loss.pl_interval == 0:
            self._path_length_step()
        self.D.requires_grad_(True)

        self.images += t.n_disc_steps * self.batch
        e = self.cfg.ema
        beta = 0.0 if self.kimg < e.start_kimg else ema_beta(self.batch, e.halflife_kimg, self.kimg, e.rampup)
        self.ema.update(self.G, beta)
        self.iteration += 1
        # Metrics stay on the device until a log point.
        losses = [
            loss_d.detach() * t.accum,
            loss_g.detach() * t.accum,
            real_logits.detach().mean(),
            fake_logits.detach().mean(),
        ]
        self._sums += torch.stack(losses)
        self._sum_steps += 1

    def _d_step(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
        """D's main optimizer step over `accum` micro-batches: one D pass over reals and fakes (and,
        for WGAN-GP, their interpolates) together. Returns the last loss and logits, and each
        micro-batch's reals (the R1 step reuses them, as stylegan2-ada's Dreg phase does)."""
        t, b = self.cfg.train, self.backend
        b.zero_grad("d")
        reals = []
        for i in range(t.accum):
            x, y = self._real()
            reals.append((x, y))
            z, y_fake, g_kwargs = self._g_inputs()
            with torch.no_grad(), frozen_state(self.G, batchnorm=True), self._autocast():
                fake = self.G(z, y_fake, **g_kwargs)  # plain G: no gradients, no communication
            with b.accumulating("d", last=i == t.accum - 1), self._first_only(self.D, i), self._autocast():
                if self.cfg.loss.name == "wgan-gp":
                    loss_d, real_logits, fake_logits = self._wgan_gp_d_loss(x, y, fake, y_fake)
                else:
                    logits = self._d_scores(torch.cat([x, fake]), torch.cat([y, y_fake]), parts=2)
                    real_logits, fake_logits = logits.split(self.micro_batch)
                    loss_d = self.d_loss(real_logits, fake_logits)
                loss_d = loss_d / t.accum
                b.backward(loss_d, "d")
        self._guarded_step("d", loss_d)
        return loss_d, real_logits, fake_logits, reals

    def _r1_step(self, reals: list) -> None:
        """Lazy R1 (StyleGAN2 appendix B): its own D optimizer step every r1_interval D steps, on the
        main step's reals, the penalty weighted by the interval (stylegan2-ada's Dreg phase)."""
        t, b = self.cfg.train, self.backend
        b.zero_grad("d")
        for i, (x, y) in enumerate(reals):
            x = x.detach().requires_grad_(True)
            with b.accumulating("d", last=i == t.accum - 1), frozen_state(self.D), self._autocast():
                real_logits = self._d_scores(x, y, double_backward=True)
                penalty = (
                    r1_penalty(real_logits, x, self.cfg.loss.r1_gamma) * self.cfg.loss.r1_interval / t.accum
                )
                # R1 does not reach D's last bias; the zero term keeps every parameter in the graph, which
                # DDP's reducer requires (stylegan2-ada's Dreg phase does the same).
                b.backward(penalty + real_logits.sum() * 0, "d")
        self._guarded_step("d", penalty, phase="R1")

    def _g_step(self) -> torch.Tensor:
        """G's main optimizer step over `accum` micro-batches, with BigGAN's orthogonal regularization."""
        t, b = self.cfg.train, self.backend
        b.zero_grad("g")
        for i in range(t.accum):
            z, y_fake, g_kwargs = self._g_inputs(training_g=True)
            last = i == t.accum - 1
            with (
                b.accumulating("g", last=last),
                self._first_only(self.G, i),
                frozen_state(self.D),
                self._autocast(),
            ):
                fake = self.g_train(z, y_fake, **g_kwargs)
                loss_g = self.g_loss(self._d_scores(fake, y_fake, train=False)) / t.accum
                if last and self.ortho_params and not b.supports_grad_hooks:
                    b.backward(loss_g + self._ortho_penalty(), "g")  # engines that own the gradients
                else:
                    b.backward(loss_g, "g")
        if self.ortho_params and b.supports_grad_hooks:
            add_orthogonal_grad_(self.ortho_params, self.cfg.loss.ortho_strength)  # closed form, no graph
        self._guarded_step("g", loss_g, check_stop=True)
        return loss_g

    def _path_length_step(self) -> None:
        """Lazy path length regularization: its own G optimizer step every pl_interval G steps, on
        batch / pl_batch_shrink new samples, weighted by the interval (stylegan2-ada's Greg phase)."""
        t, b, loss = self.cfg.train, self.backend, self.cfg.loss
        b.zero_grad("g")
        n = max(1, self.micro_batch // loss.pl_batch_shrink)
        for i in range(t.accum):
            z, y_fake, g_kwargs = self._g_inputs(training_g=True, batch=n)
            with b.accumulating("g", last=i == t.accum - 1), frozen_state(self.G), self._autocast():
                fake, ws = self.g_train_eager(z, y_fake, **g_kwargs, return_ws=True)
                penalty = self._path_length_penalty(fake, ws) * loss.pl_interval / t.accum
                # Path length does not reach the toRGB biases; the zero term keeps them in the graph for
                # DDP's reducer (as stylegan2-ada's Greg phase does).
                b.backward(penalty + fake[:, 0, 0, 0].sum() * 0, "g")
        self._guarded_step("g", penalty, phase="path length")

    def _g_inputs(self, training_g: bool = False, batch: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Latents, labels and G's keyword arguments for one micro-batch. A style-based G gets its
        per-pixel noise drawn here from the slot's generator (so a resumed run draws the same, and a
        compiled G holds no generator), and with probability loss.style_mixing takes a second latent's
        w from a random layer on."""
        z, y = self._latents(batch or self.micro_batch)
        if not self.style_based:
            return z, y, {}
        kwargs = {"update_w_avg": training_g}
        p = self.cfg.loss.style_mixing
        if p > 0:
            draw = random.Random(seed_for(self.cfg.train.seed, self.latent_draws, 1))  # host-side: no sync
            if draw.random() < p:
                kwargs["mix_z"] = torch.randn(z.shape, device=z.device, generator=self.noise)
                kwargs["mix_cutoff"] = draw.randrange(1, self.G.num_ws)
        kwargs["noise"] = self.G.draw_noise(z.shape[0], self.noise, z.device)
        return z, y, kwargs

    def _d_scores(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        parts: int = 1,
        train: bool = True,
        double_backward: bool = False,
    ) -> torch.Tensor:
        """D's logits, after differentiable augmentation when data.diffaugment is set. `parts`: the
        number of sets (reals, fakes) in the batch, which D's minibatch statistics keep apart.
        `train`: the D step's (wrapped) D, eager when the loss will differentiate a gradient."""
        if self.augment:
            images = diff_augment(images, self.augment, self.noise)
        if hasattr(self.D, "parts"):
            self.D.parts = parts
        try:
            d = (self.d_train_eager if double_backward else self.d_train) if train else self.D
            return d(images, labels).float()
        finally:
            if hasattr(self.D, "parts"):
                self.D.parts = 1

    def _path_length_penalty(self, fake: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        """(||J_w^T y|| - a)^2 x pl_weight over the samples given, a being the running mean of the
        lengths (decay pl_decay), averaged over ranks so every rank keeps the same a."""
        loss = self.cfg.loss
        noise = torch.randn(fake.shape, device=fake.device, generator=self.noise)
        noise = noise.div(np.sqrt(fake.shape[2] * fake.shape[3])).to(fake.dtype)
        lengths = path_lengths(fake, ws, noise)
        batch_mean = lengths.detach().mean()
        if self.world_size > 1:
            torch.distributed.all_reduce(batch_mean)
            batch_mean = batch_mean / self.world_size
        self.pl_mean.copy_(self.pl_mean.lerp(batch_mean, loss.pl_decay))
        return (lengths - self.pl_mean).square().mean() * loss.pl_weight

    def _wgan_gp_d_loss(self, x, y, fake, y_fake) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """WGAN loss + gradient penalty at random real/fake interpolates + drift (ProGAN's D loss).
        D's minibatch statistics are kept within each of the three parts."""
        eps = torch.rand(x.shape[0], 1, 1, 1, device=x.device, generator=self.noise)  # follows the slot seed
        interp = torch.lerp(fake.detach().to(x.dtype), x.detach(), eps).requires_grad_(True)
        logits = self._d_scores(
            torch.cat([x, fake, interp]), torch.cat([y, y_fake, y_fake]), parts=3, double_backward=True
        )
        real_logits, fake_logits, interp_logits = logits.split(self.micro_batch)
        loss = self.d_loss(real_logits, fake_logits) + wgan_gp_terms(
            interp_logits, interp, real_logits, self.cfg.loss.gp_weight, self.cfg.loss.drift
        )
        return loss, real_logits, fake_logits

    def _enter_phase(self) -> None:
        """Follow the schedule: on a new phase, the loader's resolution and batch, the learning rates
        and fresh optimizer moments for the grown networks (as the paper's code resets Adam for each new
        resolution); at every step, the fade-in alpha of G, D and G_ema."""
        state = self.schedule.at(self.kimg)
        if self.phase is None or state.index != self.phase.index:
            if self.phase is not None:  # a phase boundary crossed in training (not a resume)
                for opt in (self.opt_g, self.opt_d):
                    opt.state.clear()
            self.batch = state.batch
            self.micro_batch = state.batch // (self.world_size * self.cfg.train.accum)
            self.loader.reconfigure(state.resolution, self.micro_batch)
            self._set_learning_rates(state.lr_g, state.lr_d)
            if self.rank == 0:
                log.info(
                    "phase %d at %.2f kimg: %dx%d, fade-in over %.0f kimg, batch %d",
                    state.index, self.kimg, state.resolution, state.resolution,
                    self.schedule.phases[state.index].fade_kimg, state.batch,
                )  # fmt: skip
        self.phase = state
        for model in (self.G, self.D, self.ema.model):
            model.set_phase(state.resolution, state.alpha)

    def _set_learning_rates(self, lr_g: float, lr_d: float) -> None:
        """The optimizers' learning rates, scaled for lazy regularization as at construction."""
        for opt, lr, which in ((self.opt_g, lr_g, "g"), (self.opt_d, lr_d, "d")):
            for group in opt.param_groups:
                group["lr"] = lr * self.lazy_ratio[which]

    def _ortho_penalty(self) -> torch.Tensor:
        strength = self.cfg.loss.ortho_strength
        return torch.stack([orthogonal_penalty(p.float(), strength) for p in self.ortho_params]).sum()

    @staticmethod
    def _first_only(module: torch.nn.Module, micro_batch: int):
        """SN power iteration on the first micro-batch of a step only."""
        return frozen_state(module) if micro_batch > 0 else contextlib.nullcontext()

    def _guarded_step(
        self, which: str, loss: torch.Tensor, check_stop: bool = False, phase: str = ""
    ) -> None:
        """Optimizer step, unless the loss is non-finite on any rank (then every rank skips it).
        The G step's collective also carries the SIGTERM flag, so all ranks stop at the same step.
        `phase`: a regularization step's name ("R1", "path length"), for messages."""
        check_finite = self.cfg.train.check_finite
        wants_stop = check_stop and self.stop.requested
        if check_finite or (check_stop and self.world_size > 1):  # one small collective, one host sync
            bad, stop = self.backend.flags_any(check_finite and ~torch.isfinite(loss.detach()), wants_stop)
        else:
            bad, stop = False, wants_stop
        self._stop_agreed = self._stop_agreed or stop
        if not bad:
            self.backend.step(which)
            self._bad_in_a_row[which] = 0
            return
        self.backend.zero_grad(which)
        self.skipped_steps += 1
        self._bad_in_a_row[which] += 1
        in_a_row = self._bad_in_a_row[which]
        what = f"{which.upper()} {phase}".strip()
        log.warning("non-finite %s loss at %.3f kimg: step skipped (%d in a row)", what, self.kimg, in_a_row)
        if in_a_row >= self.cfg.train.max_nonfinite_steps:
            raise NonFiniteLoss(
                f"{in_a_row} consecutive non-finite {what} losses (train.max_nonfinite_steps); training "
                f"stopped at {self.kimg:.3f} kimg, last good checkpoint: {latest_checkpoint(self.run_dir) or 'none yet'}"
            )

    # ------------------------------------------------------------------ around the step

    def _eval_latents(self, n: int, generator: torch.Generator, truncation: float = 0.0):
        z = truncated_normal(
            (n, self.cfg.model.z_dim), z_truncation(self.G, truncation), generator, self.device
        )
        return z, random_labels(n, self.num_classes, generator, self.device)

    @torch.no_grad()
    def _generate(self, z: torch.Tensor, y: torch.Tensor, truncation: float = 0.0) -> torch.Tensor:
        kwargs = truncation_kwargs(self.ema.model, truncation, self.cfg.eval.truncation_cutoff)
        with self._autocast():
            return self.ema.model(z, y, **kwargs).float()

    def evaluate(self, truncation: float | None = None, record: bool = True) -> dict[str, float]:
        """`eval.metrics` of G_ema samples, each rank generating its share; logged with step = kimg.
        With `record`, the result joins the history (plot) and may become the best checkpoint."""
        cfg = self.cfg.eval
        truncation = cfg.truncation if truncation is None else truncation
        if self.phase is not None:  # a growing model: against the reals at the phase's resolution
            self.metrics.at_resolution(self.phase.resolution)
        self.metrics.prepare()  # references are built once, outside the timing
        started = time.time()
        generator = torch.Generator(self.device).manual_seed(EVAL_SEED + self.rank)
        refresh_batchnorm_stats(
            self.ema.model,
            lambda: self._eval_latents(self.micro_batch, generator),
            self.cfg.ema.standing_stats_batches,
        )
        metrics = self.metrics.compute(
            lambda n: self._generate(*self._eval_latents(n, generator, truncation), truncation), cfg.batch
        )
        if self.phase is not None:
            metrics["eval_resolution"] = float(self.phase.resolution)
        if not record:
            return metrics
        metrics["eval_seconds"] = time.time() - started
        self.metric_history.append({"kimg": self.kimg, **metrics})
        if self.rank == 0:
            grid = self.save_grid()
            self.tracker.log_metrics(metrics, step=self.images)
            self.tracker.log_artifact(grid, "samples")
            plot = self.plot_history()
            if plot is not None:
                self.tracker.log_artifact(plot, "plots")
            log.info("kimg %.2f: %s", self.kimg, ", ".join(f"{k} = {v:.4g}" for k, v in metrics.items()))
        self.last_metrics.update(metrics)
        self._keep_if_best(metrics)
        for callback in self.on_evaluate:
            callback(self, metrics)
        return metrics

    def plot_history(self) -> Path | None:
        skip = ("kimg", "eval_seconds", "eval_resolution")
        names = list(dict.fromkeys(k for h in self.metric_history for k in h if k not in skip))
        kimgs = [h["kimg"] for h in self.metric_history]
        series = {n: [h.get(n, float("nan")) for h in self.metric_history] for n in names}
        return plot_lines(kimgs, series, "kimg", self.run_dir / "metrics.png", self.tracker_title())

    def tracker_title(self) -> str:
        return f"{self.cfg.model.name}{self.cfg.model.resolution} on {self.dataset_name}"

    def _keep_if_best(self, metrics: dict[str, float]) -> None:
        """Save checkpoints/best when the first metric improves (same decision on every rank)."""
        primary = self.metrics.primary
        if not self.cfg.eval.keep_best or primary is None or self.images == 0 or primary[0] not in metrics:
            return
        name, lower_is_better = primary
        value = metrics[name]
        same_metric = self.best.get("metric") == name  # a growing model's phase renames its metric
        if same_metric and not (
            value < self.best["value"] if lower_is_better else value > self.best["value"]
        ):
            return
        self.best = {"metric": name, "value": value, "kimg": self.kimg}
        path = self.save(name="best")
        if self.rank == 0:
            log.info("best %s so far (%.4g at %.2f kimg): %s", name, value, self.kimg, path)
            self.tracker.log_metrics({f"best_{name}": value}, step=self.images)

    def truncation_sweep(self) -> list[dict[str, float]]:
        """The metrics at each `eval.truncation_sweep` threshold: MLflow metrics (step = threshold x 100)
        and a PNG plot of each metric against the threshold."""
        rows = []
        for t in self.cfg.eval.truncation_sweep:
            metrics = self.evaluate(truncation=t, record=False)
            rows.append({"truncation": t, **metrics})
            if self.rank == 0:
                self.tracker.log_metrics(
                    {f"trunc_sweep/{k}": v for k, v in metrics.items()}, step=round(100 * t)
                )
                log.info("truncation %.2f: %s", t, ", ".join(f"{k} = {v:.4g}" for k, v in metrics.items()))
        if rows and self.rank == 0:
            names = [k for k in rows[0] if k != "truncation"]
            plot = plot_lines(
                [r["truncation"] for r in rows],
                {n: [r[n] for r in rows] for n in names},
                "truncation threshold",
                self.run_dir / "truncation_sweep.png",
                self.tracker_title(),
            )
            if plot is not None:
                self.tracker.log_artifact(plot, "plots")
        return rows

    def save_grid(self) -> Path:
        """G_ema on fixed latents (call after the standing-stats refresh); row r shows class r."""
        n = self.cfg.eval.grid_size
        z, _ = self._eval_latents(
            n * n, torch.Generator(self.device).manual_seed(EVAL_SEED + 1), self.cfg.eval.truncation
        )
        y = (torch.arange(n * n, device=self.device) // n) % self.num_classes
        return save_grid(
            self._generate(z, y, self.cfg.eval.truncation),
            self.run_dir / "samples" / f"kimg-{self.kimg:09.2f}.png",
            nrow=n,
        )

    def log_metrics(self, elapsed: float, images: int) -> dict[str, float]:
        sums = (self._sums / max(self._sum_steps, 1)).tolist()  # the host sync, once per log point
        self._sums.zero_()
        self._sum_steps = 0
        metrics = dict(zip(("loss_d", "loss_g", "d_real", "d_fake"), sums))
        metrics.update(
            kimg=self.kimg,
            img_per_s=images / max(elapsed, 1e-9),
            lr_g=self.opt_g.param_groups[0]["lr"],
            lr_d=self.opt_d.param_groups[0]["lr"],
        )
        if self.phase is not None:
            metrics.update(phase=self.phase.index, resolution=self.phase.resolution, alpha=self.phase.alpha)
        metrics["data_skipped_corrupt"] = self.loader.skipped_corrupt
        metrics["data_read_retries"] = self.loader.read_retries  # non-zero only for a URL data.path
        metrics["data_skipped_shards"] = self.loader.skipped_shards
        metrics["skipped_steps"] = self.skipped_steps
        if self.device.type == "cuda":
            metrics["gpu_mem_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.tracker.log_metrics(metrics, step=self.images)
        self.last_metrics.update(metrics)
        return metrics

    def save(self, name: str | None = None) -> Path | None:
        """Every rank takes part (buffers synchronized, loader positions gathered, engine shards
        written to the staging folder); rank 0 writes state.pt and renames the folder into place.
        `name`: a named checkpoint (e.g. "best") that `latest` does not point to and pruning keeps."""
        self.backend.broadcast_buffers(self.G)
        self.backend.broadcast_buffers(self.ema.model)
        state = self.state_dict()
        periodic = name is None
        name = name or f"step-{self.iteration:08d}"
        if self.rank == 0:
            begin_checkpoint(self.run_dir, name)
        self.backend.barrier()
        self.backend.save_engine_state(staging_dir(self.run_dir, name))
        self.backend.barrier()
        path = None
        if self.rank == 0:
            path = save_checkpoint(
                self.run_dir,
                name,
                state,
                to_dict(self.cfg),
                self.cfg.train.keep_checkpoints,
                mark_latest=periodic,
            )
            log.info("checkpoint %s (%.2f kimg)", path, self.kimg)
            if self.cfg.train.checkpoint_store:
                upload_checkpoint(
                    path, self.cfg.train.checkpoint_store, self.cfg.train.keep_checkpoints, periodic
                )
        self.backend.barrier()  # nobody moves on (or exits) before the checkpoint is complete
        return path

    def run(self) -> str:
        """Train to `train.total_kimg`. Returns "finished", or "terminated" after a SIGTERM checkpoint."""
        t, cfg = self.cfg.train, self.cfg
        total = int(t.total_kimg * 1000)
        eval_every = int(cfg.eval.every_kimg * 1000)
        ckpt_every = int(t.ckpt_every_kimg * 1000)
        crossed = lambda before, every: every > 0 and before // every != self.images // every  # noqa: E731
        status = "finished"
        bar = tqdm(
            total=t.total_kimg,
            initial=self.kimg,
            unit="kimg",
            desc="train",
            bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}{postfix}]",
            mininterval=1.0,
            disable=self.rank != 0,
        )
        with self.stop:
            if self.images == 0 and eval_every:
                self.evaluate()
            window_start, window_images = time.time(), self.images
            while self.images < total:
                if self._stop_agreed:
                    status = "terminated"
                    log.warning("SIGTERM: saving a checkpoint at %.2f kimg and stopping", self.kimg)
                    break
                before = self.images
                self.train_step()
                bar.update(min(self.images, total) / 1000.0 - bar.n)
                if self.iteration % t.log_every == 0:
                    m = self.log_metrics(time.time() - window_start, self.images - window_images)
                    bar.set_postfix_str(
                        f"{m['img_per_s']:.0f} img/s, loss_d {m['loss_d']:.3f}, loss_g {m['loss_g']:.3f}"
                    )
                    window_start, window_images = time.time(), self.images
                if crossed(before, eval_every) and self.images < total:
                    self.evaluate()
                if crossed(before, ckpt_every) and self.images < total:
                    self.save()
        bar.close()
        if status == "finished" and eval_every:
            self.evaluate()
        if status == "finished" and eval_every and self.cfg.eval.truncation_sweep:  # every_kimg=0: none
            self.truncation_sweep()
        self.save()
        self.tracker.close("FINISHED" if status == "finished" else "KILLED")
        return status

    # ------------------------------------------------------------------ checkpoint state

    def state_dict(self) -> dict:
        """Everything needed to resume exactly; the loader positions of every rank (collective call)."""
        loader_states = self.backend.all_gather_object(self.loader.state_dict())
        state = {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "G_ema": self.ema.model.state_dict(),
            **self.backend.optimizer_state(),
            "images": self.images,
            "iteration": self.iteration,
            "skipped_steps": self.skipped_steps,
            "loader": loader_states,
            "world_size": self.world_size,
            "latent_draws": self.latent_draws,
            "pl_mean": self.pl_mean.detach().cpu(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "num_classes": self.num_classes,
            "metric_history": self.metric_history,
            "best": self.best,
            "config": to_dict(self.cfg),
        }
        if self.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        if int(state["world_size"]) != self.world_size:
            raise ConfigError(
                f"the checkpoint was written by {state['world_size']} processes and this run has {self.world_size}; "
                "resume with the same world size (the data position is per rank)"
            )
        try:
            self.G.load_state_dict(state["G"])
            self.D.load_state_dict(state["D"])
            self.ema.model.load_state_dict(state["G_ema"])
        except RuntimeError as e:
            raise ConfigError(
                f"the checkpoint's model does not match this config's model section: {str(e).splitlines()[0]}"
            ) from None
        self.backend.load_optimizer_state(state)
        # The config's learning rates win over the saved ones (a sweep's exploit step may change them).
        self._set_learning_rates(self.cfg.optim.lr_g, self.cfg.optim.lr_d)
        self.pl_mean.copy_(state.get("pl_mean", torch.zeros([])))
        self.images, self.iteration = int(state["images"]), int(state["iteration"])
        self.skipped_steps = int(state["skipped_steps"])
        self.loader.load_state_dict(state["loader"][self.rank])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        self.latent_draws = int(state["latent_draws"])
        self.metric_history = list(state.get("metric_history", []))
        self.best = dict(state.get("best", {}))
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
